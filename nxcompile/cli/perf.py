"""`nxcompile perf MODEL|FILE.net --target T`: how fast, and at what energy per token, on Loihi 2."""
from __future__ import annotations

import argparse
from pathlib import Path

from nxcompile.cli.flags import add_conversion_arguments, add_netx_arguments, positive_int
from nxcompile.cli.inputs import load_input, log, quantised_source
from nxcompile.errors import UsageError


def add_parser(commands) -> None:
    from nxcompile.compiler.targets import TARGET_NAMES
    from nxcompile.sim.timing import TIME_MODELS

    perf = commands.add_parser("perf", help="tokens/s, time to first token and energy per token on Loihi 2, "
                                            "prefill and decode, beside the ANN measured here")
    perf.add_argument("source", help="an nxcompile .net file, a lava-dl netx .net file, or a zoo model name")
    perf.add_argument("--model-path", type=Path, default=None, help="with a model name: its weights folder")
    add_conversion_arguments(perf)
    perf.add_argument("--target", default="loihi2-sim", choices=[t for t in TARGET_NAMES if t.startswith("loihi2")],
                      help="the Loihi 2 system to place it on (default loihi2-sim: as many chips as it needs)")
    perf.add_argument("--prompt-tokens", type=positive_int, default=None,
                      help="prompt length for the time to first token (default: the model's context)")
    perf.add_argument("--tokens", type=positive_int, default=64,
                      help="held-out tokens whose activity is counted (default 64)")
    perf.add_argument("--time-model", default=next(iter(TIME_MODELS)), choices=tuple(TIME_MODELS),
                      help="per-operation times (default the set fitted to Intel's one step measurement)")
    perf.add_argument("--ann-decode-tokens", type=positive_int, default=16,
                      help="tokens the ANN decodes when it is measured beside (default 16)")
    perf.add_argument("--device", default="cpu", help="where the ANN is measured: cpu or cuda")
    foreign = add_netx_arguments(perf)
    foreign.add_argument("--input-layer-on-chip", action="store_true",
                         help="with --skip-layers 1: the skipped input layer counted and placed on chip")
    foreign.add_argument("--steps-per-inference", type=positive_int, default=None,
                         help="steps of one inference (default --reset-interval, else the input's length)")
    foreign.add_argument("--measured-fps", type=float, default=None, help="a measured throughput to compare with")
    perf.set_defaults(handler=cmd_perf)


def _netx(args: argparse.Namespace, model) -> int:
    from nxcompile.compiler.layers import network_from_netx
    from nxcompile.compiler.partition import place
    from nxcompile.compiler.targets import get_target
    from nxcompile.sim.energy import netx_energy
    from nxcompile.sim.timing import netx_performance

    source = Path(args.source)
    counted = netx_energy(source, load_input(args, source), args.steps, args.skip_layers, args.input_layer_on_chip,
                          args.reset_interval, args.reset_offset, args.steps_per_inference)
    rows, steps = counted.rows, counted.steps_per_inference
    network = network_from_netx(source, 0 if args.input_layer_on_chip else args.skip_layers)
    placement = place(network, get_target(args.target))
    step = netx_performance(network, placement, rows, steps, model)
    fps = 1 / (step.seconds * steps)
    print(f"{source}: {placement.cores_used} cores on {placement.chips_used} chip(s), time model {model.name}: "
          f"{model.source}")
    print(f"step {step.describe()}")
    line = f"inference of {steps} steps: {steps * step.seconds * 1e6:.1f} us, {fps:,.1f} inferences/s predicted"
    if args.measured_fps:
        line += f"; measured {args.measured_fps:,.2f}: predicted / measured = {fps / args.measured_fps:.2f}"
    print(line)
    return 0


def _graph(args: argparse.Namespace, model) -> int:
    from nxcompile.compiler.layers import network_from_graph
    from nxcompile.compiler.partition import place
    from nxcompile.compiler.targets import get_target
    from nxcompile.models.ann_speed import measure_ann
    from nxcompile.sim.energy import ENERGY_MODELS, counted_rows, held_out_ids, total
    from nxcompile.sim.timing import PerfReport, graph_performance

    target = get_target(args.target)
    graph, placement, tokenizer, loaded = quantised_source(args, target)
    if loaded is None:
        log.info("(the ANN is not measured for a .net file: give the model's name for it)")
    placement = placement if placement is not None and placement.target == target.name else \
        place(network_from_graph(graph), target)
    context = int(graph.meta.get("n_positions", 1024))
    prompt = args.prompt_tokens or context
    if prompt > context:
        raise UsageError(f"--prompt-tokens {prompt} exceeds the model's context of {context} tokens")
    rows, counted = counted_rows(graph, tokenizer, args.tokens)
    ann = None
    if loaded is not None:
        decode = min(args.ann_decode_tokens, context - 1)       # the prompt and what it decodes fit the context
        ann = measure_ann(loaded.model, held_out_ids(tokenizer, min(prompt, context - decode)), decode, args.device)
    report = PerfReport(f"{graph.meta.get('model')} ({graph.meta['options']['method']}, T = "
                        f"{graph.meta['options']['timesteps']}; activity of {counted} held-out tokens)",
                        graph_performance(graph, placement, rows, model), total(rows, ENERGY_MODELS["loihi2"]).snn_pj,
                        "loihi2", prompt, placement.cores_used, ann)
    print(report.format())
    if loaded is not None and loaded.random_weights:
        print("RANDOM WEIGHTS: the activity is a load figure, not a trained model's")
    return 0


def cmd_perf(args: argparse.Namespace) -> int:
    from nxcompile.compiler.export import is_nxcompile_net
    from nxcompile.models.zoo import check_device
    from nxcompile.sim.timing import TIME_MODELS

    check_device(args.device)                   # before any work: the ANN is measured on it last
    model = TIME_MODELS[args.time_model]
    if Path(args.source).is_file() and not is_nxcompile_net(Path(args.source)):
        return _netx(args, model)
    return _graph(args, model)
