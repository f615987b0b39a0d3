"""`nxcompile quantize MODEL --target T`: the fixed-point graph, with each layer's error."""
from __future__ import annotations

import argparse
from pathlib import Path

from nxcompile.cli.flags import add_model_stage_arguments, positive_int
from nxcompile.cli.inputs import evaluation_ids, graph_from, load_model_from


def add_parser(commands) -> None:
    parser = commands.add_parser("quantize", help="fixed-point graph for a target, with the error per layer")
    add_model_stage_arguments(parser, "text for measuring the error")
    parser.add_argument("--error-tokens", type=positive_int, default=128,
                        help="held-out tokens on which the error is measured")
    parser.add_argument("--output", "-o", type=Path, default=None, help="write the quantised graph")
    parser.set_defaults(handler=cmd_quantize)


def _percent(fraction: float) -> str:
    return "graded" if fraction != fraction else f"{100 * fraction:.1f}%"


def cmd_quantize(args: argparse.Namespace) -> int:
    from nxcompile.compiler.graph import save_graph
    from nxcompile.compiler.quantize import quantisation_error, quantize
    from nxcompile.compiler.targets import get_target

    target = get_target(args.target)
    loaded = load_model_from(args)
    spiking = graph_from(args, loaded)
    quantised = quantize(spiking, target)
    ids = evaluation_ids(args, loaded)[:args.error_tokens][None]
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
