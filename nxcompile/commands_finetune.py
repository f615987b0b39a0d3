"""`nxcompile finetune`: NeurTransformer step 3 from the command line, with a
before/after evaluation on held-out text at the same T."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from nxcompile.commands_snn import (add_conversion_arguments, add_model_arguments, build_graph, load_from_args,
                                    non_negative_int, positive_int, text_token_ids)
from nxcompile.errors import UsageError
from nxcompile.files import write_atomically


def add_finetune_parser(commands) -> None:
    from nxcompile.models.finetune import SCHEDULES, SCOPES, STEP_SIZES

    parser = commands.add_parser("finetune", help="fine-tune the spiking model with lava-dl surrogate gradients")
    add_model_arguments(parser)
    add_conversion_arguments(parser, shipped=False)
    parser.add_argument("--steps", type=non_negative_int, default=200, help="optimiser steps (default 200)")
    parser.add_argument("--scope", choices=SCOPES, default="ssa",
                        help="ssa: Q/K/V, SSA thresholds and attention output (the method); all: every "
                             "on-chip population and readout")
    parser.add_argument("--train-text", type=Path, default=None,
                        help="text to train on (default: the shipped corpus' training plays)")
    parser.add_argument("--train-context", type=positive_int, default=None,
                        help="tokens per training window (default: --context, the scored window: SSA "
                             "sums over every past token, so train on the lengths it will see)")
    parser.add_argument("--batch-size", type=positive_int, default=2, help="windows per step (default 2)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, the peak of the schedule "
                                                               "(default 1e-3)")
    parser.add_argument("--schedule", choices=SCHEDULES, default="constant",
                        help="learning rate: constant, or a cosine decay to a tenth after the warm-up")
    parser.add_argument("--warmup-steps", type=non_negative_int, default=0, help="linear warm-up steps")
    parser.add_argument("--step-size", choices=STEP_SIZES, default="absolute",
                        help="absolute: every parameter moves by about --lr per step (Adam); relative: by --lr "
                             "times its tensor's initial RMS (for graded neurons, whose tensors are small)")
    parser.add_argument("--kl-weight", type=float, default=1.0, help="weight of KL(ANN logits || SNN logits)")
    parser.add_argument("--hidden-weight", type=float, default=1.0,
                        help="weight of 1 - cos between the ANN's and the SNN's residual streams")
    parser.add_argument("--lm-weight", type=float, default=1.0, help="weight of the next-token cross-entropy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", default="loihi2", help="the precision to train for (quantisation-aware)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--text", type=Path, default=None,
                        help="held-out text scored before and after (default: the held-out plays)")
    parser.add_argument("--eval-tokens", type=non_negative_int, default=2048,
                        help="held-out tokens scored before and after (0: skip)")
    parser.add_argument("--output", "-o", type=Path, default=None,
                        help="fine-tuned graph file (default finetuned-MODEL.safetensors); the resumable "
                             "state is written beside it")
    parser.add_argument("--resume", action="store_true", help="continue from the state beside --output")
    parser.set_defaults(handler=cmd_finetune)


def _training_windows(args, loaded):
    from nxcompile.models.corpus import load_corpus
    from nxcompile.models.perplexity import windows

    if args.train_text is not None:
        try:
            text = args.train_text.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read --train-text {args.train_text}: {exc}") from None
    else:
        text = load_corpus().train
    ids = text_token_ids(loaded.tokenizer, text)
    context = min(args.train_context or args.context, loaded.config.n_positions)
    if len(ids) < context + 1:
        raise UsageError(f"the training text has {len(ids)} tokens; give at least {context + 1}")
    return windows(ids, context)


def _check_device(name: str) -> None:
    import torch

    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UsageError(f"unknown --device {name!r}; use cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda but this torch sees no CUDA device; use --device cpu")


def _evaluate(args, loaded, graphs: dict, tokens: int) -> dict[str, dict]:
    """Each graph quantised for loihi2-sim and scored in its fixed point against the ANN (printed)."""
    from nxcompile.commands_snn import evaluation_token_ids
    from nxcompile.compiler.quantize import quantize
    from nxcompile.compiler.targets import get_target
    from nxcompile.models.perplexity import windows
    from nxcompile.sim import fixed_point
    from nxcompile.sim.evaluate import evaluate

    ids = windows(evaluation_token_ids(args, loaded), min(args.context, loaded.config.n_positions), tokens)
    print(f"\nheld-out text, T = {args.timesteps}, {ids.numel()} tokens (reference simulator, loihi2-sim's fixed point)")
    print(f"{'graph':34} {'ANN ppl':>8} {'SNN ppl':>8} {'change':>8} {'cos(lgt)':>8} {'cos(hid)':>8} {'top-1':>6}")
    results = {}
    for label, graph in graphs.items():
        ev = evaluate(loaded.model, quantize(graph, get_target("loihi2-sim")), ids, args.timesteps,
                      simulate=fixed_point.run)
        print(f"{label:34} {ev.ann_perplexity:>8.2f} {ev.snn_perplexity:>8.2f} {100 * ev.perplexity_change:>+7.1f}% "
              f"{ev.logits_cosine:>8.4f} {ev.mean_hidden_cosine:>8.4f} {100 * ev.top1_agreement:>5.1f}%", flush=True)
        results[label] = {"tokens": ev.tokens, "ann_ppl": round(ev.ann_perplexity, 3),
                          "snn_ppl": round(ev.snn_perplexity, 3), "ppl_change": round(ev.perplexity_change, 5),
                          "cos_logits": round(ev.logits_cosine, 5), "cos_hidden": round(ev.mean_hidden_cosine, 5),
                          "top1": round(ev.top1_agreement, 5)}
    return results


def record_path(output: Path) -> Path:
    """The JSON beside a fine-tuned graph: its recipe, loss log and held-out figures."""
    return output.with_suffix(".json")


def cmd_finetune(args: argparse.Namespace) -> int:
    import torch

    from nxcompile.compiler.graph import save_graph
    from nxcompile.compiler.targets import get_target
    from nxcompile.models.finetune import (FinetuneOptions, TrainState, finetune, graph_on, state_path,
                                           trainable_nodes)

    _check_device(args.device)
    target = get_target(args.target)
    options = FinetuneOptions(steps=args.steps, learning_rate=args.lr, batch_size=args.batch_size,
                              context=args.train_context or args.context, timesteps=args.timesteps, scope=args.scope,
                              seed=args.seed, kl_weight=args.kl_weight, hidden_weight=args.hidden_weight,
                              lm_weight=args.lm_weight, schedule=args.schedule, warmup_steps=args.warmup_steps,
                              step_size=args.step_size, device=args.device)
    output = args.output or Path(f"finetuned-{args.model.replace(':', '-')}.safetensors")
    resume = TrainState.load(state_path(output)) if args.resume else None
    if not args.resume and state_path(output).exists():
        print(f"note: starting afresh; {state_path(output)} will be overwritten (--resume continues it)",
              file=sys.stderr)
    loaded = load_from_args(args)
    torch.manual_seed(args.seed)
    converted = build_graph(args, loaded)
    train = _training_windows(args, loaded)
    names = trainable_nodes(converted, args.scope)
    print(f"fine-tuning {len(names)} nodes ({args.scope}) of {loaded.name} at T = {args.timesteps} for "
          f"{args.steps} steps of {args.batch_size} x {train.shape[1]} tokens, quantisation-aware for "
          f"{target.name}, on {args.device}", file=sys.stderr)
    bar = tqdm(total=args.steps, initial=resume.step if resume else 0, desc="finetune", unit="step",
               file=sys.stderr)
    started, first_step = time.perf_counter(), resume.step if resume else 0

    def on_step(step: int, losses: dict[str, float]) -> None:
        tokens = (step - first_step) * args.batch_size * train.shape[1]
        bar.set_postfix(loss=f"{losses['loss']:.3f}", kl=f"{losses['kl']:.3f}", hid=f"{losses['hidden']:.3f}",
                        tok_s=f"{tokens / (time.perf_counter() - started):.0f}")
        bar.update(1)

    def on_checkpoint(trainable, state) -> None:
        save_graph(_with_record(trainable.deployable(), state), output)
        state.save(state_path(output))

    try:
        trainable, state = finetune(loaded.model, converted, train, target, options, resume,
                                    on_step=on_step, on_checkpoint=on_checkpoint)
    finally:
        bar.close()
    on_checkpoint(trainable, state)
    seconds = time.perf_counter() - started
    record = {"model": loaded.name, "conversion": converted.meta["options"], "finetune": state.options,
              "steps": state.step, "train_seconds_this_run": round(seconds, 1), "torch_threads": torch.get_num_threads(),
              "loss_every_10_steps": [round(x, 4) for x in state.losses[::10]]}
    if args.eval_tokens:
        tuned = graph_on(trainable.deployable(), torch.device("cpu"))
        record["held_out"] = _evaluate(args, loaded, {"converted": converted, f"fine-tuned ({args.scope})": tuned},
                                       args.eval_tokens)
    write_atomically(record_path(output), lambda tmp: tmp.write_text(json.dumps(record, indent=1) + "\n"),
                     "choose a writable --output path")
    print(f"wrote {output} and {record_path(output)} ({state.step} steps, {seconds:.1f} s this run; resumable "
          f"state {state_path(output)})")
    return 0


def _with_record(graph, state):
    graph.meta.pop("origin", None)          # a reader says where the graph came from
    graph.meta["finetune"] = {"options": state.options, "steps": state.step,
                              "final_loss": state.losses[-1] if state.losses else None}
    return graph
