"""CLI support shared by the commands, and the handlers of the spiking stages
(convert a model, evaluate it against the ANN)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from nxcompile.errors import UsageError
from nxcompile.files import write_atomically

DEFAULT_CONTEXT = 256
DEFAULT_TIMESTEPS = 8


def _int_at_least(text: str, least: int) -> int:
    """argparse type for counts: a clear message instead of a traceback."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="zoo name (see `nxcompile models`) or random:<name>")
    parser.add_argument("--model-path", type=Path, default=None,
                        help="folder with the model's config.json and weights (else the HF cache)")


def load_from_args(args: argparse.Namespace):
    from nxcompile.models.zoo import load_model

    loaded = load_model(args.model, args.model_path)
    print(f"model: {loaded.name} ({loaded.source})", file=sys.stderr)
    return loaded


def add_conversion_arguments(parser: argparse.ArgumentParser, shipped: bool = True) -> None:
    """The conversion flags; `shipped`: the command uses a model's shipped fine-tuned graph unless --raw."""
    from nxcompile.compiler.convert import (EMBEDDINGS, GELU_HINGES, METHODS, NEURON_MODELS, NORMS,
                                            RESIDUALS, SSA_NORMS, THRESHOLDS, ConversionOptions)

    default = ConversionOptions()          # the flags' defaults are the conversion's own
    parser.add_argument("--method", default=default.method, choices=METHODS)
    parser.add_argument("--timesteps", "-T", type=positive_int, default=None,
                        help=f"time steps per token (default {DEFAULT_TIMESTEPS}; the graded method runs at 1)")
    parser.add_argument("--neuron", default=default.neuron, choices=tuple(NEURON_MODELS))
    parser.add_argument("--gelu", default=default.gelu, choices=tuple(GELU_HINGES),
                        help=f"GELU as 3 shifted ReLUs or a plain ReLU (default {default.gelu})")
    parser.add_argument("--embedding", default=default.embedding, choices=EMBEDDINGS,
                        help="spikedecoder: text-to-spike embedding (spiking residual only)")
    parser.add_argument("--norm", default=default.norm, choices=NORMS,
                        help="spikedecoder: normalisation variant")
    parser.add_argument("--residual", default=default.residual, choices=RESIDUALS,
                        help="spikedecoder: residual stream as spikes or graded values")
    parser.add_argument("--ssa-norm", default=default.ssa_norm, choices=SSA_NORMS,
                        help=f"SSA: the method's sum over keys, or divided by the keys a query attends to "
                             f"(default {default.ssa_norm})")
    parser.add_argument("--thresholds", default=default.thresholds, choices=THRESHOLDS,
                        help="one threshold per layer; per SSA head; or per neuron where the next weights read "
                             f"the spikes (encoders, MLP hidden, SSA outputs) (default {default.thresholds})")
    parser.add_argument("--qkv-neuron", default=default.qkv_neuron, choices=("",) + tuple(NEURON_MODELS),
                        help="neuron model of the Q, K, V populations (default: --neuron)")
    parser.add_argument("--calibration-percentile", type=float, default=default.calibration_percentile,
                        help=f"each threshold is this percentile of its population's input current "
                             f"(default {default.calibration_percentile})")
    parser.add_argument("--host", default=",".join(default.host),
                        help="comma list of nodes kept on the host: embed, norm (block norms), "
                             "final_norm, lm_head")
    parser.add_argument("--context", type=positive_int, default=DEFAULT_CONTEXT,
                        help=f"tokens per scored window (default {DEFAULT_CONTEXT}, capped by the model)")
    parser.add_argument("--graph", type=Path, default=None,
                        help="a spiking graph file (from `convert` or `finetune`) to use instead of "
                             "converting the model")
    if shipped:
        parser.add_argument("--raw", action="store_true",
                            help="convert without fine-tuning, even where a fine-tuned graph is shipped for the "
                                 "model and method (gpt2-tiny, neurtransformer)")


def text_token_ids(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)


def context_of(args, loaded) -> int:
    return min(args.context, loaded.config.n_positions)


def conversion_options(args):
    from nxcompile.compiler.convert import ConversionOptions

    return ConversionOptions(method=args.method, timesteps=args.timesteps, neuron=args.neuron,
                             gelu=args.gelu, host=tuple(h for h in args.host.split(",") if h),
                             embedding=args.embedding, norm=args.norm, residual=args.residual,
                             ssa_norm=args.ssa_norm, thresholds=args.thresholds,
                             qkv_neuron=args.qkv_neuron, calibration_percentile=args.calibration_percentile)


def build_graph(args, loaded):
    """The spiking graph a command works on: the --graph file; else the fine-tuned graph shipped
    for this model and method, when the conversion flags are the ones it was made with (not
    with --raw); else a fresh conversion calibrated on the training split. The graph records
    where it came from in meta["origin"] and runs at --timesteps."""
    from nxcompile.compiler.convert import convert
    from nxcompile.models.corpus import calibration_windows

    options = conversion_options(args)
    if args.graph is not None:
        spiking = _read_graph(args.graph, loaded.name)
        origin = f"graph file {args.graph}{_tuning(spiking)}"
    elif (shipped := _shipped_graph(args, loaded, options)) is not None:
        spiking, origin = shipped
    else:
        calibration = calibration_windows(loaded.tokenizer, context_of(args, loaded))
        print(f"converting {loaded.name} ({args.method}), calibrating on "
              f"{calibration.numel()} training tokens", file=sys.stderr)
        spiking = convert(loaded.model, options, calibration, model_name=loaded.name)
        origin = "converted, not fine-tuned"
    spiking.meta["origin"] = origin
    return _at_timesteps(spiking, args.timesteps)


def _tuning(spiking) -> str:
    tuned = spiking.meta.get("finetune")
    if tuned is None:
        return " (not fine-tuned)"
    return f" (fine-tuned: {tuned['steps']:,} steps, scope {tuned['options']['scope']}, T = {tuned['options']['timesteps']})"


def _shipped_graph(args, loaded, options):
    """(graph, origin) of the shipped fine-tuned graph, or None: with --raw, where none is shipped,
    or where the conversion flags differ from those it was made with (said on stderr)."""
    import json
    from dataclasses import asdict

    from nxcompile.compiler.graph import load_graph
    from nxcompile.models.zoo import shipped_graph

    path = shipped_graph(loaded.name, options.method)
    if getattr(args, "raw", True) or path is None:
        return None
    spiking = load_graph(path)
    wanted, stored = json.loads(json.dumps(asdict(options))), spiking.meta["options"]
    differing = [f"{key} {stored.get(key)!r} -> {value!r}" for key, value in wanted.items()
                 if key != "timesteps" and stored.get(key) != value]
    if differing:
        print(f"note: the fine-tuned graph shipped for {loaded.name} was made with other conversion flags "
              f"({', '.join(differing)}); converting without fine-tuning", file=sys.stderr)
        return None
    print(f"graph: the fine-tuned {path.name} shipped with {loaded.name}{_tuning(spiking)}; --raw for the "
          f"conversion alone", file=sys.stderr)
    return spiking, f"shipped fine-tuned graph {path.name}{_tuning(spiking)}"


def resolve_timesteps(args) -> None:
    """--timesteps as given, else 8; the graded method sends one graded spike per layer and token, so it
    runs at 1 whatever was asked (a note says so)."""
    if getattr(args, "method", None) == "graded":
        if args.timesteps not in (None, 1) or getattr(args, "sweep_timesteps", None):
            print("note: the graded method runs at one step per token; --timesteps is ignored", file=sys.stderr)
            args.sweep_timesteps = None
        args.timesteps = 1
    elif args.timesteps is None:
        args.timesteps = DEFAULT_TIMESTEPS


def _at_timesteps(spiking, timesteps: int):
    """The graph set to run at `timesteps` (thresholds do not depend on T; executors read it from meta);
    a graded-method graph stays at its one step per token."""
    options = spiking.meta["options"]
    if options["method"] == "graded":
        return spiking
    if options.get("timesteps") != timesteps:
        print(f"note: the graph was made at T = {options.get('timesteps')}; running it at T = {timesteps}",
              file=sys.stderr)
        spiking.meta["options"] = {**options, "timesteps": timesteps}
    return spiking


def _read_graph(path: Path, model_name: str):
    from nxcompile.compiler.graph import load_graph

    spiking = load_graph(path)
    if spiking.meta.get("model") != model_name:
        raise UsageError(f"{path} was made from {spiking.meta.get('model')!r}, not {model_name!r}; "
                         f"name that model or convert {model_name} again")
    print(f"graph: {path}{_tuning(spiking)}, method {spiking.meta['options']['method']}", file=sys.stderr)
    return spiking


def cmd_convert(args) -> int:
    from nxcompile.compiler.graph import save_graph

    loaded = load_from_args(args)
    spiking = build_graph(args, loaded)
    save_graph(spiking, args.output)
    print(f"wrote {args.output}: {spiking.graph.number_of_nodes()} nodes, "
          f"{len(spiking.spiking_nodes())} spiking populations")
    return 0


def describe_graph(spiking) -> str:
    """Which graph a report is about: where it came from and how it was converted (neuron and GELU
    only where the method has them)."""
    options = spiking.meta["options"]
    origin = spiking.meta.get("origin", "converted")
    if options["method"] == "graded":
        return (f"{origin}; method graded (one graded spike per layer and token: 8-bit weights, 16-bit "
                f"activations, 8-bit KV cache)")
    details = (f" (embedding {options['embedding']}, norm {options['norm']}, residual {options['residual']})"
               if options["method"] == "spikedecoder" else "")
    return f"{origin}; method {options['method']}{details}, neuron {options['neuron']}, GELU {options['gelu']}"


def parse_timesteps_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--sweep-timesteps takes whole numbers like 1,2,4,8, got {text!r}") from None
    if not values or min(values) <= 0:
        raise UsageError(f"--sweep-timesteps needs positive values, got {text!r}")
    return values


def format_row(ev) -> str:
    hidden = ev.mean_hidden_cosine
    return (f"{ev.timesteps:>4} {ev.ann_perplexity:>9.2f} {ev.snn_perplexity:>9.4g} "
            f"{100 * ev.perplexity_change:>+8.3g}% {ev.logits_cosine:>8.4f} {hidden:>8.4f} "
            f"{100 * ev.top1_agreement:>6.1f}% {ev.mean_spike_rate:>6.3f} "
            f"{ev.ann_seconds:>7.1f} {ev.snn_seconds:>7.1f}")


TABLE_HEADER = (f"{'T':>4} {'ANN ppl':>9} {'SNN ppl':>9} {'d ppl':>9} {'cos(lgt)':>8} "
                f"{'cos(hid)':>8} {'top-1':>7} {'rate':>6} {'ANN s':>7} {'SNN s':>7}")


def evaluation_token_ids(args, loaded) -> torch.Tensor:
    """The --text file (default: the held-out plays) in the model's tokens."""
    from nxcompile.models.corpus import evaluation_text

    ids = text_token_ids(loaded.tokenizer, evaluation_text(args.text))
    if len(ids) < 2:
        raise UsageError("the evaluation text tokenizes to fewer than 2 tokens; give a longer --text")
    return ids


def run_evaluation(args, loaded, spiking, timesteps: int, simulate=None):
    from nxcompile.models.perplexity import windows
    from nxcompile.sim.evaluate import evaluate

    ids = evaluation_token_ids(args, loaded)
    text_windows = windows(ids, context_of(args, loaded), args.max_tokens)
    return evaluate(loaded.model, spiking, text_windows, timesteps, batch_size=args.batch_size,
                    progress=lambda it: tqdm(it, desc=f"eval T={timesteps}", unit="batch",
                                             leave=False, file=sys.stderr),
                    **({"simulate": simulate} if simulate else {}))


def write_sweep_plot(results, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r.timesteps for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(steps, [r.snn_perplexity / r.ann_perplexity for r in results], "o-")
    left.set(xlabel="time steps per token T", ylabel="perplexity SNN / ANN", yscale="log")
    right.plot(steps, [r.logits_cosine for r in results], "o-", label="logits")
    right.plot(steps, [r.mean_hidden_cosine for r in results], "s-",
               label="hidden (mean over blocks)")
    right.plot(steps, [r.top1_agreement for r in results], "^-", label="top-1 agreement")
    right.set(xlabel="time steps per token T", ylabel="similarity to ANN")
    right.legend()
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.minorticks_off()
        axis.set_xticks(steps, [str(s) for s in steps])
        axis.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    """PNG written to a temporary name and renamed: never half a plot."""
    import matplotlib.pyplot as plt

    try:
        write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110), "choose a writable --plot path",
                         suffix=".tmp.png")      # matplotlib reads the format from the suffix
    finally:
        plt.close(fig)


def cmd_eval(args) -> int:
    from nxcompile.compiler.quantize import quantize
    from nxcompile.compiler.targets import get_target
    from nxcompile.sim import fixed_point

    loaded = load_from_args(args)
    spiking = build_graph(args, loaded)
    if not args.float:
        spiking = quantize(spiking, get_target(args.target))
    simulate = None if args.float else fixed_point.run
    options = spiking.meta["options"]
    sweep = parse_timesteps_list(args.sweep_timesteps) if args.sweep_timesteps and options["method"] != "graded" \
        else [options["timesteps"]]
    results = []
    print(f"{loaded.name} | {describe_graph(spiking)} | "
          f"text {args.text or 'held-out plays'} | context {context_of(args, loaded)} | "
          + ("float graph" if args.float else f"{args.target}'s fixed point (the Lava run's twin)"))
    if loaded.random_weights:
        print("RANDOM WEIGHTS: these figures say nothing about any trained model")
    print(TABLE_HEADER)
    for timesteps in sweep:
        ev = run_evaluation(args, loaded, spiking, timesteps, simulate)
        results.append(ev)
        print(format_row(ev), flush=True)
    print(f"({results[0].tokens} tokens scored; cos(hid) is the mean over blocks)")
    if len(sweep) == 1:
        _print_details(results[0])
    if args.plot or len(sweep) > 1:
        path = args.plot or Path(f"eval-{loaded.name.replace(':', '-')}-{args.method}.png")
        write_sweep_plot(results, path, f"{loaded.name}, {args.method}")
        print(f"plot: {path}")
    return 0


def _print_details(ev) -> None:
    print("\nper block: cosine similarity of the residual stream to the ANN")
    for block, cosine in enumerate(ev.hidden_cosine):
        print(f"  block {block:>2}  {cosine:.4f}")
    print("spike rate per population (spikes per neuron per step)")
    for name, rate in ev.spike_rate.items():
        print(f"  {name:<20} {rate:.3f}")
