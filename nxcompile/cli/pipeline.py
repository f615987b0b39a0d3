"""The headline: `nxcompile MODEL --target loihi2-sim` runs every stage on one model and prints one summary."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from nxcompile.cli.flags import (add_conversion_arguments, add_grouping_argument, add_model_arguments,
                                 add_scoring_arguments, non_negative_int)
from nxcompile.cli.inputs import evaluation_windows, graph_from, load_model_from, progress, prompt_ids

NAME = "pipeline"


def add_parser(commands) -> None:
    pipeline = commands.add_parser(NAME, help="the whole pipeline on one model")
    add_model_arguments(pipeline)
    pipeline.add_argument("--target", default="loihi2-sim", help="compilation target")
    add_conversion_arguments(pipeline)
    add_scoring_arguments(pipeline, default_max_tokens=4096)
    pipeline.add_argument("--prompt", default="HAMLET. To be, or not to be", help="prompt to run in Lava")
    pipeline.add_argument("--max-new-tokens", type=non_negative_int, default=4,
                          help="tokens Lava generates after the prompt (default 4)")
    pipeline.add_argument("--no-pipeline", action="store_true",
                          help="feed the prompt to Lava token by token instead of pipelined")
    add_grouping_argument(pipeline)
    pipeline.add_argument("--output", "-o", type=Path, default=None,
                          help="the .net file to write (default MODEL.net here)")
    pipeline.set_defaults(handler=cmd_pipeline)


def _stage(name: str, started: float) -> None:
    print(f"[{name}: {time.perf_counter() - started:.1f} s]", file=sys.stderr)


def cmd_pipeline(args: argparse.Namespace) -> int:
    import torch

    from nxcompile.backends.lava_sim import LavaModel
    from nxcompile.backends.loihi import run_config
    from nxcompile.compiler.export import export_net, load_net
    from nxcompile.compiler.layers import network_from_graph
    from nxcompile.compiler.partition import place
    from nxcompile.compiler.quantize import quantize
    from nxcompile.compiler.targets import get_target
    from nxcompile.sim import energy, fixed_point
    from nxcompile.sim.evaluate import evaluate, logit_agreement
    from nxcompile.sim.timing import TIME_MODELS, graph_performance

    target = get_target(args.target)
    config = run_config(target.name)            # before any work: a missing hardware extension fails now
    loaded = load_model_from(args)
    started = time.perf_counter()
    spiking = graph_from(args, loaded)
    _stage("convert", started)
    started = time.perf_counter()
    quantised = quantize(spiking, target)
    placement = place(network_from_graph(quantised), target)
    _stage("quantise + partition", started)
    output = args.output or Path(f"{loaded.name.replace(':', '-')}.net")
    export_net(quantised, output, placement, loaded.tokenizer)
    started = time.perf_counter()
    timesteps = quantised.meta["options"]["timesteps"]
    evaluation = evaluate(loaded.model, quantised, evaluation_windows(args, loaded), timesteps,
                          batch_size=args.batch_size, progress=progress(f"eval T={timesteps}"),
                          simulate=fixed_point.run)
    _stage("reference simulation (fixed point)", started)
    started = time.perf_counter()
    from_file, placed = load_net(output)        # Lava runs what the file holds, nothing else
    with LavaModel(from_file, placement=placed, run_config=config, record=True, pipeline=not args.no_pipeline,
                   force=args.force, grouping=args.process_grouping) as lava:
        ids = prompt_ids(loaded.tokenizer, args.prompt, lava.kv_capacity, args.max_new_tokens)
        new = lava.generate_from(lava.prefill(ids, args.max_new_tokens)[-1], args.max_new_tokens)
        fed = torch.tensor([lava.token_ids])
        differing = lava.compare(fixed_point.run(from_file, fed, lava.timesteps, keep_values=True))
        _stage("Lava", started)
        with torch.no_grad():
            cosine, agreement = logit_agreement(torch.stack(lava.logits), loaded.model(fed).logits[0])
        counted = energy.count(from_file, lava.recorded_values(), lava.timesteps)
        timing = graph_performance(from_file, placement, counted, TIME_MODELS["loihi2-fitted"])
        report = energy.TokenEnergy(loaded.name, counted, len(lava.token_ids), lava.timesteps, timing)
        twin = ("identical spikes at every layer and logits" if not differing
                else f"DIFFERS at {', '.join(differing[:5])}")
        lines = _summary(from_file, loaded, target, placement, evaluation, lava) + [
            ("Lava prompt", f"{len(ids)} tokens + {len(new)} generated: cos(logits) vs ANN {cosine:.4f}, top-1 "
                            f"agreement {100 * agreement:.1f}%; reference twin: {twin}"),
            ("Lava speed", lava.speed()),
            ("Lava text", repr(loaded.tokenizer.decode(ids + new))),
            ("energy", report.summary_line()),
            ("Loihi 2", f"predicted on {timing.chips} chip(s): prefill "
                        f"{1 / (timing.interval * timing.steady.seconds):,.0f}"
                        f" tokens/s (a token every {timing.interval} steps of {timing.steady.seconds * 1e6:.1f} us), "
                        f"decode {1 / timing.decode_seconds:,.0f} tokens/s ({len(timing.decode_steps)} steps); "
                        f"{timing.model.name} time model; `nxcompile perf` for both phases and the ANN beside"),
            (".net file", str(output))]
    if loaded.random_weights:
        lines.append(("note", "RANDOM WEIGHTS: quality figures say nothing about any real model"))
    print("\n".join(f"{key:<12} {value}" for key, value in lines))
    return 1 if differing else 0


def _summary(graph, loaded, target, placement, ev, lava) -> list[tuple[str, str]]:
    from nxcompile.compiler.convert import describe_graph

    return [
        ("model", f"{loaded.name} ({loaded.source})"),
        ("graph", f"{describe_graph(graph)}, T = {graph.meta['options']['timesteps']}"),
        ("target", f"{target.name}: {placement.cores_used} cores on {placement.chips_used} chip(s), "
                   f"{placement.packing} packing (lower bound {placement.lower_bound_cores}), "
                   f"{lava.process_count} Lava processes"),
        ("perplexity", f"ANN {ev.ann_perplexity:.2f} | SNN {ev.snn_perplexity:.2f} "
                       f"({100 * ev.perplexity_change:+.1f}%) on {ev.tokens} held-out tokens (reference simulator, "
                       f"Loihi fixed point)"),
        ("cosine", f"logits {ev.logits_cosine:.4f} | hidden, mean over blocks {ev.mean_hidden_cosine:.4f} | "
                   f"top-1 agreement {100 * ev.top1_agreement:.1f}%"),
    ]
