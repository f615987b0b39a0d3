"""`nxcompile energy FILE.net|MODEL`: operations and energy per token, per layer and per block."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from nxcompile.commands_net import add_netx_arguments, is_nxcompile_net, load_input
from nxcompile.commands_snn import add_conversion_arguments, build_graph, load_from_args, positive_int
from nxcompile.errors import UsageError


def add_energy_parser(commands) -> None:
    from nxcompile.sim.energy import ENERGY_MODELS

    energy = commands.add_parser("energy", help="synaptic ops, neuron updates and energy per token, SNN vs ANN")
    energy.add_argument("source", help="an nxcompile .net file, or a zoo model name (converted and quantised "
                                       "for loihi2-sim)")
    energy.add_argument("--model-path", type=Path, default=None, help="with a model name: its weights folder")
    add_conversion_arguments(energy)
    energy.add_argument("--tokens", type=positive_int, default=128,
                        help="held-out tokens to count over, as one sequence (default 128)")
    energy.add_argument("--energy-model", default="45nm", choices=tuple(ENERGY_MODELS),
                        help="per-op energies for the per-layer table (totals show every model)")
    energy.add_argument("--plot-dir", type=Path, default=None, help="write the PNG plots here")
    foreign = add_netx_arguments(energy)
    foreign.add_argument("--input-layer-on-chip", action="store_true",
                         help="with --skip-layers 1: count the skipped input layer as on chip, sending --input "
                              "(as when its neurons are driven through their bias, as in Intel's benchmarks)")
    foreign.add_argument("--steps-per-inference", type=positive_int, default=None,
                         help="steps of one inference (default --reset-interval, else 1)")
    foreign.add_argument("--measured-mj", type=float, default=None,
                         help="a measured dynamic energy per inference (mJ) to compare every price set with")
    energy.set_defaults(handler=cmd_energy)


def _graph_and_tokenizer(args):
    from nxcompile.compiler.export import load_net, load_tokenizer
    from nxcompile.compiler.quantize import quantize
    from nxcompile.compiler.targets import get_target

    if args.source.endswith(".net") or Path(args.source).is_file():
        graph, placement = load_net(Path(args.source))
        return graph, load_tokenizer(Path(args.source)), str(args.source), placement
    args.model = args.source
    loaded = load_from_args(args)
    return quantize(build_graph(args, loaded), get_target("loihi2-sim")), loaded.tokenizer, loaded.name, None


def counted_run(graph, tokenizer, tokens: int):
    """Counts per layer over the first `tokens` held-out tokens, run in Loihi's fixed point."""
    import torch

    from nxcompile.models.corpus import evaluation_text
    from nxcompile.sim import energy, fixed_point

    context = min(tokens, int(graph.meta.get("n_positions", tokens)))
    ids = tokenizer(evaluation_text(None)[: context * 16])["input_ids"][:context]
    if len(ids) < 1:
        raise UsageError("the held-out text gave no tokens")
    timesteps = int(graph.meta["options"]["timesteps"])
    run = fixed_point.run(graph, torch.tensor([ids]), timesteps, keep_values=True)
    return energy.count(graph, run.values, timesteps), len(ids)


ATTENTION_OP = "attention op (SSA, or the graded method's softmax) vs ANN attention (Q.K, A.V)"


def summaries(rows) -> dict[str, dict]:
    """SSA against ANN attention (the op alone and the whole attention block) and every on-chip layer,
    under every energy model."""
    from nxcompile.sim.energy import ENERGY_MODELS, total

    scopes = {ATTENTION_OP: lambda r: r.op in ("SSA", "Attention"),
              "attention blocks (Q/K/V, attention, output projection)": lambda r: ".attn." in r.name,
              "every on-chip layer": lambda r: True}
    return {scope: {m: total(rows, ENERGY_MODELS[m], where) for m in ENERGY_MODELS} for scope, where in scopes.items()}


def _print_rows(rows, model) -> None:
    print(f"{'layer':22} {'op':11} {'spike rate':>10} {'accumulates':>11} {'MACs':>10} {'neuron upd':>10} "
          f"{'adds':>10} {'mults':>9} {'messages':>9} {'ANN MACs':>10} {'SNN nJ':>9} {'ANN nJ':>9}")
    for r in rows:
        rate = "graded" if math.isnan(r.spike_rate) else f"{r.spike_rate:.4f}"
        print(f"{r.name:22} {r.op:11} {rate:>10} {r.accumulates:>11.0f} {r.macs:>10.0f} {r.neuron_updates:>10.0f} "
              f"{r.neuron_adds:>10.0f} {r.neuron_mults:>9.0f} {r.messages:>9.0f} {r.ann_macs:>10.0f} "
              f"{r.snn_pj(model) / 1e3:>9.2f} {r.ann_pj(model) / 1e3:>9.2f}")


def inference_steps(steps_per_inference: int | None, reset_interval: int | None) -> int:
    """Steps of one inference of a netx network: as given, else its reset interval, else one."""
    return steps_per_inference or reset_interval or 1


def netx_counts(path: Path, spikes, steps: int | None = None, skip_layers: int = 0, input_layer_on_chip: bool = False,
                reset_interval: int | None = None, reset_offset: int = 0, steps_per_inference: int | None = None):
    """Operations per inference of a lava-dl netx network, counted from its run in Lava (netx's builders)."""
    from nxcompile.backends.lava_sim import run_netx
    from nxcompile.compiler.layers import network_from_netx
    from nxcompile.sim.energy import count_netx

    network = network_from_netx(path, skip_layers)
    steps = steps or spikes.shape[-1]
    if input_layer_on_chip and not (skip_layers == 1 and network.layers[0].kind == "input"):
        raise UsageError("--input-layer-on-chip counts a skipped input layer: give --skip-layers 1 for a network "
                         "whose first layer is netx's input layer")
    messages = run_netx(path, spikes, steps, None, skip_layers, reset_interval, reset_offset, every_layer=True)
    sent_input = network.layers[0] if input_layer_on_chip else None
    return count_netx(network, messages, spikes[..., :steps], inference_steps(steps_per_inference, reset_interval),
                      sent_input)


def _cmd_energy_netx(args: argparse.Namespace) -> int:
    from nxcompile.sim.energy import ENERGY_MODELS, total

    spikes = load_input(args)
    per = inference_steps(args.steps_per_inference, args.reset_interval)
    rows = netx_counts(Path(args.source), spikes, args.steps, args.skip_layers, args.input_layer_on_chip,
                       args.reset_interval, args.reset_offset, per)
    model = ENERGY_MODELS[args.energy_model]
    print(f"{args.source}: operations per inference ({per} steps), from its Lava run on {args.input} "
          f"(netx's builders, Loihi2SimCfg fixed point); energy model {model.name}: {model.source}")
    _print_rows(rows, model)
    for m in ENERGY_MODELS.values():
        dynamic = total(rows, m).snn_pj / 1e9
        line = f"dynamic energy per inference  {dynamic:.3f} mJ  ({m.name})"
        if args.measured_mj:
            line += f"; measured {args.measured_mj:.3f} mJ: predicted / measured = {dynamic / args.measured_mj:.2f}"
        print(line)
    return 0


def static_and_dynamic(by_model: dict, chips: int, period: int) -> str:
    """Loihi's dynamic energy per token under Loihi 1's and the fitted Loihi 2 prices, and Loihi 2's
    static energy for the chips held over a token's period (its measured power and step time)."""
    from nxcompile.sim.energy import ENERGY_MODELS

    loihi2 = ENERGY_MODELS["loihi2"]
    static = loihi2.static_pj(chips, period)
    return (f"at Loihi 1's per-op energies (Davies 2018) {by_model['loihi'].snn_pj / 1e3:.1f} nJ, at Loihi 2's "
            f"(fitted to one chip measurement) {by_model['loihi2'].snn_pj / 1e3:.1f} nJ dynamic + "
            f"{static / 1e3:,.0f} nJ static ({chips} chip(s) x {loihi2.static_w_per_chip:.3f} W x {period} steps x "
            f"{1e6 * loihi2.seconds_per_step:.0f} us, PilotNet SNN's measured power and step)")


def _chips_and_period(graph, placement: dict | None) -> tuple[int, int]:
    """The chips a graph's placement takes on loihi2-sim (stored in its .net, else placed now) and its Lava
    period of steps per token."""
    from nxcompile.backends.lava_sim import token_period
    from nxcompile.compiler.layers import network_from_graph
    from nxcompile.compiler.partition import partition
    from nxcompile.compiler.targets import get_target

    chips = placement["chips_used"] if placement else \
        partition(network_from_graph(graph), get_target("loihi2-sim")).chips_used
    return chips, token_period(graph)


def cmd_energy(args: argparse.Namespace) -> int:
    from nxcompile.sim.energy import ENERGY_MODELS, total

    if Path(args.source).is_file() and not is_nxcompile_net(Path(args.source)):
        return _cmd_energy_netx(args)
    graph, tokenizer, name, placement = _graph_and_tokenizer(args)
    rows, tokens = counted_run(graph, tokenizer, args.tokens)
    model = ENERGY_MODELS[args.energy_model]
    print(f"{name}: operations per token, mean over {tokens} held-out tokens, T = "
          f"{graph.meta['options']['timesteps']}, Loihi fixed point; energy model {model.name}: {model.source}")
    _print_rows(rows, model)
    print("host layers (embedding, final norm, LM head) are the same on both sides and not counted; a graded "
          "spike crossing a synapse is a MAC, a binary one an accumulate; neuron updates are priced by their adds "
          "and multiplies (docs/energy.md)")
    blocks = sorted({r.block for r in rows if r.block is not None})
    print(f"per block ({model.name}): " + " | ".join(
        f"{b}: SNN {total(rows, model, lambda r, b=b: r.block == b).snn_pj / 1e3:.1f} nJ, "
        f"ANN {total(rows, model, lambda r, b=b: r.block == b).ann_pj / 1e3:.1f} nJ" for b in blocks))
    scoped = summaries(rows)
    for scope, by_model in scoped.items():
        print(f"{scope}:")
        for m, s in by_model.items():
            print(f"  {m:10} SNN {s.snn_pj / 1e3:10.1f} nJ | ANN {s.ann_pj / 1e3:10.1f} nJ | SNN {s.change()}")
    chips, period = _chips_and_period(graph, placement)
    print(f"on Loihi, per token: {static_and_dynamic(scoped['every on-chip layer'], chips, period)}")
    print("energy models:")
    for m in ENERGY_MODELS.values():
        print(f"  {m.name:10} {m.source}")
    if args.plot_dir is not None:
        written = write_plots(rows, model, args.plot_dir)
        print("wrote " + ", ".join(str(p) for p in written))
    return 0


def write_plots(rows, model, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nxcompile.files import write_atomically

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {folder} ({exc}); choose a writable --plot-dir") from None
    names = [r.name for r in rows]
    plots = {
        "energy_per_layer.png": (lambda ax: ax.bar(names, [r.snn_pj(model) / 1e3 for r in rows]),
                                 f"SNN energy per token (nJ, {model.name})"),
        "spike_rate_per_layer.png": (lambda ax: ax.bar(names, [0 if math.isnan(r.spike_rate) else r.spike_rate
                                                               for r in rows]), "spike rate (per neuron per step)"),
        "ann_vs_snn.png": (lambda ax: (ax.bar([i - 0.2 for i in range(len(rows))], [r.ann_pj(model) / 1e3 for r in rows],
                                              width=0.4, label="ANN"),
                                       ax.bar([i + 0.2 for i in range(len(rows))], [r.snn_pj(model) / 1e3 for r in rows],
                                              width=0.4, label="SNN"), ax.legend()),
                           f"energy per token (nJ, {model.name})"),
    }
    written = []
    for filename, (draw, ylabel) in plots.items():
        fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.25), 4))
        draw(ax)
        ax.set_xticks(range(len(rows)), names, rotation=90, fontsize=6)
        ax.set_ylabel(ylabel)
        fig.tight_layout()
        path = folder / filename
        write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120), "choose a writable --plot-dir")
        plt.close(fig)
        written.append(path)
    print(f"(plots drawn with the {model.name} energy model)", file=sys.stderr)
    return written
