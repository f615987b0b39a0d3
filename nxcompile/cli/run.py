"""`nxcompile run FILE.net`: an nxcompile model on a prompt, or a foreign netx network on its input, in Lava."""
from __future__ import annotations

import argparse
from pathlib import Path

from nxcompile.cli.flags import add_force_argument, add_grouping_argument, add_netx_arguments, non_negative_int
from nxcompile.cli.inputs import load_input, prompt_ids
from nxcompile.errors import UsageError


def add_parser(commands) -> None:
    run = commands.add_parser("run", help="run a .net file in Lava (loihi2-sim) or on Loihi 2")
    run.add_argument("file", type=Path)
    run.add_argument("--target", default="loihi2-sim", choices=("loihi2-sim", "loihi2"))
    run.add_argument("--prompt", default=None, help="text to feed (an nxcompile .net file)")
    run.add_argument("--max-new-tokens", type=non_negative_int, default=8,
                     help="tokens to generate after the prompt, greedily (default 8)")
    run.add_argument("--no-pipeline", action="store_true",
                     help="feed the prompt token by token (each through the whole depth) instead of pipelined")
    run.add_argument("--check", action="store_true",
                     help="also run the reference simulator's fixed-point mode on the same tokens and "
                          "check that every layer's spikes and the logits are identical")
    add_grouping_argument(run)
    add_force_argument(run)
    foreign = add_netx_arguments(run)
    foreign.add_argument("--output", "-o", type=Path, default=None, help="write the output layer's messages (.npy)")
    run.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from nxcompile.backends.loihi import run_config
    from nxcompile.compiler.export import is_nxcompile_net

    config = run_config(args.target)
    if is_nxcompile_net(args.file):
        return _run_ours(args, config)
    return _run_foreign(args, config)


def _run_ours(args: argparse.Namespace, config) -> int:
    import torch

    from nxcompile.backends.lava_sim import LavaModel
    from nxcompile.compiler.export import load_net, load_tokenizer
    from nxcompile.sim import fixed_point

    if args.prompt is None:
        raise UsageError(f"{args.file} is an nxcompile model: give the text to run with --prompt")
    spiking, placement = load_net(args.file)
    tokenizer = load_tokenizer(args.file)
    with LavaModel(spiking, placement=placement, run_config=config, record=args.check,
                   pipeline=not args.no_pipeline, force=args.force, grouping=args.process_grouping) as model:
        ids = prompt_ids(tokenizer, args.prompt, model.kv_capacity, args.max_new_tokens)
        logits = model.prefill(ids, args.max_new_tokens)
        new = model.generate_from(logits[-1], args.max_new_tokens)
        print(f"{args.file}: {len(ids)} prompt tokens + {len(new)} generated, T = {model.timesteps}, "
              f"{model.plan.period} Lava steps per token through the whole depth, {model.process_count} Lava "
              f"processes for the chip's nodes")
        print(f"Lava ({args.target}): {model.speed()}")
        print(f"text: {tokenizer.decode(ids + new)!r}")
        if not args.check:
            return 0
        twin = fixed_point.run(spiking, torch.tensor([model.token_ids]), model.timesteps, keep_values=True)
        differing = model.compare(twin)
        print("reference fixed-point twin: " + ("identical spikes at every layer and identical logits"
                                                if not differing else f"DIFFERS at {', '.join(differing[:5])}"))
        return 1 if differing else 0


def _run_foreign(args: argparse.Namespace, config) -> int:
    import numpy as np

    from nxcompile.backends.lava_sim import run_netx
    from nxcompile.files import write_atomically

    spikes = load_input(args, args.file)
    steps = args.steps or spikes.shape[-1]
    output = run_netx(args.file, spikes, steps, config, args.skip_layers, args.reset_interval, args.reset_offset)
    print(f"{args.file}: ran {steps} steps in Lava ({args.target}), output {output.shape}, "
          f"{int(np.count_nonzero(output))} nonzero messages")
    if args.output is not None:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:        # a file object: np.save would append .npy to a name
                np.save(handle, output)

        write_atomically(args.output, write, "choose a writable path")
        print(f"wrote {args.output}")
    return 0
