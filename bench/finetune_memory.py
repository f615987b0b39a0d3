"""Where a fine-tuning step's memory goes, per GPT-2 size: what FSDP would shard, what activation
checkpointing saves.

    python bench/finetune_memory.py [--models gpt2-small,gpt2-medium,gpt2-large,gpt2-xl]
                                    [--methods neurtransformer,graded] [--batch-size 1] [--train-context 128]

Every figure is a byte count, not a guess: the trained tensors (`TrainableGraph`'s parameters; a
step also holds their gradients and Adam's two moments: what FSDP shards over ranks), the frozen
spiking graph's tensors, the ANN's (the teacher), and what autograd keeps for the backward pass
of one step on `--batch-size` x `--train-context` tokens, counted by torch's own saved-tensor hooks
(with `--recompute-activations` it keeps only every node's output and the step's on-grid copies of
the trained ops, also counted; the one node being run again in the backward pass adds its own). Blocks are
alike, so each count is measured on random models of the size's width with one and with two
blocks and extended to the size's depth (a + b * layers, exact for a per-block count). Random
weights: sizes, not quality. These are what is live through a step, a lower bound: the peak a
process reaches adds the backward pass's gradients in flight, torch's and Lava's own memory (about
1.2 GiB here) and the allocator's slack; `bench/finetune_speed.py` measures that peak.
"""
from __future__ import annotations

import argparse
import dataclasses

import torch
from transformers import GPT2LMHeadModel

from nxcompile.compiler.convert import METHODS, ConversionOptions, convert
from nxcompile.compiler.targets import get_target
from nxcompile.models.corpus import calibration_windows
from nxcompile.models.finetune import TrainableGraph, slayer_spike, trainable_nodes
from nxcompile.models.zoo import ZOO, shipped_tokenizer, zoo_entry
from nxcompile.sim import reference
from nxcompile.sim.evaluate import ann_forward

GIB = 2 ** 30
ADAM_MOMENTS = 2


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def op_tensors(op) -> list[torch.Tensor]:
    """Every tensor an op holds, its neuron model's included."""
    found = []
    for f in dataclasses.fields(op):
        value = getattr(op, f.name)
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif dataclasses.is_dataclass(value):
            found += op_tensors(value)
    return found


def graph_bytes(spiking) -> int:
    return tensor_bytes(t for name in spiking.graph.nodes for t in op_tensors(spiking.op(name)))


def saved_bytes(spiking, trainable: TrainableGraph, ids: torch.Tensor, timesteps: int, recompute: bool) -> int:
    """What a training forward leaves for the backward pass (the ANN's runs without grad): what autograd
    saves; with recomputation instead every node's output and the step's on-grid copies of the
    trained ops, which the checkpoints hold to run the nodes again (without it autograd saves those
    copies itself)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t
    ops = trainable.grid_ops()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run = reference.run(spiking, ids, timesteps, keep_values=recompute, ops=ops, spike=slayer_spike,
                            recompute=recompute)
    if not recompute:
        return total
    held = tensor_bytes(t for name in trainable.names for t in op_tensors(ops[name]) if t.requires_grad)
    return total + tensor_bytes(run.values.values()) + held


def measure(size: str, method: str, layers: int, ids: torch.Tensor, calibration: torch.Tensor) -> dict:
    torch.manual_seed(0)
    config = zoo_entry(size).config()
    config.n_layer = layers
    model = GPT2LMHeadModel(config).eval()
    timesteps = 1 if method == "graded" else 8
    spiking = convert(model, ConversionOptions(method=method, timesteps=timesteps), calibration)
    trainable = TrainableGraph(spiking, trainable_nodes(spiking, "all"), get_target("loihi2"))
    ann_forward(model, ids)        # the teacher runs without grad: nothing kept
    return {"trained": tensor_bytes(trainable.parameters()), "graph": graph_bytes(spiking),
            "ann": tensor_bytes(model.parameters()),
            "kept": saved_bytes(spiking, trainable, ids, timesteps, recompute=False),
            "recomputed": saved_bytes(spiking, trainable, ids, timesteps, recompute=True)}


def at_depth(one: dict, two: dict, layers: int) -> dict:
    """Counts measured at one and two blocks, at `layers` blocks."""
    return {key: one[key] + (two[key] - one[key]) * (layers - 1) for key in one}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="gpt2-small,gpt2-medium,gpt2-large,gpt2-xl")
    parser.add_argument("--methods", default="neurtransformer,graded")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--train-context", type=int, default=128)
    args = parser.parse_args()
    unknown = [m for m in args.methods.split(",") if m not in METHODS] + \
              [m for m in args.models.split(",") if m not in ZOO]
    if unknown:
        parser.error(f"unknown method or GPT-2 size {', '.join(unknown)}: methods {', '.join(METHODS)}, "
                     f"sizes {', '.join(ZOO)}")
    tokenizer = shipped_tokenizer()
    calibration = calibration_windows(tokenizer, 64)[:2]
    ids = calibration_windows(tokenizer, args.train_context)[:args.batch_size]
    print(f"GiB; one step on {args.batch_size} x {args.train_context} tokens, every on-chip population trained "
          f"(scope all), T = 8 (graded T = 1)\n")
    print("| model | method | trained tensors | + gradients + Adam (what FSDP shards) | frozen graph | ANN | "
          "activations kept | activations, recomputed | total kept | total recomputed |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in args.models.split(","):
        for method in args.methods.split(","):
            one, two = (measure(size, method, n, ids, calibration) for n in (1, 2))
            c = at_depth(one, two, zoo_entry(size).config().n_layer)
            state = c["trained"] * (2 + ADAM_MOMENTS)
            fixed = state + c["graph"] + c["ann"]
            print(f"| {size} | {method} | {c['trained'] / GIB:.2f} | {state / GIB:.2f} | {c['graph'] / GIB:.2f} | "
                  f"{c['ann'] / GIB:.2f} | {c['kept'] / GIB:.2f} | {c['recomputed'] / GIB:.2f} | "
                  f"{(fixed + c['kept']) / GIB:.2f} | {(fixed + c['recomputed']) / GIB:.2f} |", flush=True)


if __name__ == "__main__":
    main()
