"""Which term of NeurTransformer's error remains after fine-tuning: each branch swapped for the ANN's own.

    python bench/neurtransformer_ceiling.py [--graph models/gpt2_tiny/neurtransformer-finetuned.safetensors]
                                            [--max-tokens 4096] [-T 8]

A fine-tuned gpt2-tiny graph is scored against the ANN as it is, then with every
block's spiking attention branch (encoder, Q/K/V populations, SSA, readout)
replaced by the ANN's exact softmax attention, then with every feed-forward branch
(encoder, GELU-hinge populations, readout) replaced by the ANN's exact MLP, then
both, and in the rate limit (T -> infinity). The exact branches are the graded
method's float graph (which is the ANN to 1e-4), spliced in by name; everything
runs in the float reference at T, so the rows differ only in the branches swapped.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from nxcompile.compiler.convert import ConversionOptions, convert
from nxcompile.compiler.graph import SpikingGraph, load_graph
from nxcompile.models.corpus import calibration_windows, load_corpus, token_windows
from nxcompile.models.zoo import SHIPPED_GRAPHS, load_model
from nxcompile.sim.evaluate import evaluate


def splice(spiking: SpikingGraph, exact: SpikingGraph, branch: str) -> SpikingGraph:
    """`spiking` with every block's `branch` ("attention" or "mlp") nodes replaced by `exact`'s: the
    branch reads the block's norm and feeds the block's add, as in both graphs."""
    graph = spiking.graph.copy()

    def inside(g, name):
        role = g.nodes[name]["role"]
        return role.branch == branch and role.part not in ("norm", "add")

    graph.remove_nodes_from([n for n in list(graph.nodes) if inside(graph, n)])
    result = SpikingGraph(graph, dict(spiking.meta))
    for name in exact.order():
        if inside(exact.graph, name):
            graph.add_node(name, **exact.graph.nodes[name])
    for source, target, data in exact.graph.edges(data=True):
        if inside(exact.graph, source) or inside(exact.graph, target):
            result.connect(source, target, data["port"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graph", type=Path, default=SHIPPED_GRAPHS[("gpt2-tiny", "neurtransformer")])
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("-T", "--timesteps", type=int, default=8)
    args = parser.parse_args()
    loaded = load_model("gpt2-tiny")
    context = loaded.config.n_positions
    tuned = load_graph(args.graph)
    exact = convert(loaded.model, ConversionOptions(method="graded", timesteps=1),
                    calibration_windows(loaded.tokenizer, context), "gpt2-tiny")
    held_out = token_windows(loaded.tokenizer, load_corpus().held_out, context, args.max_tokens)
    rows = {"fine-tuned, as it is": (tuned, args.timesteps),
            "exact attention (ANN), spiking MLP": (splice(tuned, exact, "attention"), args.timesteps),
            "spiking attention (SSA), exact MLP": (splice(tuned, exact, "mlp"), args.timesteps),
            "exact attention and MLP": (splice(splice(tuned, exact, "attention"), exact, "mlp"), args.timesteps),
            "fine-tuned, rate limit (T -> infinity)": (tuned, None)}
    print(f"{args.graph}: {held_out.numel()} held-out tokens, float reference at T = {args.timesteps}")
    print("| branches | SNN ppl | change | cos(logits) | cos(hidden) per block | top-1 |")
    print("|---|---:|---:|---:|---|---:|")
    for label, (graph, timesteps) in rows.items():
        ev = evaluate(loaded.model, graph, held_out, timesteps)
        print(f"| {label} | {ev.snn_perplexity:.2f} | {100 * ev.perplexity_change:+.1f} % | {ev.logits_cosine:.4f} | "
              f"{' / '.join(f'{c:.3f}' for c in ev.hidden_cosine)} | {100 * ev.top1_agreement:.1f} % |", flush=True)
    print(f"ANN perplexity {ev.ann_perplexity:.2f}")


if __name__ == "__main__":
    main()
