"""Every layer cut alike: quality on gpt2-tiny, chips on GPT-2's shapes.

    python bench/uniform_cuts.py [--method graded|neurtransformer|spikedecoder]
                                 [--bits 8,6,4,3,2] [--sparsity 0,0.75,0.9] [--max-tokens 4096]
                                 [--shapes random:gpt2-small,random:gpt2-medium] [--packing intel]
                                 [--rounding nearest|gptq] [--calibration-tokens 512]
                                 [--finetune-steps 0] [--finetune-lr 1e-3] [--batch-size 4] [--prune-steps 0]
                                 [--kv-bits 8] [--seed 0] [--device cpu|cuda]

Every on-chip weight layer's mantissas at the same signed width and the same fraction of each
neuron's synapses pruned by magnitude (`GradedPrecision`), quantised for loihi2-sim; gpt2-tiny
(the graded method's conversion, or the rate-coded methods' graph as the pipeline takes it: the
shipped fine-tuned NeurTransformer graph, at the method's T) scored in Loihi's integers against
the ANN on the same held-out tokens; each model placed on
Loihi 2 under the memory rule fitted to Intel's compiler (a dense synapse its weight bits + 8,
in 50-bit words; a sparse one also a 12-bit index, assumed), which gives the cores and chips.
Random weights give the shapes' chip counts only (contexts of 256 tokens; `nxcompile fit` chooses
per layer instead), always rounded to nearest; `--rounding gptq` rounds gpt2-tiny's cut layers by
GPTQ on training text (`--calibration-tokens`; the graded method's only). `--finetune-steps N`
also fine-tunes gpt2-tiny on each cut's grid (quantisation-aware, every layer, `nxcompile finetune
--scope all --weight-bits B --sparsity F`'s training: Adam, a cosine schedule after a tenth of the
steps warming up, `--seed` as `finetune --seed`; `--prune-steps` as `finetune --prune-steps`; `--device`
as `finetune --device`) and scores it on the same tokens (in Loihi's integers, on the CPU). `--kv-bits`
narrows the graded method's KV cache too (in the chips, the one-shot score and the training,
`finetune --kv-bits`); the fine-tuned graph is then also scored with an 8-bit cache,
which shows what the narrower cache itself costs.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import torch
from tqdm import tqdm

from nxcompile.compiler.convert import ConversionOptions, resolve_graph, timesteps_for
from nxcompile.compiler.fit import input_grams, uniform_grid
from nxcompile.compiler.layers import network_from_graph
from nxcompile.compiler.partition import place
from nxcompile.compiler.quantize import quantize
from nxcompile.compiler.targets import TARGETS
from nxcompile.errors import UsageError
from nxcompile.models.corpus import load_corpus, token_windows, training_windows
from nxcompile.models.finetune import FinetuneOptions, finetune, graph_on
from nxcompile.models.zoo import check_device, load_model
from nxcompile.sim import fixed_point
from nxcompile.sim.evaluate import evaluate

TARGET = TARGETS["loihi2-sim"]


def placed(graph, bits: int, fraction: float, packing: str, rounding: str = "nearest", grams=None, kv_bits: int = 8):
    quantised = quantize(graph, TARGET, uniform_grid(graph, bits, fraction, rounding, kv_bits), grams)
    return quantised, place(network_from_graph(quantised), TARGET, packing)


def scored(tiny, quantised, held_out) -> str:
    """ppl change | cos(logits) | top-1 of a quantised graph in Loihi's integers against the ANN."""
    ev = evaluate(tiny.model, quantised, held_out, quantised.meta["options"]["timesteps"], simulate=fixed_point.run)
    return f"{100 * ev.perplexity_change:+.2f} % | {ev.logits_cosine:.4f} | {100 * ev.top1_agreement:.1f} %"


def finetuned(tiny, graph, bits: int, fraction: float, train, args: argparse.Namespace):
    """gpt2-tiny's graph fine-tuned on the cut's grid (which it records, KV width included)."""
    options = FinetuneOptions(steps=args.finetune_steps, learning_rate=args.finetune_lr, batch_size=args.batch_size,
                              context=tiny.config.n_positions, timesteps=graph.meta["options"]["timesteps"],
                              scope="all", schedule="cosine",
                              warmup_steps=args.finetune_steps // 10, prune_steps=args.prune_steps, seed=args.seed,
                              device=args.device)
    cut = graph.copy().with_weight_grid(uniform_grid(graph, bits, fraction, kv_bits=args.kv_bits))
    with tqdm(total=options.steps, desc=f"fine-tune {bits}-bit {100 * fraction:.0f} % pruned", file=sys.stderr) as bar:
        trainable, _ = finetune(tiny.model, cut, train, TARGET, options, on_step=lambda step, losses: bar.update(1))
    tiny.model.to("cpu")            # finetune moved the teacher; scoring runs on the CPU
    return graph_on(trainable.deployable(), torch.device("cpu"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="graded", choices=("graded", "neurtransformer", "spikedecoder"))
    parser.add_argument("--bits", default="8,6,4,3,2")
    parser.add_argument("--sparsity", default="0,0.75,0.9")
    parser.add_argument("--packing", default="intel")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--rounding", default="nearest", choices=("nearest", "gptq"))
    parser.add_argument("--calibration-tokens", type=int, default=512)
    parser.add_argument("--shapes", default="random:gpt2-small,random:gpt2-medium")
    parser.add_argument("--finetune-steps", type=int, default=0)
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--prune-steps", type=int, default=0)
    parser.add_argument("--kv-bits", type=int, default=8, choices=range(2, 17), metavar="2..16",
                        help="the graded method's KV cache width (the rate-coded methods' keys and values are spikes)")
    parser.add_argument("--seed", type=int, default=0, help="fine-tuning's seed (its initial draw and its windows)")
    parser.add_argument("--device", default="cpu", help="where fine-tuning runs: cpu or cuda")
    args = parser.parse_args()
    try:
        check_device(args.device)
    except UsageError as error:
        parser.error(str(error))
    if args.kv_bits != 8 and args.method != "graded":
        parser.error("--kv-bits sets the graded method's KV cache; the rate-coded methods cache spikes")
    cuts = [(int(b), float(f)) for f in args.sparsity.split(",") for b in args.bits.split(",")]
    options = ConversionOptions(method=args.method, timesteps=timesteps_for(args.method, None))
    tiny = load_model("gpt2-tiny")
    graph = resolve_graph(tiny, options, tiny.config.n_positions)
    held_out = token_windows(tiny.tokenizer, load_corpus().held_out, tiny.config.n_positions, args.max_tokens)
    grams = input_grams(graph, token_windows(tiny.tokenizer, load_corpus().train, tiny.config.n_positions,
                                             args.calibration_tokens)) if args.rounding == "gptq" else None
    train = training_windows(tiny.tokenizer, tiny.config.n_positions) if args.finetune_steps else None
    print(f"gpt2-tiny, {args.method} ({graph.meta['origin']}), T = {options.timesteps}, {held_out.numel()} held-out "
          f"tokens in loihi2-sim's integers; every layer alike, {args.packing} packing, {args.rounding} rounding, "
          f"{args.kv_bits}-bit KV cache" + (f", fine-tuning seed {args.seed}" if args.finetune_steps else ""))
    tuned = f" | after {args.finetune_steps} steps on the grid: ppl change | cos(logits) | top-1" + (
        " | the same with an 8-bit KV cache: ppl change | cos(logits) | top-1" if args.kv_bits != 8 else "")
    print("| weight bits | pruned | ppl change | cos(logits) | top-1 | cores / chips"
          + (tuned if args.finetune_steps else "") + " |")
    print("|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" * (1 + (args.kv_bits != 8)) if args.finetune_steps else ""))
    for bits, fraction in cuts:
        quantised, placement = placed(graph, bits, fraction, args.packing, args.rounding, grams, args.kv_bits)
        cells = [scored(tiny, quantised, held_out), f"{placement.cores_used} / {placement.chips_used}"]
        if args.finetune_steps:
            trained = finetuned(tiny, graph, bits, fraction, train, args)
            cells.append(scored(tiny, quantize(trained, TARGET), held_out))
            if args.kv_bits != 8:      # training runs in float: the KV width's own cost, apart
                cells.append(scored(tiny, quantize(trained, TARGET, replace(trained.weight_grid(), kv_bits=8)), held_out))
        print(f"| {bits} | {100 * fraction:.0f} % | " + " | ".join(cells) + " |", flush=True)
    for spec in filter(None, args.shapes.split(",")):
        loaded = load_model(spec)
        graph = resolve_graph(loaded, options, 256)
        print(f"{spec} (shapes only), {args.method}, {args.packing} packing: " + ", ".join(
            f"{bits}-bit {100 * fraction:.0f} % pruned {p.cores_used:,} cores / {p.chips_used} chips"
            for (bits, fraction), p in ((cut, placed(graph, *cut, args.packing, kv_bits=args.kv_bits)[1])
                                                for cut in cuts)), flush=True)

if __name__ == "__main__":
    main()
