"""Work past one process with torch.distributed: `torchrun` starts the ranks and sets RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT; nxcompile joins them, gives each rank its shard of the
windows and lets torch do the reducing (DistributedDataParallel for gradients, all_reduce for sums).
Started alone, a command is rank 0 of 1 and nothing here touches torch.distributed."""
from __future__ import annotations

import datetime
import os
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nxcompile.errors import NxError, UsageError

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# How long a rank waits on the others (joining, or in a collective) before giving up.
TIMEOUT_ENV = "NXCOMPILE_DISTRIBUTED_TIMEOUT_S"


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of a run."""
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Only the main rank writes files and prints results."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def shard(self, items: torch.Tensor) -> torch.Tensor:
        """This rank's rows of `items`: every world-th one, from its rank."""
        return items[self.rank::self.world]

    def part(self, items: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of `items`, whose length the world divides."""
        share = len(items) // self.world
        return items[self.rank * share:(self.rank + 1) * share]

    def sum(self, values: list[float]) -> list[float]:
        """`values` summed over every rank (float64, by torch's all_reduce)."""
        if not self.distributed:
            return values
        total = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(total)
        return total.tolist()


ONE = Ranks()


def _timeout() -> datetime.timedelta:
    try:
        return datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "300")))
    except ValueError:
        raise UsageError(f"{TIMEOUT_ENV}={os.environ[TIMEOUT_ENV]!r} is not a number of seconds") from None


def join(device: str = "cpu") -> Ranks:
    """The ranks torchrun started this process among (gloo on CPU, NCCL on CUDA), or ONE."""
    present = [name for name in LAUNCH_VARIABLES if name in os.environ]
    if not present or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return ONE
    missing = [name for name in LAUNCH_VARIABLES if name not in os.environ]
    if missing:
        raise UsageError(f"a distributed run needs {', '.join(LAUNCH_VARIABLES)} set, and {', '.join(missing)} "
                         f"is not: start it with `torchrun --nproc-per-node N -m nxcompile ...`")
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if device.startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        try:
            dist.init_process_group(backend, timeout=_timeout())
        except (RuntimeError, ValueError) as exc:
            where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
            raise UsageError(f"rank {os.environ['RANK']} cannot join the others at {where} "
                             f"({str(exc).splitlines()[0]}); check the rendezvous (torchrun's --rdzv-endpoint "
                             f"or --master-addr/--master-port) and that every rank started") from None
    signal.signal(signal.SIGTERM, _stopped_by_the_launcher)
    return Ranks(dist.get_rank(), dist.get_world_size())


def _stopped_by_the_launcher(*_) -> None:
    raise NxError(f"rank {dist.get_rank()} stopped by torchrun: another rank failed (its own error is above)")


def lost_a_rank(exc: BaseException, ranks: Ranks) -> NxError:
    """One line for a collective that failed because another rank went away."""
    cause = str(exc).splitlines()[0] if str(exc) else "no message"
    return NxError(f"rank {ranks.rank} lost the other ranks mid-run ({type(exc).__name__}: {cause}); files written "
                   f"so far are whole (writes are atomic) and --resume continues from the last checkpoint")


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
