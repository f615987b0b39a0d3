"""The three methods side by side on gpt2-tiny: quality against energy per token, cores and Lava time.

    python bench/methods.py [--max-tokens 4096] [--energy-tokens 128] [--lava-tokens 4]
                            [--plot docs/methods-quality-energy.png]

Each point is a method at a T (the graded method runs at one step): its graph as
the CLI builds it (gpt2-tiny's shipped fine-tuned graph for neurtransformer), quantised
for loihi2-sim and scored in Loihi's integers against the ANN on the same held-out
tokens; its operations per token counted on the first --energy-tokens held-out tokens
and priced under every price set (Loihi 2's also with the static energy of the chips
the placement takes over one decoded token's time, `sim.timing`); its cores and chips
on Loihi 2 (Intel's packing); and, at each method's default T, the wall seconds per
token a caller waits for Lava on a pipelined prompt. The plot is quality (perplexity
change, log) against energy per token under the fitted Loihi 2 prices, dynamic and
with static.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import nxcompile  # noqa: F401  (Lava's Python 3.11 fixes)
from nxcompile.backends.lava_sim import LavaModel
from nxcompile.compiler.convert import DEFAULT_TIMESTEPS, ConversionOptions, resolve_graph
from nxcompile.compiler.layers import network_from_graph
from nxcompile.compiler.partition import place
from nxcompile.compiler.quantize import quantize
from nxcompile.compiler.targets import TARGETS
from nxcompile.files import save_figure
from nxcompile.models.corpus import load_corpus, token_windows
from nxcompile.models.zoo import load_model
from nxcompile.sim import energy, fixed_point
from nxcompile.sim.evaluate import evaluate
from nxcompile.sim.schedule import token_period
from nxcompile.sim.timing import STATIC_W_PER_CHIP, TIME_MODELS, graph_performance

# (method, T, whether Lava is timed there)
POINTS = [("neurtransformer", 4, False), ("neurtransformer", 8, True), ("neurtransformer", 16, False),
          ("spikedecoder", 8, True), ("spikedecoder", 16, False), ("graded", 1, True)]
PRICES = ("45nm", "45nm-int8", "loihi", "loihi2")


def _graph(loaded, method: str, timesteps: int):
    """The graph the CLI builds for this method and T (gpt2-tiny's shipped graph for neurtransformer),
    quantised for loihi2-sim."""
    graph = resolve_graph(loaded, ConversionOptions(method=method, timesteps=timesteps), loaded.config.n_positions)
    return quantize(graph, TARGETS["loihi2-sim"])


def measure(loaded, method: str, timesteps: int, lava: bool, max_tokens: int, energy_tokens: int,
            lava_tokens: int) -> dict:
    graph = _graph(loaded, method, timesteps)
    context = loaded.config.n_positions
    held_out = token_windows(loaded.tokenizer, load_corpus().held_out, context, max_tokens)
    ev = evaluate(loaded.model, graph, held_out, timesteps, simulate=fixed_point.run)
    ids = held_out.flatten()[:energy_tokens][None]
    rows = energy.count(graph, fixed_point.run(graph, ids, timesteps, keep_values=True).values, timesteps)
    placement = place(network_from_graph(graph), TARGETS["loihi2-sim"])
    timing = graph_performance(graph, placement, rows, TIME_MODELS["loihi2-fitted"])
    period = token_period(graph)
    priced = {name: energy.total(rows, energy.ENERGY_MODELS[name]) for name in PRICES}
    result = {"method": method, "T": timesteps, "origin": graph.meta.get("origin", ""),
              "ppl_change": ev.perplexity_change, "cos": ev.logits_cosine, "top1": ev.top1_agreement,
              "ann_ppl": ev.ann_perplexity, "tokens": ev.tokens, "cores": placement.cores_used,
              "chips": placement.chips_used, "period": period,
              "nj": {name: s.snn_pj / 1e3 for name, s in priced.items()},
              "ann_nj": priced["45nm"].ann_pj / 1e3,
              "static_nj": timing.static_pj(timing.decode_seconds, STATIC_W_PER_CHIP["one chip"]) / 1e3,
              "lava_s": None}
    if lava:
        prompt = held_out.flatten()[:lava_tokens].tolist()
        with LavaModel(graph) as model:
            model.prefill(prompt, progress=False)
            result["lava_s"] = model.prompt.wall_seconds / len(prompt)
    return result


def table(results: list[dict]) -> str:
    lines = ["| method | T | graph | ppl change | cos(logits) | top-1 | nJ/token 45 nm (ANN) | 45 nm int8 | "
             "Loihi 1 | Loihi 2 dynamic + static | cores / chips | steps/token | Lava s/token |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lava = f"{r['lava_s']:.2f}" if r["lava_s"] is not None else ""
        lines.append(f"| {r['method']} | {r['T']} | {r['origin'].split(' (')[0]} | {100 * r['ppl_change']:+.2f} % | "
                     f"{r['cos']:.4f} | {100 * r['top1']:.1f} % | {r['nj']['45nm']:,.0f} ({r['ann_nj']:,.0f}) | "
                     f"{r['nj']['45nm-int8']:,.1f} | {r['nj']['loihi']:,.0f} | "
                     f"{r['nj']['loihi2']:,.0f} + {r['static_nj']:,.0f} | {r['cores']} / {r['chips']} | "
                     f"{r['period']} | {lava} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    markers = {"neurtransformer": "o", "spikedecoder": "s", "graded": "^"}
    for r in results:
        change = max(100 * r["ppl_change"], 0.01)
        for x, fill in ((r["nj"]["loihi2"], "full"), (r["nj"]["loihi2"] + r["static_nj"], "none")):
            ax.plot(x / 1e3, change, markers[r["method"]], fillstyle=fill, markersize=9, color=f"C{list(markers).index(r['method'])}")
        ax.annotate(f"{r['method']} T={r['T']}", (r["nj"]["loihi2"] / 1e3, change), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
    ax.set(xscale="log", yscale="log", xlabel="energy per token on Loihi 2, uJ (filled: dynamic; open: + static)",
           ylabel="perplexity change against the ANN, % (floor 0.01)",
           title="gpt2-tiny on Loihi 2: quality against energy per token")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--energy-tokens", type=int, default=128)
    parser.add_argument("--lava-tokens", type=int, default=4)
    parser.add_argument("--plot", type=Path, default=Path("docs/methods-quality-energy.png"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    loaded = load_model("gpt2-tiny")
    results = []
    for method, timesteps, lava in POINTS:
        results.append(measure(loaded, method, timesteps, lava, args.max_tokens, args.energy_tokens, args.lava_tokens))
        print(table(results[-1:]).splitlines()[-1], flush=True)
    print(f"\nANN perplexity {results[0]['ann_ppl']:.2f} on {results[0]['tokens']} held-out tokens; energy per token "
          f"over the first {args.energy_tokens}; default T {DEFAULT_TIMESTEPS} for the rate methods\n")
    print(table(results))
    plot(results, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
