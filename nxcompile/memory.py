"""Memory a run will take, checked before it starts: a conversion or a Lava build the kernel would
kill half-way (out of memory) is refused in one line instead, with the estimate and what the
machine has; `--force` runs it anyway. The estimates are the stages' own
(`compiler.convert.conversion_peak_bytes`, `backends.lava_sim.lava_peak_bytes`), sized by
measured peaks (`bench/memory_peaks.py`)."""
from __future__ import annotations

import os

from nxcompile.errors import UsageError

GIB = 1 << 30
# The memory nxcompile may use, in GiB, when a machine is shared (default: the kernel's MemAvailable).
MEMORY_ENV = "NXCOMPILE_MEMORY_GIB"


def meminfo_available() -> int | None:
    """The kernel's estimate of the memory a new process can take without swapping, in bytes."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def available_bytes() -> int | None:
    """What a run may use: NXCOMPILE_MEMORY_GIB if set, else MemAvailable (None where unknown)."""
    limit = os.environ.get(MEMORY_ENV)
    if limit is None:
        return meminfo_available()
    try:
        return int(float(limit) * GIB)
    except ValueError:
        raise UsageError(f"{MEMORY_ENV}={limit!r} is not a number of GiB") from None


def check_memory(needed: int, what: str, force: bool) -> None:
    """Refuses `what` when it needs more than is available, unless forced."""
    available = available_bytes()
    if force or available is None or needed <= available:
        return
    source = MEMORY_ENV if MEMORY_ENV in os.environ else "available (MemAvailable)"
    raise UsageError(f"{what} needs about {needed / GIB:.1f} GiB of memory and this machine has "
                     f"{available / GIB:.1f} GiB {source}; free memory, use a machine with more, or give --force to "
                     f"run it anyway")
