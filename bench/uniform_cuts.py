"""The graded method with every layer cut alike: quality on gpt2-tiny, chips on GPT-2's shapes.

    python bench/uniform_cuts.py [--bits 8,6,4,3,2] [--sparsity 0,0.75,0.9] [--max-tokens 4096]
                                 [--shapes random:gpt2-small,random:gpt2-medium] [--packing intel]
                                 [--rounding nearest|gptq] [--calibration-tokens 512]

Every on-chip layer's weight mantissas at the same signed width and the same fraction of each
neuron's synapses pruned by magnitude (`GradedPrecision`), quantised for loihi2-sim; gpt2-tiny
scored in Loihi's integers against the ANN on the same held-out tokens; each model placed on
Loihi 2 under the memory rule fitted to Intel's compiler (a dense synapse its weight bits + 8,
in 50-bit words; a sparse one also a 12-bit index, assumed), which gives the cores and chips.
Random weights give the shapes' chip counts only (`nxcompile fit` chooses per layer instead),
always rounded to nearest; `--rounding gptq` rounds gpt2-tiny's cut layers by GPTQ on training
text (`--calibration-tokens`).
"""
from __future__ import annotations

import argparse

from nxcompile.compiler.convert import ConversionOptions, resolve_graph
from nxcompile.compiler.fit import input_grams
from nxcompile.compiler.graph import GradedDense, GradedPrecision
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


def placed(graph, bits: int, fraction: float, packing: str, rounding: str = "nearest", grams=None):
    layers = [n for n in graph.order() if isinstance(graph.op(n), GradedDense) and not graph.graph.nodes[n]["host"]]
    precision = GradedPrecision(weight_bits=bits, layer_sparsity=tuple((n, fraction) for n in layers if fraction),
                                rounding=rounding)
    quantised = quantize(graph, TARGET, precision, grams)
    return quantised, place(network_from_graph(quantised), TARGET, packing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bits", default="8,6,4,3,2")
    parser.add_argument("--sparsity", default="0,0.75,0.9")
    parser.add_argument("--packing", default="intel")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--rounding", default="nearest", choices=("nearest", "gptq"))
    parser.add_argument("--calibration-tokens", type=int, default=512)
    parser.add_argument("--shapes", default="random:gpt2-small,random:gpt2-medium")
    args = parser.parse_args()
    cuts = [(int(b), float(f)) for f in args.sparsity.split(",") for b in args.bits.split(",")]
    tiny = load_model("gpt2-tiny")
    graph = resolve_graph(tiny, GRADED, tiny.config.n_positions, shipped=False)
    held_out = token_windows(tiny.tokenizer, load_corpus().held_out, tiny.config.n_positions, args.max_tokens)
    grams = input_grams(graph, token_windows(tiny.tokenizer, load_corpus().train, tiny.config.n_positions,
                                             args.calibration_tokens)) if args.rounding == "gptq" else None
    print(f"gpt2-tiny, graded, {held_out.numel()} held-out tokens in loihi2-sim's integers; every layer alike, "
          f"{args.packing} packing, {args.rounding} rounding")
    print("| weight bits | pruned | ppl change | cos(logits) | top-1 | cores / chips |")
    print("|---:|---:|---:|---:|---:|---:|")
    for bits, fraction in cuts:
        quantised, placement = placed(graph, bits, fraction, args.packing, args.rounding, grams)
        ev = evaluate(tiny.model, quantised, held_out, 1, simulate=fixed_point.run)
        print(f"| {bits} | {100 * fraction:.0f} % | {100 * ev.perplexity_change:+.2f} % | {ev.logits_cosine:.4f} | "
              f"{100 * ev.top1_agreement:.1f} % | {placement.cores_used} / {placement.chips_used} |", flush=True)
    for spec in filter(None, args.shapes.split(",")):
        loaded = load_model(spec)
        graph = resolve_graph(loaded, GRADED, 256, shipped=False)
        print(f"{spec} (shapes only), graded, {args.packing} packing: " + ", ".join(
            f"{bits}-bit {100 * fraction:.0f} % pruned {p.cores_used:,} cores / {p.chips_used} chips"
            for (bits, fraction), p in ((cut, placed(graph, *cut, args.packing)[1]) for cut in cuts)), flush=True)

if __name__ == "__main__":
    main()
