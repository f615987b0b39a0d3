"""`nxcompile energy FILE.net|MODEL`: operations and energy per token (or per inference of a netx network)."""
from __future__ import annotations

import argparse
from pathlib import Path

from nxcompile.cli.flags import add_conversion_arguments, add_netx_arguments, positive_int
from nxcompile.cli.inputs import load_input, log, quantised_source


def add_parser(commands) -> None:
    from nxcompile.sim.energy import ENERGY_MODELS

    energy = commands.add_parser("energy", help="synaptic ops, neuron updates and energy per token, SNN vs ANN")
    energy.add_argument("source", help="an nxcompile .net file, or a zoo model name (converted and quantised "
                                       "for loihi2-sim)")
    energy.add_argument("--model-path", type=Path, default=None, help="with a model name: its weights folder")
    add_conversion_arguments(energy)
    energy.add_argument("--tokens", type=positive_int, default=128,
                        help="held-out tokens to count over, as one sequence (default 128)")
    energy.add_argument("--energy-model", default=next(iter(ENERGY_MODELS)), choices=tuple(ENERGY_MODELS),
                        help="per-op energies for the per-layer table (totals show every model)")
    energy.add_argument("--plot-dir", type=Path, default=None, help="write the PNG plots here")
    foreign = add_netx_arguments(energy)
    foreign.add_argument("--input-layer-on-chip", action="store_true",
                         help="with --skip-layers 1: count the skipped input layer as on chip, sending --input "
                              "(as when its neurons are driven through their bias, as in Intel's benchmarks)")
    foreign.add_argument("--steps-per-inference", type=positive_int, default=None,
                         help="steps of one inference (default --reset-interval, else every step run)")
    foreign.add_argument("--measured-mj", type=float, default=None,
                         help="a measured dynamic energy per inference (mJ) to compare every price set with")
    energy.set_defaults(handler=cmd_energy)


def _netx(args: argparse.Namespace) -> int:
    from nxcompile.sim.energy import ENERGY_MODELS, netx_energy

    source = Path(args.source)
    report = netx_energy(source, load_input(args, source), args.steps, args.skip_layers, args.input_layer_on_chip,
                         args.reset_interval, args.reset_offset, args.steps_per_inference, str(args.input))
    if args.reset_interval is None:
        log.info("note: no --reset-interval: the network's neurons run on from one sample to the next; for an "
                 "input of samples N steps long give --reset-interval N (and its --reset-offset)")
    print(report.format(ENERGY_MODELS[args.energy_model], args.measured_mj))
    return 0


def _token_energy(args: argparse.Namespace):
    """The counts of an nxcompile .net file, or of a zoo model converted and quantised for loihi2-sim."""
    from nxcompile.compiler.targets import get_target
    from nxcompile.sim.energy import token_energy

    graph, placement, tokenizer, loaded = quantised_source(args, get_target("loihi2-sim"))
    return token_energy(graph, tokenizer, args.tokens, placement, loaded.name if loaded else str(args.source))


def cmd_energy(args: argparse.Namespace) -> int:
    from nxcompile.compiler.export import is_nxcompile_net
    from nxcompile.sim.energy import ENERGY_MODELS, plot_layers

    if Path(args.source).is_file() and not is_nxcompile_net(Path(args.source)):
        return _netx(args)
    report = _token_energy(args)
    model = ENERGY_MODELS[args.energy_model]
    print(report.format(model))
    if args.plot_dir is not None:
        written = plot_layers(report.rows, model, args.plot_dir)
        log.info(f"(plots drawn with the {model.name} energy model)")
        print("wrote " + ", ".join(str(p) for p in written))
    return 0
