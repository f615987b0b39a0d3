"""`nxcompile convert MODEL -o GRAPH.safetensors`: GPT-2 to a spiking graph file."""
from __future__ import annotations

import argparse
from pathlib import Path

from nxcompile.cli.flags import add_conversion_arguments, add_model_arguments
from nxcompile.cli.inputs import graph_from, load_model_from


def add_parser(commands) -> None:
    convert = commands.add_parser("convert", help="GPT-2 -> spiking graph file")
    add_model_arguments(convert)
    add_conversion_arguments(convert, shipped=False)
    convert.add_argument("--output", "-o", type=Path, required=True, help="where to write the graph (.safetensors)")
    convert.set_defaults(handler=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    from nxcompile.compiler.graph import save_graph

    spiking = graph_from(args, load_model_from(args))
    save_graph(spiking, args.output)
    print(f"wrote {args.output}: {spiking.graph.number_of_nodes()} nodes, "
          f"{len(spiking.spiking_nodes())} spiking populations")
    return 0
