"""Reference-simulator tokens/s against the ANN's, same model, same machine, same tokens.

    python bench/reference_throughput.py [--models gpt2-tiny,random:gpt2-small] [-T 8]

Goal (issue #3): the spiking model costs no more than 2*T times the ANN per token.
"""
from __future__ import annotations

import argparse
import time

import torch

from nxcompile.compiler.convert import ConversionOptions, convert
from nxcompile.models.zoo import load_model
from nxcompile.sim import reference


def best_of(repeats: int, fn) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        timings.append(time.perf_counter() - started)
    return min(timings)


def measure(spec: str, timesteps: int, batch: int, length: int, repeats: int) -> dict:
    loaded = load_model(spec)
    vocab = min(loaded.config.vocab_size, len(loaded.tokenizer))
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(0))
    graph = convert(loaded.model, ConversionOptions(timesteps=timesteps), ids[:1])
    with torch.no_grad():
        ann = best_of(repeats, lambda: loaded.model(ids))
    snn = best_of(repeats, lambda: reference.run(graph, ids, timesteps))
    tokens = batch * length
    return {"model": spec, "T": timesteps, "tokens": tokens, "ann_tok_s": tokens / ann,
            "snn_tok_s": tokens / snn, "ratio": snn / ann}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="gpt2-tiny,random:gpt2-small")
    parser.add_argument("-T", "--timesteps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{'model':<22} {'T':>3} {'tokens':>6} {'ANN tok/s':>10} {'SNN tok/s':>10} "
          f"{'SNN/ANN':>8} {'goal 2T':>8}")
    for spec in args.models.split(","):
        r = measure(spec, args.timesteps, args.batch, args.length, args.repeats)
        verdict = "ok" if r["ratio"] <= 2 * r["T"] else "MISSED"
        print(f"{r['model']:<22} {r['T']:>3} {r['tokens']:>6} {r['ann_tok_s']:>10.0f} "
              f"{r['snn_tok_s']:>10.0f} {r['ratio']:>7.1f}x {2 * r['T']:>6}x {verdict}")


if __name__ == "__main__":
    main()
