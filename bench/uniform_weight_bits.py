"""The graded method at one weight width for every layer: quality on gpt2-tiny, chips on GPT-2's shapes.

    python bench/uniform_weight_bits.py [--bits 8,6,4,3,2] [--max-tokens 4096]
                                        [--shapes random:gpt2-small,random:gpt2-medium]

The first measurement of issue #24 (choosing bits per layer is not built yet): every
on-chip layer's weight mantissas at the same signed width (`GradedPrecision.weight_bits`,
dense, no pruning), quantised for loihi2-sim; gpt2-tiny scored in Loihi's integers
against the ANN on the same held-out tokens; each model placed on Loihi 2 with Intel's
packing under the memory rule fitted to Intel's compiler (a synapse its weight bits + 8,
in 50-bit words), which gives the cores and chips. Random weights give the shapes' chip
counts only.
"""
from __future__ import annotations

import argparse

from nxcompile.compiler.convert import ConversionOptions, resolve_graph
from nxcompile.compiler.graph import GradedPrecision
from nxcompile.compiler.layers import network_from_graph
from nxcompile.compiler.partition import place
from nxcompile.compiler.quantize import quantize
from nxcompile.compiler.targets import TARGETS
from nxcompile.models.corpus import load_corpus, token_windows
from nxcompile.models.zoo import load_model
from nxcompile.sim import fixed_point
from nxcompile.sim.evaluate import evaluate

GRADED = ConversionOptions(method="graded", timesteps=1)
TARGET = TARGETS["loihi2-sim"]


def placed(graph, bits: int):
    quantised = quantize(graph, TARGET, GradedPrecision(weight_bits=bits))
    return quantised, place(network_from_graph(quantised), TARGET)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bits", default="8,6,4,3,2")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--shapes", default="random:gpt2-small,random:gpt2-medium")
    args = parser.parse_args()
    widths = [int(b) for b in args.bits.split(",")]
    tiny = load_model("gpt2-tiny")
    graph = resolve_graph(tiny, GRADED, tiny.config.n_positions, shipped=False)
    held_out = token_windows(tiny.tokenizer, load_corpus().held_out, tiny.config.n_positions, args.max_tokens)
    print(f"gpt2-tiny, graded, {held_out.numel()} held-out tokens in loihi2-sim's integers; uniform weight bits")
    print("| weight bits | ppl change | cos(logits) | top-1 | cores / chips |")
    print("|---:|---:|---:|---:|---:|")
    for bits in widths:
        quantised, placement = placed(graph, bits)
        ev = evaluate(tiny.model, quantised, held_out, 1, simulate=fixed_point.run)
        print(f"| {bits} | {100 * ev.perplexity_change:+.2f} % | {ev.logits_cosine:.4f} | "
              f"{100 * ev.top1_agreement:.1f} % | {placement.cores_used} / {placement.chips_used} |", flush=True)
    for spec in args.shapes.split(","):
        loaded = load_model(spec)
        graph = resolve_graph(loaded, GRADED, 256, shipped=False)
        chips = [placed(graph, bits)[1] for bits in widths]
        print(f"{spec} (shapes only), graded: " + ", ".join(
            f"{bits}-bit {p.cores_used:,} cores / {p.chips_used} chips" for bits, p in zip(widths, chips)), flush=True)


if __name__ == "__main__":
    main()
