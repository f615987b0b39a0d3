"""`nxcompile fit MODEL --target T [--cores N]`: each layer's weight width and pruning chosen to fit a chip budget."""
from __future__ import annotations

import argparse
from pathlib import Path

from nxcompile.cli.flags import (add_conversion_arguments, add_kv_bits_argument, add_model_arguments, fractions,
                                non_negative_int, positive_int)
from nxcompile.cli.inputs import graph_from, load_model_from, log, progress
from nxcompile.errors import UsageError


def add_parser(commands) -> None:
    from nxcompile.compiler.fit import SPARSITIES
    from nxcompile.compiler.partition import PACKINGS
    from nxcompile.compiler.targets import TARGET_NAMES

    parser = commands.add_parser("fit", help="choose each layer's weight width (8 to 2 bits) and pruned fraction "
                                             "by measured sensitivity so the model fits a chip budget")
    add_model_arguments(parser)
    add_conversion_arguments(parser)
    parser.set_defaults(method="graded")
    parser.add_argument("--target", default="loihi2", choices=TARGET_NAMES, help="the system to fit (default loihi2)")
    parser.add_argument("--cores", type=positive_int, default=None, help="a core budget below the target's own")
    parser.add_argument("--packing", choices=PACKINGS, default="intel", help="as `partition --packing`")
    parser.add_argument("--pruning", choices=("wanda", "magnitude", "none"), default=None,
                        help="how pruned synapses are chosen: |w| * ||x|| on the calibration text (wanda, the "
                             "graded method's default), |w| (magnitude, the rate-coded methods'), or no pruning, "
                             "widths only (none)")
    parser.add_argument("--rounding", choices=("gptq", "nearest"), default=None,
                        help="how a cut layer's weights meet their grid: GPTQ on the calibration text (the graded "
                             "method's default) or each to its nearest mantissa (the rate-coded methods')")
    parser.add_argument("--sparsities", type=fractions, default=None,
                        help="the pruned fractions a layer may take, comma-separated (default "
                             f"{','.join(f'{f:g}' for f in SPARSITIES[1:])}; dense is always one)")
    add_kv_bits_argument(parser)
    parser.add_argument("--calibration-tokens", type=positive_int, default=512,
                        help="training-text tokens each layer's sensitivity is measured on (default 512)")
    parser.add_argument("--eval-tokens", type=non_negative_int, default=1024,
                        help="held-out tokens each frontier point is scored on (0: skip)")
    parser.add_argument("--plot", type=Path, default=None, help="the frontier, cores against perplexity change (PNG)")
    parser.add_argument("--output", "-o", type=Path, default=None, help="the fitted model's .net file")
    parser.add_argument("--save-graph", type=Path, default=None,
                        help="the fitted graph (.safetensors: each layer's weights cut, the grid recorded) for "
                             "`finetune --graph` to recover on, or `eval` / `export --graph`")
    parser.set_defaults(handler=cmd_fit)


def cmd_fit(args: argparse.Namespace) -> int:
    from nxcompile.compiler.export import export_net
    from nxcompile.compiler.fit import SPARSITIES, Budget, check_kv_bits, default_choices, fit
    from nxcompile.compiler.graph import save_graph
    from nxcompile.compiler.layers import network_from_graph
    from nxcompile.compiler.partition import place
    from nxcompile.compiler.targets import get_target
    from nxcompile.models.corpus import load_corpus, token_windows

    budget = Budget(get_target(args.target), args.cores, args.packing)
    loaded = load_model_from(args)
    graph = graph_from(args, loaded)
    context = min(args.context, loaded.config.n_positions)
    ids = None if loaded.random_weights else token_windows(loaded.tokenizer, load_corpus().train, context,
                                                           args.calibration_tokens)
    if ids is None:
        log.info("random weights: no model to lose, so sensitivity is not measurable; the frontier is the "
                 "uniform configurations (every layer at one width and pruned fraction, pruned by magnitude)")
    default_pruning, default_rounding = default_choices(graph)
    pruning, rounding = args.pruning or default_pruning, args.rounding or default_rounding
    kv_bits = check_kv_bits(graph, args.kv_bits) if args.kv_bits is not None else graph.weight_grid().kv_bits
    result = fit(graph, budget, ids, pruning=None if pruning == "none" else pruning, rounding=rounding,
                 progress=progress, kv_bits=kv_bits, sparsities=args.sparsities or SPARSITIES)
    if args.eval_tokens and ids is not None:
        _score(args, loaded, graph, result, context)
    print(_table(result))
    if args.plot is not None:
        _plot(result, args.plot, f"{loaded.name}, {graph.meta['options']['method']}: the frontier fit searched")
        print(f"plot: {args.plot}")
    if result.chosen is None:
        best = min(result.points, key=lambda p: (p.chips, p.cores))
        raise UsageError(f"nothing on the frontier fits {budget.describe()}: the smallest, {best.describe()}, needs "
                         f"{best.cores:,} cores on {best.chips} chip(s); narrower weights and pruning do not reach "
                         f"it{'' if pruning != 'none' else ' (try without --pruning none)'}")
    print(f"chosen for {budget.describe()}: {result.chosen.describe()}, {result.chosen.cores:,} cores on "
          f"{result.chosen.chips} chip(s)")
    if args.output is not None:
        quantised = result.quantised(graph, result.chosen, budget.target)
        export_net(quantised, args.output, place(network_from_graph(quantised), budget.target, args.packing),
                   loaded.tokenizer)
        print(f"wrote {args.output}")
    if args.save_graph is not None:
        save_graph(result.cut_graph(graph, result.chosen), args.save_graph)
        print(f"wrote {args.save_graph}")
    return 0


def _score(args: argparse.Namespace, loaded, graph, result, context: int) -> None:
    """Each frontier point in Loihi's integers against the ANN on held-out text."""
    from nxcompile.models.corpus import load_corpus, token_windows
    from nxcompile.sim import fixed_point
    from nxcompile.sim.evaluate import evaluate

    held_out = token_windows(loaded.tokenizer, load_corpus().held_out, context, args.eval_tokens)
    timesteps = int(graph.meta["options"]["timesteps"])
    for point in progress("frontier")(result.points):
        point.measured = evaluate(loaded.model, result.quantised(graph, point), held_out, timesteps,
                                  simulate=fixed_point.run)


def _table(result) -> str:
    """The path's points, then the uniform configurations; KLs on the calibration text, the rest held out."""
    lines = ["| widths and pruning | predicted KL | measured KL | cores | chips | ppl change | cos(logits) | top-1 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for p in result.points:
        m = p.measured
        scored = (f"{100 * m.perplexity_change:+.2f} % | {m.logits_cosine:.4f} | {100 * m.top1_agreement:.1f} %"
                  if m is not None else " | | ")
        kls = (f"{p.predicted_kl:.4f} | {p.calibration_kl:.4f}" if result.measurable
               else "not measurable | not measurable")
        name = ("uniform: " if p.uniform and result.measurable else "") + p.describe() + \
            (" (chosen)" if p is result.chosen else "")
        lines.append(f"| {name} | {kls} | {p.cores:,} | {p.chips} | {scored} |")
    return "\n".join(lines)


def _plot(result, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nxcompile.files import save_figure

    scored = [p for p in result.points if p.measured is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if scored:
        for uniform, style, label in ((False, "o-", "per layer (the path)"), (True, "s", "every layer alike")):
            points = sorted((p for p in scored if p.uniform == uniform), key=lambda p: p.cores)
            ax.plot([p.cores for p in points], [100 * p.measured.perplexity_change for p in points], style,
                    label=label)
        ax.set(ylabel="perplexity change (%), symlog", yscale="symlog")
    else:
        ax.plot([p.cores for p in result.points], [p.chips for p in result.points], "o-")
        ax.set(ylabel="chips")
    if result.chosen is not None:
        ax.axvline(result.chosen.cores, color="C3", linestyle="--", label="chosen")
    if scored or result.chosen is not None:
        ax.legend()
    ax.set(xlabel="cores", title=title)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
