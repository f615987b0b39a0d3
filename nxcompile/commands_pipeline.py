"""The headline command: `nxcompile MODEL --target loihi2-sim` runs every stage and prints one summary."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nxcompile.commands_hw import place_and_validate
from nxcompile.commands_net import prompt_ids
from nxcompile.commands_energy import ATTENTION_OP, static_and_dynamic, summaries
from nxcompile.commands_snn import build_graph, describe_graph, load_from_args, run_evaluation


def default_net_path(model_name: str) -> Path:
    return Path(f"{model_name.replace(':', '-')}.net")


def _stage(name: str, seconds: dict[str, float], started: float) -> None:
    seconds[name] = time.perf_counter() - started
    print(f"[{name}: {seconds[name]:.1f} s]", file=sys.stderr)


def cmd_pipeline(args: argparse.Namespace) -> int:
    from nxcompile.backends.lava_sim import LavaModel
    from nxcompile.backends.loihi import run_config
    from nxcompile.compiler.export import export_net, load_net
    from nxcompile.compiler.layers import network_from_graph
    from nxcompile.compiler.quantize import quantize
    from nxcompile.compiler.targets import get_target
    from nxcompile.sim import energy, fixed_point

    target = get_target(args.target)
    config = run_config(target.name)            # before any work: a missing hardware extension fails now
    seconds: dict[str, float] = {}
    loaded = load_from_args(args)
    started = time.perf_counter()
    spiking = build_graph(args, loaded)
    _stage("convert", seconds, started)
    started = time.perf_counter()
    quantised = quantize(spiking, target)
    placement = place_and_validate(network_from_graph(quantised), target, {})
    _stage("quantise + partition", seconds, started)
    output = args.output or default_net_path(loaded.name)
    export_net(quantised, output, placement.as_data(), loaded.tokenizer)
    started = time.perf_counter()
    evaluation = run_evaluation(args, loaded, quantised, quantised.meta["options"]["timesteps"],
                                simulate=fixed_point.run)
    _stage("reference simulation (fixed point)", seconds, started)

    started = time.perf_counter()
    from_file, placed = load_net(output)        # Lava runs what the file holds, nothing else
    with LavaModel(from_file, placement=placed, run_config=config, record=True) as lava:
        ids = prompt_ids(loaded.tokenizer, args.prompt, lava.kv_capacity, args.max_new_tokens)
        new = lava.generate_from(lava.feed(ids)[-1], args.max_new_tokens)
        fed = torch.tensor([lava.token_ids])
        twin = fixed_point.run(from_file, fed, lava.timesteps, keep_values=True)
        differing = lava.compare(twin)
        _stage("Lava", seconds, started)
        with torch.no_grad():
            ann_logits = loaded.model(fed).logits[0]
        lava_logits = torch.stack(lava.logits)
        cosine = float(F.cosine_similarity(lava_logits.double(), ann_logits.double(), dim=-1).mean())
        agreement = float((lava_logits.argmax(-1) == ann_logits.argmax(-1)).float().mean())
        _summary(from_file, loaded, target, placement, evaluation, lava, output,
                 dict(cosine=cosine, agreement=agreement, differing=differing,
                      energy=summaries(energy.count(from_file, lava.recorded_values(), lava.timesteps)),
                      text=loaded.tokenizer.decode(ids + new), prompt_tokens=len(ids), new=len(new)))
    return 1 if differing else 0


def _summary(graph, loaded, target, placement, ev, lava, output: Path, prompt: dict) -> None:
    options = graph.meta["options"]
    twin = ("identical spikes at every layer and logits" if not prompt["differing"]
            else f"DIFFERS at {', '.join(prompt['differing'][:5])}")
    lines = [
        ("model", f"{loaded.name} ({loaded.source})"),
        ("graph", f"{describe_graph(graph)}, T = {options['timesteps']}"),
        ("target", f"{target.name}: {placement.cores_used} cores on {placement.chips_used} chip(s), "
                   f"{placement.packing} packing (lower bound {placement.lower_bound_cores}), "
                   f"{len(lava.processes) + len(lava.synapses)} Lava processes"),
        ("perplexity", f"ANN {ev.ann_perplexity:.2f} | SNN {ev.snn_perplexity:.2f} "
                       f"({100 * ev.perplexity_change:+.1f}%) on {ev.tokens} held-out tokens "
                       f"(reference simulator, Loihi fixed point)"),
        ("cosine", f"logits {ev.logits_cosine:.4f} | hidden, mean over blocks {ev.mean_hidden_cosine:.4f} | "
                   f"top-1 agreement {100 * ev.top1_agreement:.1f}%"),
        ("Lava prompt", f"{prompt['prompt_tokens']} tokens + {prompt['new']} generated: cos(logits) vs ANN "
                        f"{prompt['cosine']:.4f}, top-1 agreement {100 * prompt['agreement']:.1f}%; "
                        f"reference twin: {twin}"),
        ("Lava speed", lava.speed()),
        ("Lava text", repr(prompt["text"])),
        ("energy", _energy_line(prompt["energy"], placement.chips_used, lava.plan.period)),
        (".net file", str(output)),
    ]
    if loaded.random_weights:
        lines.append(("note", "RANDOM WEIGHTS: quality figures say nothing about any real model"))
    print("\n".join(f"{key:<12} {value}" for key, value in lines))


def _energy_line(by_scope: dict, chips: int, period: int) -> str:
    """Energy per token of the tokens Lava ran, counted on Lava's own spikes."""
    whole = by_scope["every on-chip layer"]
    attention = by_scope[ATTENTION_OP]["45nm"]
    return (f"per token on chip: SNN {whole['45nm'].snn_pj / 1e3:.1f} nJ vs ANN {whole['45nm'].ann_pj / 1e3:.1f} nJ "
            f"({whole['45nm'].change()}; 45 nm figures, Horowitz 2014), attention op {attention.change()} than ANN "
            f"attention; {static_and_dynamic(whole, chips, period)}; `nxcompile energy FILE.net` for the table")
