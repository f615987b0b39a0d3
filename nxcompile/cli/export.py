"""`nxcompile export MODEL -o FILE.net` (quantised, placed, written) and `nxcompile inspect FILE.net`."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from nxcompile.cli.flags import add_conversion_arguments, add_model_arguments
from nxcompile.cli.inputs import graph_from, load_model_from, log


def add_parser(commands) -> None:
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
    from nxcompile.compiler.partition import place
    from nxcompile.compiler.quantize import quantize
    from nxcompile.compiler.targets import get_target

    target = get_target(args.target)
    seconds: dict[str, float] = {}
    loaded = load_model_from(args)
    started = time.perf_counter()
    quantised = quantize(graph_from(args, loaded), target)
    seconds["convert + quantise"] = time.perf_counter() - started
    placement = place(network_from_graph(quantised), target)
    started = time.perf_counter()
    export_net(quantised, args.output, placement, loaded.tokenizer)
    seconds["write"] = time.perf_counter() - started
    stages = {**seconds, **placement.seconds}
    print(f"wrote {args.output}: {quantised.graph.number_of_nodes()} layers, quantised for {target.name}, "
          f"{placement.cores_used} cores on {placement.chips_used} chip(s) "
          f"({', '.join(f'{k} {v:.2f} s' for k, v in stages.items())})")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from nxcompile.compiler.export import describe_net, is_nxcompile_net
    from nxcompile.compiler.layers import network_from_netx

    if is_nxcompile_net(args.file):
        print("\n".join(describe_net(args.file)))
        return 0
    print("\n".join(network_from_netx(args.file).describe()))
    log.info("(placement: none; `nxcompile partition FILE.net` places it)")
    return 0
