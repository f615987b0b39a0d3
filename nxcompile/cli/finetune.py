"""`nxcompile finetune MODEL`: step 3 of the method (surrogate-gradient fine-tuning), scored before and after."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from nxcompile.cli.flags import (add_conversion_arguments, add_kv_bits_argument, add_model_arguments, fraction,
                                non_negative_int, positive_int, weight_bits)
from nxcompile.cli.inputs import (conversion_options, evaluation_windows, graph_from, load_model_from, log,
                                  on_ranks)
from nxcompile.files import write_atomically


def add_parser(commands) -> None:
    from nxcompile.models.finetune import SCHEDULES, SCOPES, STEP_SIZES, FinetuneOptions

    default = FinetuneOptions()
    parser = commands.add_parser("finetune", help="fine-tune the spiking model with lava-dl surrogate gradients")
    add_model_arguments(parser)
    add_conversion_arguments(parser, shipped=False)
    parser.add_argument("--steps", type=non_negative_int, default=default.steps,
                        help=f"optimiser steps (default {default.steps})")
    parser.add_argument("--scope", choices=SCOPES, default=default.scope,
                        help="ssa: Q/K/V, SSA thresholds and attention output (the method); all: every "
                             "on-chip population and readout")
    parser.add_argument("--train-text", type=Path, default=None,
                        help="text to train on (default: the shipped corpus' training plays)")
    parser.add_argument("--train-context", type=positive_int, default=None,
                        help="tokens per training window (default: --context, the scored window: SSA "
                             "sums over every past token, so train on the lengths it will see)")
    parser.add_argument("--batch-size", type=positive_int, default=default.batch_size,
                        help=f"windows per step (default {default.batch_size})")
    parser.add_argument("--lr", type=float, default=default.learning_rate,
                        help=f"Adam learning rate, the peak of the schedule (default {default.learning_rate:g})")
    parser.add_argument("--schedule", choices=SCHEDULES, default=default.schedule,
                        help="learning rate: constant, or a cosine decay to a tenth after the warm-up")
    parser.add_argument("--warmup-steps", type=non_negative_int, default=default.warmup_steps,
                        help="linear warm-up steps")
    parser.add_argument("--step-size", choices=STEP_SIZES, default=default.step_size,
                        help="absolute: every parameter moves by about --lr per step (Adam); relative: by --lr "
                             "times its tensor's initial RMS (for graded neurons, whose tensors are small)")
    parser.add_argument("--kl-weight", type=float, default=default.kl_weight,
                        help="weight of KL(ANN logits || SNN logits)")
    parser.add_argument("--hidden-weight", type=float, default=default.hidden_weight,
                        help="weight of 1 - cos between the ANN's and the SNN's residual streams")
    parser.add_argument("--lm-weight", type=float, default=default.lm_weight,
                        help="weight of the next-token cross-entropy")
    parser.add_argument("--weight-bits", type=weight_bits, default=None,
                        help="train every weight layer on signed mantissas this wide (2 to 8; default the "
                             "graph's grid, 8 bits unless `nxcompile fit --save-graph` cut it)")
    parser.add_argument("--sparsity", type=fraction, default=None,
                        help="with each neuron's synapses this fraction pruned by magnitude (0 to 0.99)")
    add_kv_bits_argument(parser)
    parser.add_argument("--prune-steps", type=non_negative_int, default=default.prune_steps,
                        help="grow each layer's pruned fraction from 0 to the grid's over this many steps, along a "
                             "cubic (default 0: pruned from the first step)")
    parser.add_argument("--seed", type=int, default=default.seed)
    parser.add_argument("--target", default="loihi2", help="the precision to train for (quantisation-aware)")
    parser.add_argument("--device", default=default.device, help="cpu or cuda")
    parser.add_argument("--fsdp", action="store_true",
                        help="under torchrun, shard the trained tensors, their gradients and Adam's moments over "
                             "the ranks (FSDP) instead of a whole copy on each (DDP)")
    parser.add_argument("--recompute-activations", action="store_true",
                        help="activation checkpointing: keep only each node's output and run the node again "
                             "in the backward pass (the same steps in less memory, for one more forward pass a "
                             "step; README, \"Fine-tuning (step 3)\")")
    parser.add_argument("--text", type=Path, default=None,
                        help="held-out text scored before and after (default: the held-out plays)")
    parser.add_argument("--eval-tokens", type=non_negative_int, default=2048,
                        help="held-out tokens scored before and after (0: skip)")
    parser.add_argument("--output", "-o", type=Path, default=None,
                        help="fine-tuned graph file (default finetuned-MODEL.safetensors); the resumable "
                             "state is written beside it")
    parser.add_argument("--resume", action="store_true", help="continue from the state beside --output")
    parser.set_defaults(handler=cmd_finetune)


def _options(args: argparse.Namespace):
    from nxcompile.models.finetune import FinetuneOptions

    return FinetuneOptions(steps=args.steps, learning_rate=args.lr, batch_size=args.batch_size,
                           context=args.train_context or args.context,
                           timesteps=conversion_options(args).timesteps, scope=args.scope, seed=args.seed,
                           kl_weight=args.kl_weight, hidden_weight=args.hidden_weight, lm_weight=args.lm_weight,
                           schedule=args.schedule, warmup_steps=args.warmup_steps, step_size=args.step_size,
                           prune_steps=args.prune_steps,
                           device=args.device, recompute=args.recompute_activations, fsdp=args.fsdp)


def _on_grid_asked(args: argparse.Namespace, graph):
    """The graph with the grid the flags ask for recorded (the one-shot cut is where training starts
    and the "converted" row of the table)."""
    from nxcompile.compiler.fit import check_kv_bits, uniform_grid

    current = grid = graph.weight_grid()
    if args.weight_bits is not None or args.sparsity is not None:
        if current.layer_weight_bits or current.layer_sparsity:
            log.info("note: --weight-bits / --sparsity replace the per-layer grid the graph records")
        grid = uniform_grid(graph, args.weight_bits or 8, args.sparsity or 0.0, kv_bits=current.kv_bits)
    if args.kv_bits is not None:
        grid = dataclasses.replace(grid, kv_bits=check_kv_bits(graph, args.kv_bits))
    return graph if grid == current else graph.with_weight_grid(grid)


def cmd_finetune(args: argparse.Namespace) -> int:
    from nxcompile.models.zoo import check_device

    check_device(args.device)
    return on_ranks(_finetune, args, args.device)


def _finetune(args: argparse.Namespace, ranks) -> int:
    """The run on this rank: only the main rank prints, shows progress and writes files."""
    import torch
    from tqdm import tqdm

    from nxcompile.compiler.graph import save_graph
    from nxcompile.compiler.targets import get_target
    from nxcompile.models.corpus import training_windows
    from nxcompile.models.finetune import (TrainState, finetune, graph_on, held_out_figures, held_out_table,
                                           record_path, state_path, trainable_nodes, with_record)

    target = get_target(args.target)
    output = args.output or Path(f"finetuned-{args.model.replace(':', '-')}.safetensors")
    resume = TrainState.load(state_path(output)) if args.resume else None
    if not args.resume and state_path(output).exists():
        log.info(f"note: starting afresh; {state_path(output)} will be overwritten (--resume continues it)")
    loaded = load_model_from(args)
    torch.manual_seed(args.seed)
    converted = _on_grid_asked(args, graph_from(args, loaded))
    options = _options(args)
    train = training_windows(loaded.tokenizer, min(options.context, loaded.config.n_positions), args.train_text)
    log.info(f"fine-tuning {len(trainable_nodes(converted, args.scope))} nodes ({args.scope}) of {loaded.name} at "
             f"T = {options.timesteps} for {args.steps} steps of {args.batch_size} x {train.shape[1]} tokens, "
             f"quantisation-aware for {target.name}, on {args.device}"
             + (f", over {ranks.world} ranks ({args.batch_size // ranks.world} windows each)" if ranks.distributed
                else ""))
    bar = tqdm(total=args.steps, initial=resume.step if resume else 0, desc="finetune", unit="step", file=sys.stderr,
               disable=not ranks.main)
    started, first_step = time.perf_counter(), resume.step if resume else 0

    def on_step(step: int, losses: dict[str, float]) -> None:
        tokens = (step - first_step) * args.batch_size * train.shape[1]
        bar.set_postfix(loss=f"{losses['loss']:.3f}", kl=f"{losses['kl']:.3f}", hid=f"{losses['hidden']:.3f}",
                        tok_s=f"{tokens / (time.perf_counter() - started):.0f}")
        bar.update(1)

    def on_checkpoint(trainable, state) -> None:
        if ranks.main:
            save_graph(with_record(trainable.deployable(), state), output)
            state.save(state_path(output))

    try:
        trainable, state = finetune(loaded.model, converted, train, target, options, resume,
                                    on_step=on_step, on_checkpoint=on_checkpoint, ranks=ranks)
    finally:
        bar.close()
    on_checkpoint(trainable, state)
    seconds = time.perf_counter() - started
    record = {"model": loaded.name, "conversion": converted.meta["options"], "finetune": state.options,
              "steps": state.step, "train_seconds_this_run": round(seconds, 1),
              "torch_threads": torch.get_num_threads(), "ranks": ranks.world,
              "trained_state_bytes_per_rank": state.rank_bytes,
              "peak_cuda_memory_gib": (round(torch.cuda.max_memory_allocated() / 2**30, 3)
                                       if args.device.startswith("cuda") else None),
              "loss_every_10_steps": [round(x, 4) for x in state.losses[::10]]}
    if args.eval_tokens:
        windows = evaluation_windows(args, loaded, args.eval_tokens)
        tuned = graph_on(trainable.deployable(), torch.device("cpu"))
        figures = held_out_figures(loaded.model, {"converted": converted, f"fine-tuned ({args.scope})": tuned},
                                   windows, options.timesteps, ranks)
        if ranks.main:
            print(held_out_table(figures, windows, options.timesteps))
        record["held_out"] = {label: ev.as_record() for label, ev in figures.items()}
    if not ranks.main:
        return 0
    write_atomically(record_path(output), lambda tmp: tmp.write_text(json.dumps(record, indent=1) + "\n"),
                     "choose a writable --output path")
    print(f"wrote {output} and {record_path(output)} ({state.step} steps, {seconds:.1f} s this run; resumable "
          f"state {state_path(output)})")
    return 0
