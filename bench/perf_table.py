"""Loihi 2's predicted speed and energy per token beside the ANN measured here: the README's table and plot.

    python bench/perf_table.py [--models gpt2-tiny,random:gpt2-small] [--methods neurtransformer,graded]
                               [--tokens 32] [--plot docs/perf-tokens-energy.png]

Each model is converted with each method (gpt2-tiny's neurtransformer: its shipped
fine-tuned graph, T = 8), quantised and placed on loihi2-sim (Loihi 2's limits, as
many chips as it needs); its activity is counted on --tokens held-out tokens in
fixed point and `sim.timing` (the loihi2-fitted set) predicts prefill (a prompt of
the model's context, pipelined) and decode. The ANN is transformers'
GPT2LMHeadModel with its KV cache on this CPU, batch 1, measured on the same
held-out prompt. Energy per token on Loihi 2: dynamic at the fitted loihi2 prices
plus static over the time per token, at one chip's measured 0.232 W and at Hala
Point's 2.26 W per chip.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import nxcompile  # noqa: F401  (Lava's Python 3.11 fixes)
from nxcompile.compiler.convert import ConversionOptions, resolve_graph, timesteps_for
from nxcompile.compiler.layers import network_from_graph
from nxcompile.compiler.partition import place
from nxcompile.compiler.quantize import quantize
from nxcompile.compiler.targets import TARGETS
from nxcompile.files import save_figure
from nxcompile.models.ann_speed import measure_ann
from nxcompile.models.zoo import load_model
from nxcompile.sim.energy import ENERGY_MODELS, counted_rows, held_out_ids, total
from nxcompile.sim.timing import TIME_MODELS, PerfReport, graph_performance


def measure(spec: str, method: str, tokens: int) -> dict:
    loaded = load_model(spec)
    options = ConversionOptions(method=method, timesteps=timesteps_for(method, None))
    graph = quantize(resolve_graph(loaded, options, loaded.config.n_positions), TARGETS["loihi2-sim"])
    placement = place(network_from_graph(graph), TARGETS["loihi2-sim"])
    rows, _ = counted_rows(graph, loaded.tokenizer, tokens)
    context = loaded.config.n_positions
    report = PerfReport(spec, graph_performance(graph, placement, rows, TIME_MODELS["loihi2-fitted"]),
                        total(rows, ENERGY_MODELS["loihi2"]).snn_pj, "loihi2", context, placement.cores_used)
    ann = measure_ann(loaded.model, held_out_ids(loaded.tokenizer, context - 16), 16)
    phases = report.phases()
    return {"model": spec, "method": method, "chips": report.performance.chips, "cores": placement.cores_used,
            "phases": phases, "energy": {p: report.energy_pj(f["token_s"]) for p, f in phases.items()},
            "ann": ann, "context": context}


def table(results: list[dict]) -> str:
    lines = ["| model | method | chips | Loihi 2 prefill tokens/s | Loihi 2 decode tokens/s | TTFT, context-long prompt "
             "| mJ/token prefill (0.232 .. 2.26 W/chip) | mJ/token decode (0.232 .. 2.26 W/chip) | CPU ANN prefill "
             "tokens/s | CPU ANN decode tokens/s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        p, e, a = r["phases"], r["energy"], r["ann"]
        lines.append(f"| {r['model']} | {r['method']} | {r['chips']} | {1 / p['prefill']['token_s']:,.0f} | "
                     f"{1 / p['decode']['token_s']:,.0f} | {p['prefill']['ttft_s'] * 1e3:.1f} ms "
                     f"({r['context']} tokens) | {e['prefill']['one chip'] / 1e9:.3f} .. "
                     f"{e['prefill']['system'] / 1e9:.3f} | {e['decode']['one chip'] / 1e9:.3f} .. "
                     f"{e['decode']['system'] / 1e9:.3f} | {a.prefill_tokens_s:,.0f} | {a.decode_tokens_s:,.0f} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (speed, energy) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [f"{r['model']}\n{r['method']}" for r in results]
    x = range(len(results))
    for offset, (label, values) in zip((-0.3, -0.1, 0.1, 0.3), (
            ("Loihi 2 prefill", [1 / r["phases"]["prefill"]["token_s"] for r in results]),
            ("Loihi 2 decode", [1 / r["phases"]["decode"]["token_s"] for r in results]),
            ("CPU ANN prefill", [r["ann"].prefill_tokens_s for r in results]),
            ("CPU ANN decode", [r["ann"].decode_tokens_s for r in results]))):
        speed.bar([i + offset for i in x], values, width=0.2, label=label)
    speed.set(yscale="log", ylabel="tokens/s (batch 1)", title="speed: Loihi 2 predicted, ANN measured on 2 CPU cores")
    for offset, phase in zip((-0.2, 0.2), ("prefill", "decode")):
        low = [r["energy"][phase]["one chip"] / 1e9 for r in results]
        high = [r["energy"][phase]["system"] / 1e9 for r in results]
        energy.bar([i + offset for i in x], high, width=0.4, alpha=0.35, color=f"C{int(offset > 0)}")
        energy.bar([i + offset for i in x], low, width=0.4, label=f"Loihi 2 {phase} (solid: 0.232 W/chip; "
                                                                   f"pale: 2.26 W/chip)", color=f"C{int(offset > 0)}")
    energy.set(yscale="log", ylabel="mJ per token", title="Loihi 2 energy per token (no CPU energy counter here)")
    for axis in (speed, energy):
        axis.set_xticks(list(x), labels, fontsize=8)
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="gpt2-tiny,random:gpt2-small")
    parser.add_argument("--methods", default="neurtransformer,graded")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--plot", type=Path, default=Path("docs/perf-tokens-energy.png"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    results = []
    for spec in args.models.split(","):
        for method in args.methods.split(","):
            results.append(measure(spec, method, args.tokens))
            print(table(results[-1:]).splitlines()[-1], flush=True)
    print(table(results))
    plot(results, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
