"""Lava simulation time per token, next to the reference simulator's on the same model and tokens.

    python bench/lava_per_token.py [--models gpt2-tiny,random:gpt2-small]
                                   [--methods neurtransformer,graded] [-T 8] [--tokens 4]

Each model is converted with each method, quantised for loihi2-sim and built as
Lava processes (Loihi2SimCfg, fixed point); a prompt of `--tokens` tokens is fed
one at a time. Reported: Lava's compile time, steps per token, steps/s, the
seconds per token a caller waits (wall, host work included) and the part
Lava's own steps take, and the reference simulator's seconds per token in its
fixed-point mode (`sim.fixed_point.run`, the Lava run's twin) and in float
(`sim.reference.run`), each running the same tokens as one sequence.
"""
from __future__ import annotations

import argparse
import time

import torch

import nxcompile  # noqa: F401  (Lava's Python 3.11 fixes)
from nxcompile.backends.lava_sim import LavaModel
from nxcompile.compiler.convert import ConversionOptions, convert, timesteps_for
from nxcompile.compiler.quantize import quantize
from nxcompile.compiler.targets import TARGETS
from nxcompile.models.corpus import load_corpus
from nxcompile.models.zoo import load_model
from nxcompile.sim import fixed_point, reference


def measure(spec: str, method: str, timesteps: int, tokens: int) -> dict:
    loaded = load_model(spec)
    calibration = torch.tensor(loaded.tokenizer(load_corpus().train[:20000])["input_ids"][:256]).reshape(2, 128)
    timesteps = timesteps_for(method, timesteps)
    graph = quantize(convert(loaded.model, ConversionOptions(method=method, timesteps=timesteps), calibration,
                             model_name=spec), TARGETS["loihi2-sim"])
    ids = loaded.tokenizer(load_corpus().held_out[:2000])["input_ids"][:tokens]
    started = time.perf_counter()
    fixed_point.run(graph, torch.tensor([ids]), timesteps)
    fixed_seconds = time.perf_counter() - started
    started = time.perf_counter()
    reference.run(graph, torch.tensor([ids]), timesteps)
    float_seconds = time.perf_counter() - started
    with LavaModel(graph) as lava:
        lava.feed(ids)
        return {"model": spec, "method": method, "T": timesteps,
                "processes": len(lava.processes) + len(lava.synapses), "compile": lava.compile_seconds,
                "period": lava.plan.period, "steps_s": lava.steps_per_second,
                "wall_s": lava.token_seconds / tokens, "lava_s": lava.lava_seconds / tokens,
                "fixed_s": fixed_seconds / tokens, "float_s": float_seconds / tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="gpt2-tiny,random:gpt2-small")
    parser.add_argument("--methods", default="neurtransformer,graded")
    parser.add_argument("-T", "--timesteps", type=int, default=8, help="for the rate-coded methods")
    parser.add_argument("--tokens", type=int, default=4)
    args = parser.parse_args()
    print(f"{'model':<20} {'method':<16} {'T':>2} {'procs':>5} {'compile s':>9} {'steps/token':>11} {'steps/s':>7} "
          f"{'wall s/token':>12} {'Lava steps s/token':>18} {'ref fixed s/token':>17} {'ref float s/token':>17}")
    for spec in args.models.split(","):
        for method in args.methods.split(","):
            r = measure(spec, method, args.timesteps, args.tokens)
            print(f"{r['model']:<20} {r['method']:<16} {r['T']:>2} {r['processes']:>5} {r['compile']:>9.1f} "
                  f"{r['period']:>11} {r['steps_s']:>7.1f} {r['wall_s']:>12.2f} {r['lava_s']:>18.2f} "
                  f"{r['fixed_s']:>17.4f} {r['float_s']:>17.4f}", flush=True)


if __name__ == "__main__":
    main()
