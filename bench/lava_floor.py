"""Where a Lava step's time goes: Lava's own floor, and our process models' share of a pipelined prompt.

    python bench/lava_floor.py [--chains 10,50,150] [--models gpt2-tiny,random:gpt2-small]
                               [--methods neurtransformer,graded] [--prompt-tokens 16] [--groupings block,node]

Floor: a chain of N processes that do nothing but receive a 768-wide message and
send it on, run 200 steps on Loihi2SimCfg: what Lava's message passing and its
per-step synchronisation cost with no work at all. Share: the model's pipelined
prompt with every process's receiving, its nodes' steps (our own arithmetic)
and its sending timed inside it, summed over processes, beside the wall time of
Lava's run, with a Lava process per transformer block and per node.
"""
from __future__ import annotations

import argparse
import glob
import os
import tempfile
import time

import numpy as np

import nxcompile  # noqa: F401  (Lava's Python 3.11 fixes)
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

WIDTH = 768


class Relay(AbstractProcess):
    def __init__(self, first: bool = False):
        super().__init__(first=first)
        self.inp = InPort(shape=(WIDTH,))
        self.out = OutPort(shape=(WIDTH,))


@implements(proc=Relay, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyRelayModel(PyLoihiProcessModel):
    inp: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)

    def run_spk(self) -> None:
        message = np.zeros(WIDTH, dtype=np.int32) if self.proc_params["first"] else self.inp.recv()
        self.out.send(message)


def floor(processes: int, steps: int = 200) -> float:
    """Steps per second of a chain of `processes` relays."""
    from nxcompile.backends.lava_sim import simulator_config

    chain = [Relay(first=True)] + [Relay() for _ in range(processes - 1)]
    for a, b in zip(chain, chain[1:]):
        a.out.connect(b.inp)
    chain[0].create_runtime(run_cfg=simulator_config())
    try:
        chain[0].run(condition=RunSteps(num_steps=5))
        started = time.perf_counter()
        chain[0].run(condition=RunSteps(num_steps=steps))
        return steps / (time.perf_counter() - started)
    finally:
        chain[0].stop()


def _timed(folder: str):
    """Wrappers of a group process's receiving, its nodes' steps (our arithmetic) and its sending that
    sum their times per worker process and leave the sums in `folder` (one file per worker)."""
    from nxcompile.backends.lava_processes import NodeStep, _GroupModel

    sums = np.zeros(4)                  # receive, ours, send, steps: each forked worker has its own copy

    def timed(function, slot: int):
        def wrapper(self, *args):
            started = time.perf_counter()
            result = function(self, *args)
            sums[slot] += time.perf_counter() - started
            return result
        return wrapper

    def receive(self):
        sums[3] += 1
        if self.time_step % 10 == 0:            # a file write per step would distort what it measures
            np.save(os.path.join(folder, f"{os.getpid()}.npy"), sums)
        return timed_receive(self)

    timed_receive = timed(_GroupModel._receive, 0)
    return {(_GroupModel, "_receive"): receive, (NodeStep, "step"): timed(NodeStep.step, 1),
            (_GroupModel, "_send"): timed(_GroupModel._send, 2)}


def share(spec: str, method: str, prompt_tokens: int, grouping: str) -> dict:
    import torch

    from nxcompile.backends.lava_sim import LavaModel
    from nxcompile.compiler.convert import ConversionOptions, convert, timesteps_for
    from nxcompile.compiler.quantize import quantize
    from nxcompile.compiler.targets import TARGETS
    from nxcompile.models.corpus import calibration_windows, load_corpus
    from nxcompile.models.zoo import load_model

    loaded = load_model(spec)
    options = ConversionOptions(method=method, timesteps=timesteps_for(method, None))
    graph = quantize(convert(loaded.model, options, calibration_windows(loaded.tokenizer, 128)[:2], spec),
                     TARGETS["loihi2-sim"])
    ids = loaded.tokenizer(load_corpus().held_out[:4000])["input_ids"][:prompt_tokens]
    with tempfile.TemporaryDirectory() as folder:
        wrappers = _timed(folder)
        originals = {(cls, name): getattr(cls, name) for cls, name in wrappers}
        try:
            for (cls, name), wrapper in wrappers.items():
                setattr(cls, name, wrapper)
            with LavaModel(graph, grouping=grouping) as lava, torch.no_grad():
                lava.prefill(ids, progress=False)
                processes = lava.process_count
        finally:
            for (cls, name), original in originals.items():
                setattr(cls, name, original)
        per_process = [np.load(path) for path in glob.glob(os.path.join(folder, "*.npy"))]
        sums = sum(row[:3] * lava.prompt.steps / row[3] for row in per_process)     # to the whole run
    return {"processes": processes, "steps": lava.prompt.steps, "lava_s": lava.prompt.lava_seconds,
            "receive_s": sums[0], "ours_s": sums[1], "send_s": sums[2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chains", default="10,50,150")
    parser.add_argument("--models", default="gpt2-tiny,random:gpt2-small")
    parser.add_argument("--methods", default="neurtransformer,graded")
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--groupings", default="block,node", help="Lava process groupings to time")
    args = parser.parse_args()
    for n in map(int, filter(None, args.chains.split(","))):
        rate = floor(n)
        print(f"floor: {n} relay processes, {rate:.1f} steps/s, {1e3 / rate / n:.3f} ms per process and step",
              flush=True)
    cores = os.cpu_count() or 1
    for spec in filter(None, args.models.split(",")):
        for method in args.methods.split(","):
            for grouping in args.groupings.split(","):
                r = share(spec, method, args.prompt_tokens, grouping)
                busy = r["lava_s"] * cores
                print(f"{spec} {method}, a process per {grouping}: {r['processes']} processes, {r['steps']} steps in "
                      f"{r['lava_s']:.1f} s ({r['steps'] / r['lava_s']:.1f} steps/s); summed over our processes: our "
                      f"arithmetic {r['ours_s']:.1f} s ({100 * r['ours_s'] / busy:.0f} % of {cores} cores' time), "
                      f"sending {r['send_s']:.1f} s, receiving (mostly waiting) {r['receive_s']:.1f} s", flush=True)


if __name__ == "__main__":
    main()
