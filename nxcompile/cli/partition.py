"""`nxcompile targets` and `nxcompile partition MODEL|FILE.net --target T`: cores and chips."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from nxcompile.cli.flags import add_model_stage_arguments, non_negative_int
from nxcompile.cli.inputs import evaluation_ids, graph_from, load_model_from, log


def add_parser(commands) -> None:
    from nxcompile.compiler.partition import PACKINGS

    commands.add_parser("targets", help="the targets and their limits, with sources").set_defaults(
        handler=cmd_targets)
    parser = commands.add_parser("partition", help="place a model (or a lava-dl .net file) on a target")
    add_model_stage_arguments(parser, "text for measuring spike rates")
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


def cmd_targets(args: argparse.Namespace) -> int:
    from nxcompile.compiler.targets import targets_table

    print(targets_table())
    return 0


def _network(args: argparse.Namespace, seconds: dict[str, float]):
    """The layers to place: a lava-dl .net file as it is, or a converted zoo model with measured rates."""
    from nxcompile.compiler.layers import network_from_graph, network_from_netx
    from nxcompile.sim.reference import run

    started = time.perf_counter()
    if args.model.endswith(".net"):
        network = network_from_netx(Path(args.model), args.skip_layers)
        seconds["read .net"] = time.perf_counter() - started
        return network
    loaded = load_model_from(args)
    seconds["load"] = time.perf_counter() - started
    started = time.perf_counter()
    spiking = graph_from(args, loaded)
    seconds["convert"] = time.perf_counter() - started
    rates = {}
    if args.rate_tokens:
        started = time.perf_counter()
        timesteps = spiking.meta["options"]["timesteps"]
        ids = evaluation_ids(args, loaded)[:args.rate_tokens]
        log.info(f"measuring spike rates on {ids.numel()} held-out tokens at T={timesteps}")
        rates = run(spiking, ids[None], timesteps).spike_rate
        seconds["measure spike rates"] = time.perf_counter() - started
    return network_from_graph(spiking, rates)


def cmd_partition(args: argparse.Namespace) -> int:
    from nxcompile.compiler.partition import place
    from nxcompile.compiler.targets import get_target

    target = get_target(args.target)
    seconds: dict[str, float] = {}
    network = _network(args, seconds)
    placement = place(network, target, args.packing)
    print(placement.format(network, target, per_core=args.per_core, earlier_stages=seconds))
    if args.plot:
        placement.plot(target, args.plot)
        print(f"wrote {args.plot}")
    if args.output:
        placement.save(args.output)
        print(f"wrote {args.output}")
    return 0
