"""CLI handlers of the hardware stages: targets, and partitioning a model onto one."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from nxcompile.commands_snn import (add_conversion_arguments, add_model_arguments, build_graph,
                                    evaluation_token_ids, load_from_args, non_negative_int, positive_int,
                                    save_figure)
from nxcompile.errors import NxError

RESOURCES = ("neurons", "synapse words", "input axons")


def cmd_targets(args: argparse.Namespace) -> int:
    from nxcompile.compiler.targets import TARGETS
    from nxcompile.sim.energy import ENERGY_MODELS

    rows = {name: target.describe() for name, target in TARGETS.items()}
    fields = [f for f in next(iter(rows.values())) if f not in ("name", "source", "description")]
    print(f"{'':32}" + "".join(f"{name:>22}" for name in rows))
    for field in fields:
        values = [rows[name][field] for name in rows]
        print(f"{field:32}" + "".join(f"{_cell(v):>22}" for v in values))
    print()
    for name, target in TARGETS.items():
        print(f"{name}: {target.description}. Energy ({target.energy_model}): "
              f"{ENERGY_MODELS[target.energy_model].source}.")
    print("Sources of every figure: compiler/targets.py.")
    return 0


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _network(args: argparse.Namespace, seconds: dict[str, float]):
    """The layers to place: a lava-dl .net file as it is, or a converted zoo model with measured rates."""
    from nxcompile.compiler.layers import network_from_graph, network_from_netx

    if args.model.endswith(".net"):
        started = time.perf_counter()
        network = network_from_netx(Path(args.model), args.skip_layers)
        seconds["read .net"] = time.perf_counter() - started
        return network
    started = time.perf_counter()
    loaded = load_from_args(args)
    seconds["load"] = time.perf_counter() - started
    started = time.perf_counter()
    spiking = build_graph(args, loaded)
    seconds["convert"] = time.perf_counter() - started
    rates = {}
    if args.rate_tokens:
        started = time.perf_counter()
        rates = _measured_rates(spiking, evaluation_token_ids(args, loaded)[:args.rate_tokens],
                                spiking.meta["options"]["timesteps"])
        seconds["measure spike rates"] = time.perf_counter() - started
    return network_from_graph(spiking, rates)


def _measured_rates(spiking, token_ids, timesteps: int) -> dict[str, float]:
    from nxcompile.sim.reference import run

    print(f"measuring spike rates on {token_ids.numel()} held-out tokens at T={timesteps}", file=sys.stderr)
    return run(spiking, token_ids[None], timesteps).spike_rate


def place_and_validate(network, target, seconds: dict[str, float], packing: str = "intel"):
    """Partition, then check independently: a placement the validator rejects is never returned."""
    from nxcompile.compiler.partition import partition
    from nxcompile.compiler.validate import validate

    placement = partition(network, target, packing)
    started = time.perf_counter()
    problems = validate(network, placement, target)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise NxError(f"placement on {target.name} is invalid: {problems[0]}{more}")
    placement.seconds = {**seconds, **{f"partition: {k}": v for k, v in placement.seconds.items()},
                         "validate": time.perf_counter() - started}
    return placement


def _utilisation_table(placement, usage: np.ndarray) -> list[str]:
    chips = placement.chip_of_core()
    lines = [f"{'chip':>5} {'cores':>6}  " + "  ".join(f"{r + ' % (min/mean/max)':>34}" for r in RESOURCES)]
    for chip in range(placement.chips_used):
        u = usage[chips == chip] * 100
        lines.append(f"{chip:>5} {len(u):>6}  " + "  ".join(
            f"{u[:, i].min():>10.1f} {u[:, i].mean():>10.1f} {u[:, i].max():>11.1f}" for i in range(3)))
    return lines


def report(placement, network, target, per_core: bool = False) -> str:
    """The partition report: cores, bound, utilisation, traffic, time per stage."""
    usage = placement.core_usage(target)
    rates = "measured" if any(layer.rate_measured for layer in network.chip_layers()) else "estimated"
    accumulators = placement.accumulator_neurons()
    lines = [
        f"network      {network.source} ({len(network.chip_layers())} layers on chip, "
        f"{len(placement.host_layers)} on the host: {', '.join(placement.host_layers) or '-'})",
        f"target       {target.name}: {target.description}",
        f"cores used   {placement.cores_used:,} on {placement.chips_used} chip(s), {placement.packing} packing",
        f"lower bound  {placement.lower_bound_cores:,} cores (total neurons and synapse words over one "
        f"core's); used / bound = {placement.cores_used / placement.lower_bound_cores:.3f}",
        "cores per layer " + ", ".join(f"{layer}: {n}" for layer, n in placement.cores_per_layer().items()),
        f"blocks       {len(placement.blocks):,}; {len(placement.accumulators)} layer(s) split by input "
        f"({', '.join(f'{k} x{v}' for k, v in placement.accumulators.items()) or 'none'}), "
        f"adding {accumulators:,} accumulator neurons",
        "",
        "utilisation per chip (per core: --per-core)",
        *_utilisation_table(placement, usage),
        "",
        f"traffic per token ({rates} spike rates; messages = spikes or graded payloads)",
        *(f"  {key.replace('_', ' '):28} {value:>16,.0f}" for key, value in placement.traffic.items()),
        "",
        "time per stage",
        *(f"  {stage:28} {sec:8.2f} s" for stage, sec in placement.seconds.items()),
    ]
    if per_core:
        lines += ["", f"{'core':>6} {'chip':>5}  " + "  ".join(f"{r + ' %':>18}" for r in RESOURCES)]
        chips = placement.chip_of_core()
        lines += [f"{core:>6} {chips[core]:>5}  " + "  ".join(f"{100 * x:>18.1f}" for x in row)
                  for core, row in enumerate(usage)]
    return "\n".join(lines)


def plot_utilisation(placement, target, path: Path) -> None:
    """Heat-map of each resource's use on every core, one row per chip."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    usage = placement.core_usage(target)
    chips = placement.chip_of_core()
    first_core = np.searchsorted(chips, np.arange(placement.chips_used))   # cores are numbered chip by chip
    grid = np.full((3, placement.chips_used, target.cores_per_chip), np.nan)
    for core, row in enumerate(usage):
        grid[:, chips[core], core - first_core[chips[core]]] = row * 100
    figure, axes = plt.subplots(3, 1, figsize=(10, 4 + 0.9 * min(placement.chips_used, 40)), squeeze=False)
    for i, resource in enumerate(RESOURCES):
        ax = axes[i, 0]
        image = ax.imshow(grid[i], aspect="auto", vmin=0, vmax=100, cmap="viridis", interpolation="nearest")
        ax.set_title(f"{resource} used (%)", fontsize=9)
        ax.set_ylabel("chip")
        figure.colorbar(image, ax=ax)
    axes[-1, 0].set_xlabel("core on chip")
    figure.suptitle(f"{placement.source} on {target.name}: {placement.cores_used:,} cores", fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)


def cmd_partition(args: argparse.Namespace) -> int:
    from nxcompile.compiler.targets import get_target

    target = get_target(args.target)
    seconds: dict[str, float] = {}
    network = _network(args, seconds)
    placement = place_and_validate(network, target, seconds, args.packing)
    print(report(placement, network, target, per_core=args.per_core))
    if args.plot:
        plot_utilisation(placement, target, args.plot)
        print(f"wrote {args.plot}")
    if args.output:
        placement.save(args.output)
        print(f"wrote {args.output}")
    return 0


def _model_stage_parser(commands, name: str, help_text: str, text_help: str) -> argparse.ArgumentParser:
    """A command that converts a model for a target and reads held-out text."""
    from nxcompile.compiler.targets import TARGET_NAMES

    parser = commands.add_parser(name, help=help_text)
    add_model_arguments(parser)
    add_conversion_arguments(parser)
    parser.add_argument("--target", default="loihi2", choices=TARGET_NAMES)
    parser.add_argument("--text", type=Path, default=None, help=text_help)
    return parser


def add_partition_parser(commands) -> None:
    from nxcompile.compiler.partition import PACKINGS

    commands.add_parser("targets", help="the targets and their limits, with sources").set_defaults(
        handler=cmd_targets)
    parser = _model_stage_parser(commands, "partition", "place a model (or a lava-dl .net file) on a target",
                                 "text for measuring spike rates")
    parser.add_argument("--rate-tokens", type=non_negative_int, default=64,
                        help="held-out tokens whose spike rates weight the traffic (0: estimate)")
    parser.add_argument("--plot", type=Path, default=None, help="utilisation heat-map (PNG)")
    parser.add_argument("--output", "-o", type=Path, default=None, help="write the placement (JSON)")
    parser.add_argument("--per-core", action="store_true", help="list every core's utilisation")
    parser.add_argument("--skip-layers", type=non_negative_int, default=0,
                        help="a lava-dl .net file: its first N layers run on the host, as netx's skip_layers")
    parser.add_argument("--packing", choices=PACKINGS, default="intel",
                        help="intel: split and place as Intel's Loihi 2 compiler does (one layer per core, "
                             "fitted to its logs); tight: the fewest cores our own packing finds")
    parser.set_defaults(handler=cmd_partition)


def cmd_quantize(args: argparse.Namespace) -> int:
    from nxcompile.compiler.graph import save_graph
    from nxcompile.compiler.quantize import quantisation_error, quantize
    from nxcompile.compiler.targets import get_target

    target = get_target(args.target)
    loaded = load_from_args(args)
    spiking = build_graph(args, loaded)
    quantised = quantize(spiking, target)
    ids = evaluation_token_ids(args, loaded)[:args.error_tokens][None]
    timesteps = spiking.meta["options"]["timesteps"]
    print(f"quantisation error on {ids.numel()} held-out tokens at T={timesteps} ({target.name}: "
          f"{target.weight_mantissa_bits}-bit weight mantissas, per-layer exponent)")
    print(f"{'layer':24} {'mantissa bits':>13} {'weight exp':>10} {'weight err':>10} {'cos(out)':>9} "
          f"{'spikes equal':>12}")
    for row in quantisation_error(spiking, quantised, ids, timesteps):
        print(f"{row.name:24} {row.mantissa_bits_used or '-':>13} {row.weight_exp:>10} {row.weight_error:>10.4f} "
              f"{row.output_cosine:>9.4f} {_percent(row.spikes_equal):>12}")
    if args.output:
        save_graph(quantised, args.output)
        print(f"wrote {args.output}")
    return 0


def _percent(fraction: float) -> str:
    return "graded" if fraction != fraction else f"{100 * fraction:.1f}%"


def add_quantize_parser(commands) -> None:
    parser = _model_stage_parser(commands, "quantize", "fixed-point graph for a target, with the error per layer",
                                 "text for measuring the error")
    parser.add_argument("--error-tokens", type=positive_int, default=128,
                        help="held-out tokens on which the error is measured")
    parser.add_argument("--output", "-o", type=Path, default=None, help="write the quantised graph")
    parser.set_defaults(handler=cmd_quantize)
