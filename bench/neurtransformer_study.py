"""What closes NeurTransformer's gap on gpt2-tiny: one fine-tuning recipe changed at a time.

    python bench/neurtransformer_study.py [--rows base,ssa-scope,...] [--force] [--table]

Every row converts gpt2-tiny (calibrated as the CLI does), fine-tunes it with
lava-dl slayer's surrogate gradients (quantisation-aware for loihi2), quantises
it for loihi2-sim and scores it in Loihi's fixed point (`sim.fixed_point.run`,
the Lava run's bit-exact twin) against the ANN on the same held-out tokens.
A row is the base recipe with the named changes; its budget (optimiser steps,
training tokens, seconds on this machine) is printed beside its figures.

Results accumulate in bench/results/neurtransformer_study.json (a row already
there is not run again without --force); fine-tuned graphs are kept in
out/study/ for further measurement. `--table` prints the README's table from
the results alone.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from nxcompile.compiler.convert import ConversionOptions, convert
from nxcompile.compiler.graph import Dense, load_graph, save_graph
from nxcompile.compiler.quantize import quantize
from nxcompile.compiler.targets import TARGETS
from nxcompile.models.corpus import calibration_windows, load_corpus, token_windows
from nxcompile.models.finetune import FinetuneOptions, TrainableGraph, finetune
from nxcompile.models.zoo import load_model
from nxcompile.sim import fixed_point
from nxcompile.sim.evaluate import evaluate

RESULTS = Path(__file__).parent / "results" / "neurtransformer_study.json"
GRAPHS = Path("out/study")
# The base recipe: the paper's SSA (a sum over keys), every on-chip population trained, 600 steps
# of 2 x 128 tokens at T = 8.
BASE_CONVERSION = {"timesteps": 8, "ssa_norm": "sum"}
BASE_FINETUNE = {"steps": 600, "scope": "all", "learning_rate": 1e-3, "batch_size": 2, "context": 128,
                 "timesteps": 8}


@dataclass(frozen=True)
class Row:
    """One recipe: the base with `conversion` and `finetune` overrides."""
    name: str
    change: str
    conversion: dict = field(default_factory=dict)
    finetune: dict = field(default_factory=dict)

    def options(self) -> tuple[ConversionOptions, FinetuneOptions]:
        conversion = ConversionOptions(**(BASE_CONVERSION | self.conversion))
        tuning = FinetuneOptions(**(BASE_FINETUNE | {"timesteps": conversion.timesteps} | self.finetune))
        return conversion, tuning


POSITION = {"ssa_norm": "position"}
RECIPE = {"learning_rate": 3e-3, "schedule": "cosine", "warmup_steps": 30}
GRADED = {"neuron": "graded"}
RELATIVE = {"step_size": "relative", "learning_rate": 1e-2}
ROWS = [
    Row("converted", "no fine-tuning (conversion only)", finetune={"steps": 0}),
    Row("ssa-scope", "scope ssa (Q/K/V, SSA, attention output only)", finetune={"scope": "ssa"}),
    Row("base", "base: scope all, 600 steps, lr 1e-3 constant, KL + hidden + LM, context 128, T 8"),
    Row("cosine", "lr warm-up 30 steps, cosine decay", finetune={"schedule": "cosine", "warmup_steps": 30}),
    Row("lr-3e-3", "peak lr 3e-3, warm-up + cosine", finetune={"learning_rate": 3e-3, "schedule": "cosine",
                                                             "warmup_steps": 30}),
    Row("lr-3e-4", "lr 3e-4", finetune={"learning_rate": 3e-4}),
    Row("kl-only", "loss KL only (no hidden cosine, no next-token)",
        finetune={"hidden_weight": 0.0, "lm_weight": 0.0}),
    Row("no-hidden", "loss KL + next-token (no hidden cosine)", finetune={"hidden_weight": 0.0}),
    Row("hidden-x4", "hidden cosine weighted 4", finetune={"hidden_weight": 4.0}),
    Row("context-64", "train on windows of 64 tokens (scored on 128)", finetune={"context": 64}),
    Row("batch-4", "batch of 4 windows, 300 steps (same tokens)", finetune={"batch_size": 4, "steps": 300}),
    Row("T4", "T = 4 (trained and scored)", conversion={"timesteps": 4}),
    Row("T16", "T = 16 (trained and scored)", conversion={"timesteps": 16}),
    Row("lif", "LIF neurons (leak 1/16)", conversion={"neuron": "lif"}),
    Row("graded-qkv", "Q, K, V send 8-bit graded spikes", conversion={"qkv_neuron": "graded"}),
    Row("position", "SSA divided by the keys each query attends to", conversion=POSITION),
    Row("head-threshold", "SSA thresholds per head (a trained per-head scale)", conversion={"thresholds": "head"}),
    Row("neuron-threshold", "thresholds per neuron (encoders, MLP hidden, SSA output)",
        conversion={"thresholds": "neuron"}),
    Row("graded-all", "every population sends 8-bit graded spikes", conversion=GRADED),
    Row("graded-all-relative", "every population graded, relative steps (lr 1e-2 x each tensor's RMS)",
        conversion=GRADED, finetune=RELATIVE),
    Row("graded-all-position", "every population graded, relative steps (lr 1e-2), position SSA",
        conversion=POSITION | GRADED, finetune=RELATIVE),
    Row("graded-all-recipe", "every population graded, the recipe at 600 steps with relative steps (peak 1e-2)",
        conversion=POSITION | GRADED, finetune=RECIPE | RELATIVE),
    Row("graded-all-2400", "every population graded, relative steps (lr 1e-2): 2,400 steps",
        conversion=GRADED, finetune=RELATIVE | {"steps": 2400}),
    Row("percentile-99.99", "thresholds at the 99.99th percentile", conversion={"calibration_percentile": 99.99}),
    Row("percentile-99", "thresholds at the 99th percentile", conversion={"calibration_percentile": 99.0}),
    Row("recipe-150", "position SSA, lr 3e-3 warm-up + cosine: 150 steps", conversion=POSITION,
        finetune=RECIPE | {"steps": 150}),
    Row("recipe-600", "position SSA, lr 3e-3 warm-up + cosine: 600 steps", conversion=POSITION, finetune=RECIPE),
    Row("recipe-2400", "position SSA, lr 3e-3 warm-up + cosine: 2,400 steps", conversion=POSITION,
        finetune=RECIPE | {"steps": 2400, "warmup_steps": 100}),
    Row("recipe-600-neuron", "the recipe at 600 steps with thresholds per neuron",
        conversion=POSITION | {"thresholds": "neuron"}, finetune=RECIPE),
    Row("recipe-600-lr-1e-2", "the recipe at 600 steps with peak lr 1e-2", conversion=POSITION,
        finetune=RECIPE | {"learning_rate": 1e-2}),
    Row("recipe-600-relative", "the recipe at 600 steps, relative steps (peak lr 1e-2 x each tensor's RMS)",
        conversion=POSITION, finetune=RECIPE | RELATIVE),
]
SHIPPED_RECORD = Path(__file__).resolve().parent.parent / "models" / "gpt2_tiny" / "neurtransformer-finetuned.json"
ROWS_BY_NAME = {row.name: row for row in ROWS}


def held_out_windows(tokenizer, context: int, tokens: int) -> torch.Tensor:
    return token_windows(tokenizer, load_corpus().held_out, context, tokens)


def converted(row: Row, loaded):
    """The row's graph before fine-tuning, calibrated as the CLI does."""
    conversion, tuning = row.options()
    torch.manual_seed(tuning.seed)
    return convert(loaded.model, conversion, calibration_windows(loaded.tokenizer, loaded.config.n_positions),
                   "gpt2-tiny")


def run_row(row: Row, loaded, eval_tokens: int) -> dict:
    conversion, tuning = row.options()
    context = loaded.config.n_positions
    graph = converted(row, loaded)
    train = token_windows(loaded.tokenizer, load_corpus().train, tuning.context)
    target = TARGETS["loihi2"]
    bar = tqdm(total=tuning.steps, desc=row.name, unit="step", leave=False)
    started = time.perf_counter()
    trainable, state = finetune(loaded.model, graph, train, target, tuning, on_step=lambda *_: bar.update(1))
    train_seconds = time.perf_counter() - started
    bar.close()
    tuned = trainable.deployable() if tuning.steps else TrainableGraph(graph, [], target).deployable()
    GRAPHS.mkdir(parents=True, exist_ok=True)
    save_graph(tuned, GRAPHS / f"{row.name}.safetensors")
    held_out = held_out_windows(loaded.tokenizer, context, eval_tokens)
    ev = evaluate(loaded.model, quantize(tuned, TARGETS["loihi2-sim"]), held_out, conversion.timesteps,
                  simulate=fixed_point.run)
    return {"name": row.name, "change": row.change, "conversion": dataclasses.asdict(conversion),
            "finetune": dataclasses.asdict(tuning), "train_tokens": tuning.steps * tuning.batch_size * tuning.context,
            "train_seconds": round(train_seconds, 1), "threads": torch.get_num_threads(),
            "losses_every_10": [round(x, 4) for x in state.losses[::10]],
            "eval_tokens": ev.tokens, "ann_ppl": ev.ann_perplexity, "snn_ppl": ev.snn_perplexity,
            "ppl_change": ev.perplexity_change, "cos_logits": ev.logits_cosine,
            "cos_hidden": ev.mean_hidden_cosine, "top1": ev.top1_agreement}


def shipped_row() -> dict | None:
    """The shipped graph's own record (`make finetune-tiny`), as a row."""
    if not SHIPPED_RECORD.is_file():
        return None
    record = json.loads(SHIPPED_RECORD.read_text())
    tuning = record["finetune"]
    held_out = next(v for k, v in record["held_out"].items() if k.startswith("fine-tuned"))
    return {"name": "shipped", "change": "the recipe for 8,000 steps (`make finetune-tiny`, the shipped graph)",
            "finetune": tuning, "train_tokens": tuning["steps"] * tuning["batch_size"] * tuning["context"],
            "train_seconds": record["train_seconds_this_run"], "snn_ppl": held_out["snn_ppl"],
            "ppl_change": held_out["ppl_change"], "cos_logits": held_out["cos_logits"],
            "cos_hidden": held_out["cos_hidden"], "top1": held_out["top1"], "ann_ppl": held_out["ann_ppl"],
            "eval_tokens": held_out["tokens"]}


def row_named(name: str) -> Row:
    if name not in ROWS_BY_NAME:
        raise SystemExit(f"unknown row {name!r}; rows: {', '.join(ROWS_BY_NAME)}")
    return ROWS_BY_NAME[name]


def drift(row: Row, loaded) -> str:
    """How far fine-tuning moved the row's tensors, each as |after - before| / |before|: the median
    and largest (and which) over the on-chip weight matrices, and over the thresholds."""
    tuned_file = GRAPHS / f"{row.name}.safetensors"
    if not tuned_file.is_file():
        raise SystemExit(f"{tuned_file} not found: run the row first (--rows {row.name})")
    before, after = converted(row, loaded), load_graph(tuned_file)
    moved = {"weight": {}, "threshold": {}}
    for name in before.order():
        op, tuned = before.op(name), after.op(name)
        if isinstance(op, Dense) and name != "lm_head":
            moved["weight"][name] = float((tuned.weight - op.weight).norm() / op.weight.norm())
        if getattr(op, "neuron", None) is not None:
            moved["threshold"][name] = float((tuned.neuron.threshold - op.neuron.threshold).norm()
                                             / op.neuron.threshold.norm())
    cells = []
    for by_name in moved.values():
        most = max(by_name, key=by_name.get)
        cells.append(f"{statistics.median(by_name.values()):.3g} | {by_name[most]:.3g} ({most})")
    return f"| {row.name} | " + " | ".join(cells) + " |"


def table(results: dict) -> str:
    lines = ["| row | change from the base | steps | train tokens | train s | SNN ppl | change | cos(logits) "
             "| cos(hidden) | top-1 |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    shipped = shipped_row()
    rows = [results[row.name] for row in ROWS if row.name in results] + ([shipped] if shipped else [])
    for r in rows:
        lines.append(f"| {r['name']} | {r['change']} | {r['finetune']['steps']:,} | {r['train_tokens']:,} | "
                     f"{r['train_seconds']:,.0f} | {r['snn_ppl']:.2f} | {100 * r['ppl_change']:+.1f} % | "
                     f"{r['cos_logits']:.4f} | {r['cos_hidden']:.4f} | {100 * r['top1']:.1f} % |")
    results = {r["name"]: r for r in rows}
    ann = {round(r["ann_ppl"], 2) for r in results.values()}
    lines.append(f"\nANN perplexity {', '.join(f'{a:.2f}' for a in sorted(ann))} on "
                 f"{', '.join(sorted({str(r['eval_tokens']) for r in results.values()}))} held-out tokens.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS_BY_NAME), help="comma list of rows to run")
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--force", action="store_true", help="run rows already in the results again")
    parser.add_argument("--table", action="store_true", help="only print the table of the stored results")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--drift", metavar="ROWS",
                        help="only print how far fine-tuning moved these rows' weights and thresholds (from "
                             "their graphs in out/study)")
    args = parser.parse_args()
    if args.drift:
        rows = [row_named(name) for name in args.drift.split(",")]
        loaded = load_model("gpt2-tiny")
        print("| row | weights, median | weights, largest | thresholds, median | thresholds, largest |\n"
              "|---|---:|---:|---:|---:|")
        for row in rows:
            print(drift(row, loaded))
        return
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    if not args.table:
        rows = [row_named(name) for name in args.rows.split(",")]
        loaded = load_model("gpt2-tiny")
        for row in rows:
            name = row.name
            if name in results and not args.force:
                continue
            results[name] = run_row(row, loaded, args.eval_tokens)
            r = results[name]
            print(f"{name:18} {r['snn_ppl']:8.2f} ({100 * r['ppl_change']:+.1f} %) cos {r['cos_logits']:.4f} "
                  f"top-1 {100 * r['top1']:.1f} % [{r['train_seconds']:.0f} s]", flush=True)
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
