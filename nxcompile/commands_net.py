"""`nxcompile export` (model -> quantised, placed `.net` file) and `nxcompile inspect FILE.net`."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from nxcompile.commands_hw import place_and_validate
from nxcompile.commands_snn import (add_conversion_arguments, add_model_arguments, build_graph, load_from_args,
                                   non_negative_int, positive_int)
from nxcompile.errors import UsageError


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
    run = commands.add_parser("run", help="run a .net file in Lava (loihi2-sim) or on Loihi 2")
    run.add_argument("file", type=Path)
    run.add_argument("--target", default="loihi2-sim", choices=("loihi2-sim", "loihi2"))
    run.add_argument("--prompt", default=None, help="text to feed (an nxcompile .net file)")
    run.add_argument("--max-new-tokens", type=non_negative_int, default=8,
                     help="tokens to generate after the prompt, greedily (default 8)")
    run.add_argument("--check", action="store_true",
                     help="also run the reference simulator's fixed-point mode on the same tokens and "
                          "check that every layer's spikes and the logits are identical")
    foreign = add_netx_arguments(run)
    foreign.add_argument("--output", "-o", type=Path, default=None, help="write the output layer's messages (.npy)")
    run.set_defaults(handler=cmd_run)


def add_netx_arguments(parser: argparse.ArgumentParser):
    """How a lava-dl netx network (not written by nxcompile) runs in Lava, as netx's own options name it."""
    group = parser.add_argument_group("a lava-dl netx network (not written by nxcompile), run in Lava")
    group.add_argument("--input", type=Path, default=None, help="its input spikes (.npy, [..., time])")
    group.add_argument("--steps", type=positive_int, default=None, help="steps to run")
    group.add_argument("--skip-layers", type=non_negative_int, default=0,
                       help="netx's skip_layers: the first N layers run on the host, --input enters the next")
    group.add_argument("--reset-interval", type=positive_int, default=None,
                       help="netx's reset_interval: every neuron reset each N steps (a sample's length)")
    group.add_argument("--reset-offset", type=int, default=0, help="netx's reset_offset: the phase of that reset")
    return group


def load_input(args: argparse.Namespace):
    """The --input spikes of a lava-dl netx network, read as data only."""
    import numpy as np

    if args.input is None:
        raise UsageError(f"{getattr(args, 'file', None) or args.source} is a lava-dl netx network: give its "
                         f"input spikes with --input FILE.npy")
    try:
        return np.load(args.input, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {args.input} as a .npy array ({exc})") from None


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
    export_net(quantised, args.output, placement.as_data(), loaded.tokenizer)
    seconds["write"] = time.perf_counter() - started
    print(f"wrote {args.output}: {quantised.graph.number_of_nodes()} layers, quantised for {target.name}, "
          f"{placement.cores_used} cores on {placement.chips_used} chip(s) "
          f"({', '.join(f'{k} {v:.2f} s' for k, v in seconds.items())})")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    ours = is_nxcompile_net(args.file)
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


def is_nxcompile_net(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            return "nxcompile" in handle
    except OSError as exc:
        raise UsageError(f"{path} is not an HDF5 .net file ({exc}); give a file written by lava-dl or "
                         f"`nxcompile export`") from None


def cmd_run(args: argparse.Namespace) -> int:
    from nxcompile.backends.loihi import run_config

    config = run_config(args.target)
    if is_nxcompile_net(args.file):
        return _run_ours(args, config)
    return _run_foreign(args, config)


def prompt_ids(tokenizer, prompt: str, context: int | None, max_new_tokens: int) -> list[int]:
    """The prompt's token ids; refuses a prompt that is empty as tokens or that, with the tokens
    to generate, does not fit the model's context (None: no limit)."""
    ids = tokenizer(prompt)["input_ids"]
    if not ids:
        raise UsageError("the prompt tokenizes to nothing; give some text with --prompt")
    if context is not None and len(ids) + max_new_tokens > context:
        raise UsageError(f"prompt ({len(ids)} tokens) + --max-new-tokens {max_new_tokens} exceeds the model's "
                         f"context of {context} tokens; shorten the prompt or lower --max-new-tokens")
    return ids


def _run_ours(args: argparse.Namespace, config) -> int:
    import torch

    from nxcompile.backends.lava_sim import LavaModel
    from nxcompile.compiler.export import load_net, load_tokenizer
    from nxcompile.sim import fixed_point

    if args.prompt is None:
        raise UsageError(f"{args.file} is an nxcompile model: give the text to run with --prompt")
    spiking, placement = load_net(args.file)
    tokenizer = load_tokenizer(args.file)
    with LavaModel(spiking, placement=placement, run_config=config, record=args.check) as model:
        ids = prompt_ids(tokenizer, args.prompt, model.kv_capacity, args.max_new_tokens)
        logits = model.feed(ids)
        new = model.generate_from(logits[-1], args.max_new_tokens)
        print(f"{args.file}: {len(ids)} prompt tokens + {len(new)} generated, {model.plan.period} Lava steps "
              f"per token (T = {model.timesteps}), {len(model.processes)} on-chip processes")
        print(f"Lava ({args.target}): {model.speed()}")
        print(f"text: {tokenizer.decode(ids + new)!r}")
        if args.check:
            twin = fixed_point.run(spiking, torch.tensor([model.token_ids]), model.timesteps, keep_values=True)
            differing = model.compare(twin)
            print("reference fixed-point twin: " + ("identical spikes at every layer and identical logits"
                                                    if not differing else f"DIFFERS at {', '.join(differing[:5])}"))
            if differing:
                return 1
    return 0


def _run_foreign(args: argparse.Namespace, config) -> int:
    import numpy as np

    from nxcompile.backends.lava_sim import run_netx
    from nxcompile.files import write_atomically

    if args.input is None or args.steps is None:
        raise UsageError(f"{args.file} is a lava-dl netx network: give its input spikes with --input FILE.npy "
                         f"and the steps to run with --steps N")
    spikes = load_input(args)
    output = run_netx(args.file, spikes, args.steps, config, args.skip_layers, args.reset_interval,
                      args.reset_offset)
    print(f"{args.file}: ran {args.steps} steps in Lava ({args.target}), output {output.shape}, "
          f"{int(np.count_nonzero(output))} nonzero messages")
    if args.output is not None:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:        # a file object: np.save would append .npy to a name
                np.save(handle, output)

        write_atomically(args.output, write, "choose a writable path")
        print(f"wrote {args.output}")
    return 0
