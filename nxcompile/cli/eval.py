"""`nxcompile eval MODEL`: the spiking graph against the original on held-out text (a T sweep draws a plot)."""
from __future__ import annotations

import argparse
from pathlib import Path

from nxcompile.cli.flags import add_conversion_arguments, add_model_arguments, add_scoring_arguments
from nxcompile.cli.inputs import context_of, evaluation_windows, graph_from, load_model_from, log, on_ranks, progress
from nxcompile.errors import UsageError


def add_parser(commands) -> None:
    from nxcompile.compiler.targets import TARGET_NAMES

    evaluation = commands.add_parser("eval", help="spiking vs original: perplexity, cosine, agreement")
    add_model_arguments(evaluation)
    add_conversion_arguments(evaluation)
    add_scoring_arguments(evaluation, default_max_tokens=16384)
    evaluation.add_argument("--sweep-timesteps", default=None,
                            help="comma list of T, e.g. 1,2,4,8,16,32: a table and a PNG plot")
    evaluation.add_argument("--plot", type=Path, default=None, help="where to write the PNG")
    evaluation.add_argument("--target", default="loihi2-sim", choices=TARGET_NAMES,
                            help="score the graph quantised for this target, in its fixed point (the Lava run's "
                                 "bit-exact twin; default loihi2-sim)")
    evaluation.add_argument("--float", action="store_true", help="score the float graph instead (no quantisation)")
    evaluation.set_defaults(handler=cmd_eval)


def timesteps_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--sweep-timesteps takes whole numbers like 1,2,4,8, got {text!r}") from None
    if not values or min(values) <= 0:
        raise UsageError(f"--sweep-timesteps needs positive values, got {text!r}")
    return values


def _sweep(args: argparse.Namespace, spiking) -> list[int]:
    """The T to score at: the sweep's, or the graph's own; a method with a fixed T ignores a sweep."""
    from nxcompile.compiler.convert import method_of

    if not args.sweep_timesteps:
        return [spiking.meta["options"]["timesteps"]]
    if method_of(spiking).fixed_timesteps is not None:
        log.info(f"note: the {spiking.meta['options']['method']} method runs at one T; --sweep-timesteps is ignored")
        return [spiking.meta["options"]["timesteps"]]
    return timesteps_list(args.sweep_timesteps)


def cmd_eval(args: argparse.Namespace) -> int:
    return on_ranks(_evaluate, args)


def _evaluate(args: argparse.Namespace, ranks) -> int:
    """The scoring on this rank: under torchrun each rank scores its shard of the windows."""
    from nxcompile.compiler.convert import describe_graph
    from nxcompile.compiler.quantize import quantize
    from nxcompile.compiler.targets import get_target
    from nxcompile.sim import fixed_point, reference
    from nxcompile.sim.evaluate import TABLE_HEADER, evaluate, plot_sweep

    if args.sweep_timesteps:
        timesteps_list(args.sweep_timesteps)          # a bad list fails before any work
    loaded = load_model_from(args)
    spiking = graph_from(args, loaded)
    if not args.float:
        spiking = quantize(spiking, get_target(args.target))
    sweep = _sweep(args, spiking)
    print(f"{loaded.name} | {describe_graph(spiking)} | text {args.text or 'held-out plays'} | "
          f"context {context_of(args, loaded)} | "
          + ("float graph" if args.float else f"{args.target}'s fixed point (the Lava run's twin)"))
    if loaded.random_weights:
        print("RANDOM WEIGHTS: these figures say nothing about any trained model")
    print(TABLE_HEADER)
    windows, results = evaluation_windows(args, loaded), []
    for timesteps in sweep:
        results.append(evaluate(loaded.model, spiking, windows, timesteps, batch_size=args.batch_size,
                                progress=progress(f"eval T={timesteps}") if ranks.main else None,
                                simulate=reference.run if args.float else fixed_point.run, ranks=ranks))
        print(results[-1].row(), flush=True)
    print(f"({results[0].tokens} tokens scored; cos(hid) is the mean over blocks)")
    if len(sweep) == 1:
        print(results[0].details())
    if ranks.main and (args.plot or len(sweep) > 1):
        path = args.plot or Path(f"eval-{loaded.name.replace(':', '-')}-{args.method}.png")
        plot_sweep(results, path, f"{loaded.name}, {args.method}")
        print(f"plot: {path}")
    return 0
