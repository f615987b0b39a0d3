"""`nxcompile export` (model -> quantised, placed `.net` file) and `nxcompile inspect FILE.net`."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from nxcompile.commands_hw import place_and_validate
from nxcompile.commands_snn import add_conversion_arguments, add_model_arguments, build_graph, load_from_args


def add_net_parsers(commands) -> None:
    from nxcompile.compiler.targets import TARGET_NAMES

    export = commands.add_parser("export", help="quantise, place and write a model as a lava-dl .net file")
    add_model_arguments(export)
    add_conversion_arguments(export)
    export.add_argument("--target", default="loihi2", choices=TARGET_NAMES)
    export.add_argument("--output", "-o", type=Path, required=True, help="the .net file to write")
    export.set_defaults(handler=cmd_export)
    inspect = commands.add_parser("inspect", help="layers, shapes, neurons and placement of a .net file")
    inspect.add_argument("file", type=Path)
    inspect.set_defaults(handler=cmd_inspect)


def cmd_export(args: argparse.Namespace) -> int:
    from nxcompile.compiler.export import export_net
    from nxcompile.compiler.layers import network_from_graph
    from nxcompile.compiler.quantize import quantize
    from nxcompile.compiler.targets import get_target

    target = get_target(args.target)
    seconds: dict[str, float] = {}
    loaded = load_from_args(args)
    started = time.perf_counter()
    quantised = quantize(build_graph(args, loaded), target)
    seconds["convert + quantise"] = time.perf_counter() - started
    placement = place_and_validate(network_from_graph(quantised), target, seconds)
    started = time.perf_counter()
    export_net(quantised, args.output, dataclasses.asdict(placement))
    seconds["write"] = time.perf_counter() - started
    print(f"wrote {args.output}: {quantised.graph.number_of_nodes()} layers, quantised for {target.name}, "
          f"{placement.cores_used} cores on {placement.chips_used} chip(s) "
          f"({', '.join(f'{k} {v:.2f} s' for k, v in seconds.items())})")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    import h5py

    from nxcompile.errors import UsageError

    try:
        with h5py.File(args.file, "r") as handle:
            ours = "nxcompile" in handle
    except OSError as exc:
        raise UsageError(f"{args.file} is not an HDF5 .net file ({exc}); give a file written by lava-dl or "
                         f"`nxcompile export`") from None
    print("\n".join(_describe_ours(args.file) if ours else _describe_foreign(args.file)))
    return 0


def _neuron_text(op) -> str:
    neuron = getattr(op, "neuron", None)
    if neuron is None:
        return "graded value"
    theta = neuron.threshold
    return (f"{neuron.kind}, theta {float(theta.min()):g}..{float(theta.max()):g}, leak {neuron.leak:g}, "
            f"reset by subtraction")


def _describe_ours(path: Path) -> list[str]:
    from nxcompile.compiler.export import layer_type, load_net

    spiking, placement = load_net(path)
    meta = spiking.meta
    lines = [f"{path}: nxcompile .net, model {meta.get('model')}, method {meta['options']['method']}, "
             f"T = {meta['options']['timesteps']}, quantised for "
             f"{meta.get('quantization', {}).get('target', 'nothing (float)')}",
             f"{'#':>3} {'layer':22} {'type':10} {'out':>6} {'where':6} {'inputs':40} neurons"]
    for i, name in enumerate(spiking.order()):
        node = spiking.graph.nodes[name]
        inputs = ", ".join(f"{port}={source}" for port, source in sorted(spiking.inputs(name).items()))
        lines.append(f"{i:>3} {name:22} {layer_type(node['op']):10} {node['op'].out_features:>6} "
                     f"{'host' if node['host'] else 'chip':6} {inputs:40} {_neuron_text(node['op'])}")
    if placement:
        lines.append(f"placement: {placement['cores_used']} cores on {placement['chips_used']} chip(s) of "
                     f"{placement['target']}, lower bound {placement['lower_bound_cores']}, "
                     f"{len(placement['blocks'])} blocks; host layers {', '.join(placement['host_layers'])}")
    else:
        lines.append("placement: none stored")
    return lines


def _describe_foreign(path: Path) -> list[str]:
    from nxcompile.compiler.layers import network_from_netx

    network = network_from_netx(path)
    lines = [f"{path}: lava-dl netx network (not written by nxcompile), T = {network.timesteps}",
             f"{'#':>3} {'layer':14} {'kind':12} {'neurons':>8} {'message bits':>12}"]
    lines += [f"{i:>3} {layer.name:14} {layer.kind:12} {layer.neurons:>8} {layer.message_bits:>12}"
              for i, layer in enumerate(network.layers)]
    print("(placement: none; `nxcompile partition FILE.net` places it)", file=sys.stderr)
    return lines
