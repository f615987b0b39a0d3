"""Independent check of a placement against the target's limits.

Shares nothing with the partitioner but the target data and the network
description: it ignores what the partitioner booked for each block and
recomputes, from each block's layer and neuron range alone, which source
neurons the block must receive, how much synaptic memory it holds and how many
neurons it occupies; then it sums those per core (counting a source neuron
received by two blocks of one core once, as the core's axon table does) and
compares with the limits. It also checks that every on-chip neuron is computed
exactly once per input part, that split layers have their accumulators, that
host layers are not on a core, and that every message fits the target's spikes.
"""
from __future__ import annotations

from collections import defaultdict

import math

import numpy as np

from nxcompile.compiler.layers import LayerSpec, Network
from nxcompile.compiler.targets import CONV_INPUT_AXONS, Target


def _fraction(total: int, index: int, count: int) -> tuple[int, int]:
    return (total * index) // count, (total * (index + 1)) // count


def _words(targets: int, weight_bits: int, target: Target, density: float = 1.0) -> int:
    """Synapse words of one input axon reaching `targets` neurons (targets.py's Loihi 2 format): the
    smaller of dense and, a `density` of synapses kept, sparse (each kept one indexed)."""
    dense_bits = targets * (weight_bits + target.synapse_overhead_bits)
    sparse_bits = math.ceil(targets * density) * (weight_bits + target.synapse_overhead_bits + target.sparse_index_bits)
    return math.ceil((dense_bits if density >= 1.0 else min(dense_bits, sparse_bits)) / target.synapse_word_bits)


def _needs(layer: LayerSpec, block, target: Target) -> tuple[int, int, dict[str, set]]:
    """(neurons, synapse words, {source: set of intervals}) block `block` of `layer` needs."""
    n = block.stop - block.start
    p = layer.params
    bits = p.get("weight_bits") or target.weight_mantissa_bits
    sources = layer.inputs or ("host",)
    if layer.kind == "dense":
        lo, hi = _fraction(p["in_features"], block.part, block.parts)
        return n, (hi - lo) * _words(n, bits, target, p.get("density", 1.0)), {s: {(lo, hi)} for s in sources}
    if layer.kind == "elementwise":
        return n, len(sources) * n * _words(1, bits, target), {s: {(block.start, block.stop)} for s in sources}
    if layer.kind == "norm":
        f = p["features"]
        return n + 2, n * _words(3, bits, target) + (f - n) * _words(2, bits, target), {s: {(0, f)} for s in sources}
    if layer.kind == "attention":
        hd = p["head_dim"]
        heads = set(range(block.start // hd, (block.stop - 1) // hd + 1))
        t0, t1 = _fraction(p["kv_capacity"], block.part, block.parts)
        words = len(heads) * (t1 - t0) * p["timesteps"] * math.ceil(2 * hd * p["kv_bits"] / target.array_word_bits)
        return n, words, {s: {(h * hd, (h + 1) * hd) for h in heads} for s in sources}
    if layer.kind == "conv":
        return _conv_needs(layer, block, bits, target)
    if layer.kind == "input":
        return n, 0, {}
    raise ValueError(f"unknown kind {layer.kind}")


def _conv_needs(layer: LayerSpec, block, bits: int, target: Target):
    """A conv block's neurons, and the kernels of every output channel for its input channels, stored
    once; its input arrives on CONV_INPUT_AXONS shared axons, whatever columns it reads."""
    p = layer.params
    c0, c1 = _fraction(p["in_shape"][0], block.part, block.parts)
    words = (c1 - c0) * p["kernel"][0] * p["kernel"][1] * math.ceil(p["out_shape"][0] * bits / target.array_word_bits)
    return block.stop - block.start, words, {}


def _union_length(intervals) -> int:
    total, end = 0, None
    for lo, hi in sorted(intervals):
        if end is None or lo > end:
            total += hi - lo
            end = hi
        elif hi > end:
            total += hi - end
            end = hi
    return total


def _check_coverage(layer: LayerSpec, blocks: list, problems: list[str]) -> None:
    """Each input part's blocks tile [0, neurons) exactly; split layers have accumulators."""
    parts = {b.parts for b in blocks if b.role != "accumulator"}
    if len(parts) != 1:
        problems.append(f"{layer.name}: blocks disagree on the number of input parts {sorted(parts)}")
        return
    count = parts.pop()
    groups = defaultdict(list)
    for b in blocks:
        groups["acc" if b.role == "accumulator" else b.part].append((b.start, b.stop))
    expected = list(range(count)) + (["acc"] if count > 1 else [])
    if sorted(groups, key=str) != sorted(expected, key=str):
        problems.append(f"{layer.name}: has blocks for parts {sorted(groups, key=str)}, "
                        f"needs {sorted(expected, key=str)}")
    for key, ranges in groups.items():
        covered = np.zeros(layer.neurons, dtype=np.int64)
        for lo, hi in ranges:
            if not 0 <= lo < hi <= layer.neurons:
                problems.append(f"{layer.name}: block [{lo}, {hi}) outside 0..{layer.neurons}")
                continue
            covered[lo:hi] += 1
        if (covered != 1).any():
            bad = int(np.flatnonzero(covered != 1)[0])
            problems.append(f"{layer.name} part {key}: neuron {bad} computed {int(covered[bad])} times")


def _check_messages(network: Network, target: Target, problems: list[str]) -> None:
    for layer in network.chip_layers():
        for source in layer.inputs:
            sender = network.get(source)
            bits = sender.message_bits if sender is not None else 1
            if bits > 1 and target.graded_payload_bits == 0:
                problems.append(f"{layer.name}: receives {bits}-bit graded messages from {source}, but "
                                f"{target.name} has binary spikes only (use a loihi2 target)")
            elif bits > max(1, target.graded_payload_bits):
                problems.append(f"{layer.name}: receives {bits}-bit graded messages from {source}; "
                                f"{target.name} carries at most {target.graded_payload_bits} bits")


def _layer_of_block(network: Network, name: str) -> LayerSpec | None:
    """The layer a block computes (an accumulator adds its base layer's partial sums)."""
    return network.get(name.removesuffix("+acc"))


def _accumulator_needs(base: LayerSpec, block, parts: int, target: Target):
    n = block.stop - block.start
    words = n * parts * _words(1, base.params.get("weight_bits") or target.weight_mantissa_bits, target)
    return n, words, {f"{base.name}#p{p}": {(block.start, block.stop)} for p in range(parts)}


def validate(network: Network, placement, target: Target) -> list[str]:
    """Every violated limit of `placement` on `target`, one line each (empty: valid)."""
    problems: list[str] = []
    by_layer = defaultdict(list)
    per_core = defaultdict(lambda: [0, 0, defaultdict(set)])
    conv_blocks: dict[int, int] = defaultdict(int)
    chip_of_core: dict[int, int] = {}
    parts_of = {b.layer: b.parts for b in placement.blocks if b.role == "partial"}
    for b in placement.blocks:
        layer = _layer_of_block(network, b.layer)
        if layer is None:
            problems.append(f"block of unknown layer {b.layer}")
            continue
        if layer.host:
            problems.append(f"{layer.name} is a host layer but has a block on core {b.core}")
            continue
        by_layer[layer.name].append(b)
        if b.role == "accumulator":
            neurons, words, sources = _accumulator_needs(layer, b, parts_of.get(layer.name, 1), target)
        else:
            neurons, words, sources = _needs(layer, b, target)
        conv_blocks[b.core] += layer.kind == "conv" and b.role != "accumulator"
        core = per_core[b.core]
        core[0] += neurons
        core[1] += words
        for source, intervals in sources.items():
            core[2][source] |= intervals
        if chip_of_core.setdefault(b.core, b.chip) != b.chip:
            problems.append(f"core {b.core} is listed on chips {chip_of_core[b.core]} and {b.chip}")
    for layer in network.chip_layers():
        if not by_layer[layer.name]:
            problems.append(f"{layer.name}: no block places it")
        else:
            _check_coverage(layer, by_layer[layer.name], problems)
    for core, (neurons, words, sources) in sorted(per_core.items()):
        axons = sum(_union_length(intervals) for intervals in sources.values()) + CONV_INPUT_AXONS * conv_blocks[core]
        for need, have, what in ((neurons, target.neurons_per_core, "neurons"),
                                 (words, target.synapse_words_per_core, "synapse words"),
                                 (axons, target.input_axons_per_core, "input axons")):
            if need > have:
                problems.append(f"core {core}: {need:,} {what}, limit {have:,} ({need / have:.2f}x)")
    _check_chips(chip_of_core, target, problems)
    _check_messages(network, target, problems)
    return problems


def _check_chips(chip_of_core: dict[int, int], target: Target, problems: list[str]) -> None:
    cores_on_chip = defaultdict(int)
    for core, chip in chip_of_core.items():
        cores_on_chip[chip] += 1
        if chip < 0 or core < 0:
            problems.append(f"core {core} is not placed on a chip")
    for chip, count in sorted(cores_on_chip.items()):
        if count > target.cores_per_chip:
            problems.append(f"chip {chip}: {count} cores, limit {target.cores_per_chip}")
    if target.chips is not None and len(cores_on_chip) > target.chips:
        problems.append(f"{len(cores_on_chip)} chips used, {target.name} has {target.chips}")
