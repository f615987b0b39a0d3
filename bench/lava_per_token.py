"""Lava simulation time per token, the prompt pipelined against token by token, in one run.

    python bench/lava_per_token.py [--models gpt2-tiny,random:gpt2-small] [--methods neurtransformer,graded]
                                   [-T 8] [--prompt-tokens 16] [--generate 4] [--modes pipelined,token-by-token]
                                   [--grouping block|node]

Each model is converted with each method, quantised for loihi2-sim and built as
Lava processes (Loihi2SimCfg, fixed point); the first --prompt-tokens held-out
tokens run as a prompt, pipelined (a token enters every initiation interval)
and token by token (each through the whole depth), each followed by --generate
greedy tokens. Reported per mode: the prompt's steps, seconds per token a
caller waits (wall: host embedding and LM head, Lava, reading results; building
the processes and Lava's compiler, once per model, apart) and the part inside
Lava's run(), Lava's steps/s, the share of the wall time outside Lava's steps,
and the same for generation; then the prompt throughput of pipelined over token
by token. Records are off (as in `nxcompile run` without --check); the Lava
processes are grouped per transformer block unless --grouping node.
"""
from __future__ import annotations

import argparse

import torch

import nxcompile  # noqa: F401  (Lava's Python 3.11 fixes)
from nxcompile.backends.lava_sim import LavaModel
from nxcompile.compiler.convert import ConversionOptions, convert, timesteps_for
from nxcompile.compiler.quantize import quantize
from nxcompile.compiler.targets import TARGETS
from nxcompile.models.corpus import load_corpus
from nxcompile.models.zoo import load_model

MODES = {"pipelined": True, "token-by-token": False}


def graph_of(spec: str, method: str, timesteps: int):
    loaded = load_model(spec)
    calibration = torch.tensor(loaded.tokenizer(load_corpus().train[:20000])["input_ids"][:256]).reshape(2, 128)
    options = ConversionOptions(method=method, timesteps=timesteps_for(method, timesteps))
    return loaded, quantize(convert(loaded.model, options, calibration, model_name=spec), TARGETS["loihi2-sim"])


def measure(graph, ids: list[int], generate: int, pipeline: bool, grouping: str) -> dict:
    with LavaModel(graph, pipeline=pipeline, grouping=grouping) as lava:
        lava.generate_from(lava.prefill(ids, generate, progress=False)[-1], generate + 1, progress=False)
        return {"processes": lava.process_count, "compile": lava.compile_seconds,
                "period": lava.plan.period, "interval": lava.interval, "prompt": lava.prompt,
                "generation": lava.generation}


def _row(spec, method, mode, r) -> str:
    p, g = r["prompt"], r["generation"]
    outside = lambda s: 100 * (1 - s.lava_seconds / s.wall_seconds)      # noqa: E731
    return (f"| {spec} | {method} | {mode} | {r['processes']} | {r['compile']:.1f} | {r['period']} | {r['interval']} | "
            f"{p.steps} | {p.wall_seconds / p.tokens:.3f} | {p.lava_seconds / p.tokens:.3f} | "
            f"{p.steps / p.lava_seconds:.1f} | {outside(p):.0f} % | {g.wall_seconds / g.tokens:.3f} | "
            f"{g.lava_seconds / g.tokens:.3f} | {outside(g):.0f} % |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="gpt2-tiny,random:gpt2-small")
    parser.add_argument("--methods", default="neurtransformer,graded")
    parser.add_argument("-T", "--timesteps", type=int, default=8, help="for the rate-coded methods")
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--generate", type=int, default=4)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--grouping", default="block", choices=("block", "node"), help="Lava processes per")
    args = parser.parse_args()
    print("| model | method | prompt | processes | build + compile s | steps/token (depth) | interval | prompt steps | "
          "prompt wall s/token | prompt Lava s/token | steps/s | wall outside Lava | generation wall s/token | "
          "generation Lava s/token | wall outside Lava |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for spec in args.models.split(","):
        for method in args.methods.split(","):
            loaded, graph = graph_of(spec, method, args.timesteps)
            ids = loaded.tokenizer(load_corpus().held_out[:4000])["input_ids"][:args.prompt_tokens]
            results = {mode: measure(graph, ids, args.generate, MODES[mode], args.grouping)
                       for mode in args.modes.split(",")}
            for mode, r in results.items():
                print(_row(spec, method, mode, r), flush=True)
            if len(results) == 2:
                rate = {m: r["prompt"].tokens / r["prompt"].wall_seconds for m, r in results.items()}
                print(f"|  | {method} | pipelined / token by token: prompt throughput "
                      f"{rate['pipelined'] / rate['token-by-token']:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
