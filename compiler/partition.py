"""Partitioning: every on-chip layer split into core-sized blocks, the blocks placed on cores and chips.

1. Split. A layer whose single output unit (a neuron; a head; a conv row) cannot
   fit a core with all of its inputs is split by input into the fewest equal
   parts that fit (dense: input features; attention: the tokens of the KV cache;
   conv: input channels). Each part's blocks then send partial sums to added
   accumulator neurons, `<layer>+acc`, which are blocks like any other and are
   reported. Output units are then cut greedily into the largest blocks that fit.
2. Place. Blocks, in topological order, go first-fit onto the open cores of the
   current chip, a new core when none has room, a new chip when the chip is
   full. Consecutive layers therefore share a chip, which keeps spikes between
   chips to the layer boundaries that a chip boundary must cut.
3. Refine. Messages per token between every pair of cores are traced from each
   source layer's measured or estimated message rate; whole cores then swap
   between chips (Kernighan-Lin, pair of chips by pair of chips) wherever that
   cuts the rate-weighted traffic crossing chips. A swap moves a core's
   contents as they are, so every core still fits.
4. Measure. Traffic per token between cores, between chips (before and after
   refinement) and to and from the host.

Deterministic: no randomness, and ties go to the lowest core index.
"""
from __future__ import annotations

import bisect
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from nxcompile.compiler.layers import LayerSpec, Network
from nxcompile.compiler.targets import TARGETS, Target
from nxcompile.errors import NxError
from nxcompile.files import write_atomically

HOST = "host"  # pseudo source of a layer with no on-graph inputs (one-hot tokens)


class DoesNotFit(NxError):
    """The network cannot be placed on the target."""


@dataclass(frozen=True)
class Block:
    """Output neurons [start, stop) of `layer` for input part `part` of `parts`,
    on global core `core` of chip `chip`. `inputs` are the source neuron ranges
    it reads; `neurons`, `synapse_bits`, `axons` what the partitioner booked."""
    layer: str
    role: str                      # "neurons" | "partial" | "accumulator"
    start: int
    stop: int
    part: int
    parts: int
    inputs: tuple[tuple[str, int, int], ...]
    neurons: int
    synapse_bits: int
    axons: int
    core: int = -1
    chip: int = -1


@dataclass
class Placement:
    """Where every block of a network runs, and what that costs."""
    target: str
    source: str
    blocks: list[Block]
    cores_used: int
    chips_used: int
    lower_bound_cores: int
    host_layers: list[str]
    accumulators: dict[str, int]           # layer -> input parts merged by its accumulator
    traffic: dict[str, float] = field(default_factory=dict)   # messages per token
    seconds: dict[str, float] = field(default_factory=dict)

    def core_usage(self, target: Target) -> np.ndarray:
        """[cores_used, 3] fractions of neurons, synaptic memory and input axons booked on each core."""
        usage = np.zeros((self.cores_used, 3))
        for b in self.blocks:
            usage[b.core] += (b.neurons, b.synapse_bits, b.axons)
        return usage / np.array([target.neurons_per_core, target.synaptic_memory_bits_per_core,
                                 target.input_axons_per_core])

    def chip_of_core(self) -> np.ndarray:
        """The chip each used core sits on."""
        return _chip_array(self.blocks, self.cores_used)

    def accumulator_neurons(self) -> int:
        return sum(b.stop - b.start for b in self.blocks if b.role == "accumulator")

    def as_data(self) -> dict:
        """The placement as plain data without its wall-clock timings, so files that store it
        are identical run to run."""
        data = asdict(self)
        data.pop("seconds")
        return data

    def save(self, path: Path) -> None:
        """JSON, written to a temporary name and renamed."""
        text = json.dumps(asdict(self))
        write_atomically(path, lambda tmp: tmp.write_text(text), "choose a writable path with free space")


# --- what a block of each layer kind needs ------------------------------------

def _part_range(length: int, part: int, parts: int) -> tuple[int, int]:
    """Part `part` of `parts` near-equal contiguous pieces of range(length)."""
    return part * length // parts, (part + 1) * length // parts


def _dense(layer, units, part, parts, weight_bits):
    lo, hi = _part_range(layer.params["in_features"], part, parts)
    sources = layer.inputs or (HOST,)
    n = units[1] - units[0]
    return n, n * (hi - lo) * weight_bits, tuple((s, lo, hi) for s in sources)


def _elementwise(layer, units, part, parts, weight_bits):
    n = units[1] - units[0]
    return n, n * len(layer.inputs) * weight_bits, tuple((s, *units) for s in layer.inputs)


def _norm(layer, units, part, parts, weight_bits):
    features = layer.params["features"]
    n = units[1] - units[0]
    # Each output neuron: its input, the mean and the variance; two statistic
    # neurons per block read every input.
    return n + 2, (3 * n + 2 * features) * weight_bits, tuple((s, 0, features) for s in layer.inputs)


def _attention(layer, units, part, parts, weight_bits):
    p = layer.params
    first_token, end_token = _part_range(p["kv_capacity"], part, parts)
    heads = units[1] - units[0]
    lo, hi = units[0] * p["head_dim"], units[1] * p["head_dim"]
    kv_bits = heads * (end_token - first_token) * p["timesteps"] * p["head_dim"] * 2 * p["kv_bits"]
    return hi - lo, kv_bits, tuple((s, lo, hi) for s in layer.inputs)


def _conv(layer, units, part, parts, weight_bits):
    """Unit = one output channel of one output row; a block stores the kernels of
    the channels it computes, for its part of the input channels."""
    p = layer.params
    c_in, h_in, w_in = p["in_shape"]
    c_out, _, w_out = p["out_shape"]
    (kh, kw), (sy, _), (py, _), (dy, _) = p["kernel"], p["stride"], p["padding"], p["dilation"]
    first_out_row, last_out_row = units[0] // c_out, (units[1] - 1) // c_out
    first_row = max(0, first_out_row * sy - py)
    end_row = min(h_in, last_out_row * sy - py + dy * (kh - 1) + 1)
    ci0, ci1 = _part_range(c_in, part, parts)
    inputs = tuple((s, (r * c_in + ci0) * w_in, (r * c_in + ci1) * w_in)
                   for s in layer.inputs for r in range(first_row, end_row))
    channels = min(c_out, units[1] - units[0])
    return (units[1] - units[0]) * w_out, channels * (ci1 - ci0) * kh * kw * weight_bits, inputs


# kind -> (cost of a block, neurons per output unit, most input parts)
KIND_RULES = {
    "dense": (_dense, lambda l: 1, lambda l: l.params["in_features"]),
    "elementwise": (_elementwise, lambda l: 1, lambda l: 1),
    "norm": (_norm, lambda l: 1, lambda l: 1),
    "attention": (_attention, lambda l: l.params["head_dim"], lambda l: l.params["kv_capacity"]),
    "conv": (_conv, lambda l: l.params["out_shape"][2], lambda l: l.params["in_shape"][0]),
}


def _booking(layer: LayerSpec, units: tuple[int, int], part: int, parts: int, target: Target):
    """(neurons, synapse bits, input axons, inputs) of a block, and the limits it exceeds."""
    cost, _, _ = KIND_RULES[layer.kind]
    neurons, bits, inputs = cost(layer, units, part, parts, target.weight_mantissa_bits)
    axons = sum(hi - lo for _, lo, hi in inputs)
    over = [(need, have, unit) for need, have, unit in (
        (neurons, target.neurons_per_core, "neurons"),
        (bits, target.synaptic_memory_bits_per_core, "bits of synaptic memory"),
        (axons, target.input_axons_per_core, "input axons")) if need > have]
    return (neurons, bits, axons, inputs), over


def _block(layer: LayerSpec, role: str, units: tuple[int, int], part: int, parts: int,
           target: Target) -> Block | None:
    """The block of output units [u0, u1) and input part, or None if it exceeds a core."""
    (neurons, bits, axons, inputs), over = _booking(layer, units, part, parts, target)
    if over:
        return None
    size = KIND_RULES[layer.kind][1](layer)
    return Block(layer.name, role, units[0] * size, units[1] * size, part, parts, inputs,
                 neurons, bits, axons)


def _too_big(layer: LayerSpec, target: Target) -> str:
    _, over = _booking(layer, (0, 1), 0, KIND_RULES[layer.kind][2](layer), target)
    what = "; ".join(f"{need:,} {unit} where a core has {have:,} ({need / have:.2f}x)"
                     for need, have, unit in over)
    return f"layer {layer.name}: even its smallest piece needs {what} on {target.name}"


def _blocks_of(layer: LayerSpec, role: str, part: int, parts: int, target: Target) -> list[Block]:
    """Greedy cut of all output units into the largest blocks that fit."""
    _, unit_size, _ = KIND_RULES[layer.kind]
    units = layer.neurons // unit_size(layer)
    blocks, start = [], 0
    while start < units:
        lo, hi = start + 1, units          # largest stop in [lo, hi] that fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if _block(layer, role, (start, mid), part, parts, target) is None:
                hi = mid - 1
            else:
                lo = mid
        block = _block(layer, role, (start, lo), part, parts, target)
        if block is None:
            raise DoesNotFit(_too_big(layer, target))
        blocks.append(block)
        start = lo
    return blocks


def input_parts(layer: LayerSpec, target: Target) -> int:
    """The fewest input parts for which one output unit fits a core: exact up to 8
    parts, then searched in steps of an eighth (a layer that needs so many is rare)."""
    _, _, max_parts = KIND_RULES[layer.kind]
    limit = max_parts(layer)
    parts = 1
    while parts <= limit:
        if all(_block(layer, "partial", (0, 1), p, parts, target) is not None for p in range(parts)):
            return parts
        parts = parts + 1 if parts < 8 else parts + max(1, parts // 8)
    raise DoesNotFit(_too_big(layer, target))


def accumulator_layer(layer: LayerSpec, parts: int) -> LayerSpec:
    """The neurons that add a split layer's `parts` partial sums."""
    return LayerSpec(name=f"{layer.name}+acc", kind="elementwise", neurons=layer.neurons,
                     inputs=tuple(f"{layer.name}#p{p}" for p in range(parts)), params={"ports": parts},
                     message_bits=layer.message_bits, messages_per_token=layer.messages_per_token,
                     rate_measured=layer.rate_measured)


def split_layers(network: Network, target: Target) -> tuple[list[Block], dict[str, int]]:
    """All blocks of all on-chip layers, in topological order, and which layers were split by input."""
    blocks: list[Block] = []
    split: dict[str, int] = {}
    for layer in network.chip_layers():
        parts = input_parts(layer, target)
        role = "neurons" if parts == 1 else "partial"
        for part in range(parts):
            blocks += _blocks_of(layer, role, part, parts, target)
        if parts > 1:
            split[layer.name] = parts
            blocks += _blocks_of(accumulator_layer(layer, parts), "accumulator", 0, 1, target)
    return blocks, split


def place_blocks(blocks: list[Block], target: Target) -> list[Block]:
    """First-fit onto the open cores of the current chip; a new chip when it is full."""
    capacity = np.array([target.neurons_per_core, target.synaptic_memory_bits_per_core,
                         target.input_axons_per_core], dtype=np.int64)
    free = np.empty((0, 3), dtype=np.int64)   # free capacity of the current chip's open cores
    chip, first_core, placed = 0, 0, []
    for block in blocks:
        need = np.array([block.neurons, block.synapse_bits, block.axons], dtype=np.int64)
        fits = np.flatnonzero((free >= need).all(axis=1))
        if fits.size:
            slot = int(fits[0])
        elif len(free) < target.cores_per_chip:
            free = np.vstack([free, capacity])
            slot = len(free) - 1
        else:
            chip, first_core = chip + 1, first_core + len(free)
            free, slot = capacity[None].copy(), 0
        free[slot] -= need
        placed.append(replace(block, core=first_core + slot, chip=chip))
    return placed


def lower_bound_cores(network: Network, target: Target) -> int:
    """Cores no placement can beat: total neurons and total synaptic memory over one core's."""
    neurons = sum(layer.neurons for layer in network.chip_layers())
    bits = 0
    for layer in network.chip_layers():
        cost, unit_size, _ = KIND_RULES[layer.kind]
        whole = (0, layer.neurons // unit_size(layer))
        bits += cost(layer, whole, 0, 1, target.weight_mantissa_bits)[1]
    return max(1, math.ceil(neurons / target.neurons_per_core),
               math.ceil(bits / target.synaptic_memory_bits_per_core))


def _outputs_index(blocks: list[Block]) -> dict[str, tuple[list[int], list[Block]]]:
    """For each message source name, its blocks sorted by first neuron (for range lookups)."""
    index: dict[str, list[Block]] = {}
    for b in blocks:
        if b.role == "partial":
            name = f"{b.layer}#p{b.part}"
        elif b.role == "accumulator":
            name = b.layer.removesuffix("+acc")
        else:
            name = b.layer
        index.setdefault(name, []).append(b)
    return {name: ([b.start for b in bs], bs) for name, bs in
            ((n, sorted(bs, key=lambda b: b.start)) for n, bs in index.items())}


def _rate(network: Network, name: str) -> float:
    """Messages per neuron per token sent by a message source."""
    if "#p" in name:  # a partial sum: one graded message per neuron per step
        return float(network.timesteps)
    layer = network.get(name)
    return layer.messages_per_token if layer is not None else 1.0


@dataclass
class CoreFlows:
    """Messages per token between cores: `pairs[i] = (source core, destination core)`
    carries `messages[i]`, plus what enters from and leaves to the host."""
    pairs: np.ndarray          # [n, 2] int64
    messages: np.ndarray       # [n] float64
    host_to_chip: float
    chip_to_host: float


def core_flows(network: Network, blocks: list[Block]) -> CoreFlows:
    """Every block's inputs traced to the blocks that send them, summed per core pair."""
    outputs = _outputs_index(blocks)
    flows: dict[tuple[int, int], float] = {}
    host_to_chip = 0.0
    for b in blocks:
        for source, lo, hi in b.inputs:
            rate = _rate(network, source)
            if source not in outputs:      # host layer or one-hot input
                host_to_chip += (hi - lo) * rate
                continue
            starts, source_blocks = outputs[source]
            i = max(0, bisect.bisect_right(starts, lo) - 1)
            while i < len(source_blocks) and source_blocks[i].start < hi:
                s = source_blocks[i]
                overlap = min(hi, s.stop) - max(lo, s.start)
                if overlap > 0:
                    key = (s.core, b.core)
                    flows[key] = flows.get(key, 0.0) + overlap * rate
                i += 1
    chip_to_host = sum(network.layer(s).neurons * network.layer(s).messages_per_token
                       for layer in network.layers if layer.host
                       for s in layer.inputs if not network.layer(s).host)
    pairs = np.array(sorted(flows), dtype=np.int64).reshape(-1, 2)
    messages = np.array([flows[tuple(p)] for p in pairs.tolist()], dtype=np.float64)
    return CoreFlows(pairs, messages, host_to_chip, chip_to_host)


def traffic_totals(flows: CoreFlows, chip_of_core: np.ndarray) -> dict[str, float]:
    """Messages per token crossing cores, chips and the host boundary."""
    src, dst = flows.pairs[:, 0], flows.pairs[:, 1]
    other_core = src != dst
    other_chip = chip_of_core[src] != chip_of_core[dst]
    return {"inter_core": float(flows.messages[other_core].sum()),
            "inter_chip": float(flows.messages[other_chip].sum()),
            "host_to_chip": flows.host_to_chip, "chip_to_host": flows.chip_to_host,
            "within_core": float(flows.messages[~other_core].sum())}


def _best_swaps(weights: np.ndarray, on_a: np.ndarray, max_swaps: int) -> np.ndarray:
    """Kernighan-Lin swaps between two chips' cores: `weights` [n, n] symmetric
    traffic among them, `on_a` which cores sit on chip A. Swaps the pair that
    cuts the most traffic while any swap cuts some (both chips keep their core
    counts, so every core's contents still fit); returns the new `on_a`."""
    on_a = on_a.copy()
    for _ in range(max_swaps):
        to_a = weights[:, on_a].sum(axis=1)
        to_b = weights[:, ~on_a].sum(axis=1)
        gain_of_moving = np.where(on_a, to_b - to_a, to_a - to_b)
        a, b = np.flatnonzero(on_a), np.flatnonzero(~on_a)
        gains = gain_of_moving[a][:, None] + gain_of_moving[b][None, :] - 2 * weights[np.ix_(a, b)]
        best = int(np.argmax(gains))          # ties: the lowest core indices
        if gains.size == 0 or gains.flat[best] <= 1e-9 * max(1.0, float(weights.sum())):
            break
        i, j = divmod(best, len(b))
        on_a[a[i]], on_a[b[j]] = False, True
    return on_a


def refine_chips(flows: CoreFlows, chip_of_core: np.ndarray, sweeps: int = 3) -> np.ndarray:
    """Moves cores (with everything on them) between chips to cut the rate-weighted
    traffic that crosses chips: pairwise Kernighan-Lin over every pair of chips
    that exchange messages, heaviest pair first, for a few sweeps. Core counts per
    chip never change, so the placement stays valid."""
    chips = chip_of_core.copy()
    src, dst = flows.pairs[:, 0], flows.pairs[:, 1]
    for _ in range(sweeps):
        crossing = chips[src] != chips[dst]
        if not crossing.any():
            break
        before = float(flows.messages[crossing].sum())
        pair_traffic: dict[tuple[int, int], float] = {}
        for a, b, m in zip(chips[src][crossing].tolist(), chips[dst][crossing].tolist(),
                           flows.messages[crossing].tolist()):
            key = (min(a, b), max(a, b))
            pair_traffic[key] = pair_traffic.get(key, 0.0) + m
        for chip_a, chip_b in sorted(pair_traffic, key=lambda k: (-pair_traffic[k], k)):
            cores = np.flatnonzero((chips == chip_a) | (chips == chip_b))
            local = np.full(len(chips), -1)
            local[cores] = np.arange(len(cores))
            inside = (local[src] >= 0) & (local[dst] >= 0)
            weights = np.zeros((len(cores), len(cores)))
            np.add.at(weights, (local[src[inside]], local[dst[inside]]), flows.messages[inside])
            weights = weights + weights.T
            np.fill_diagonal(weights, 0.0)
            on_a = _best_swaps(weights, chips[cores] == chip_a, len(cores) // 2)
            chips[cores] = np.where(on_a, chip_a, chip_b)
        after = float(flows.messages[chips[src] != chips[dst]].sum())
        if after > before * (1 - 1e-3):
            break
    return chips


def _chip_by_chip_numbering(chip_of_core: np.ndarray) -> np.ndarray:
    """New core index of each core, so that cores are numbered chip by chip again."""
    order = np.lexsort((np.arange(len(chip_of_core)), chip_of_core))
    new_index = np.empty_like(order)
    new_index[order] = np.arange(len(order))
    return new_index


def _chip_array(blocks: list[Block], cores: int) -> np.ndarray:
    chips = np.zeros(cores, dtype=np.int64)
    for b in blocks:
        chips[b.core] = b.chip
    return chips


def _target_that_fits(failed: Target, cores: int) -> str:
    """The smallest target with the same per-core limits and enough cores."""
    same_core = [t for t in TARGETS.values() if t.neurons_per_core == failed.neurons_per_core
                 and t.synaptic_memory_bits_per_core == failed.synaptic_memory_bits_per_core]
    sized = sorted((t for t in same_core if t.chips is not None and t.total_cores >= cores),
                   key=lambda t: t.total_cores)
    return sized[0].name if sized else next(t.name for t in same_core if t.chips is None)


def partition(network: Network, target: Target) -> Placement:
    """Split, place and measure; raises DoesNotFit when the target is too small."""
    seconds = {}
    started = time.perf_counter()
    blocks, split = split_layers(network, target)
    seconds["split"] = time.perf_counter() - started
    started = time.perf_counter()
    placed = place_blocks(blocks, target)
    seconds["place"] = time.perf_counter() - started
    cores = 1 + max((b.core for b in placed), default=-1)
    chips = 1 + max((b.chip for b in placed), default=-1)
    if target.chips is not None and chips > target.chips:
        first_out = next(b.layer for b in placed if b.chip >= target.chips)
        raise DoesNotFit(f"{network.source} needs {cores:,} cores on {chips} chips but {target.name} has "
                         f"{target.total_cores:,} cores on {target.chips} chip(s) ({cores - target.total_cores:,} "
                         f"cores short; the first layer left over is {first_out}); "
                         f"{_target_that_fits(target, cores)} would fit")
    started = time.perf_counter()
    flows = core_flows(network, placed)
    first_fit = _chip_array(placed, cores)
    refined = refine_chips(flows, first_fit)
    traffic = traffic_totals(flows, refined)
    traffic["inter_chip_before_refinement"] = traffic_totals(flows, first_fit)["inter_chip"]
    new_index = _chip_by_chip_numbering(refined)
    placed = [replace(b, core=int(new_index[b.core]), chip=int(refined[b.core])) for b in placed]
    seconds["refine chips"] = time.perf_counter() - started
    return Placement(target.name, network.source, placed, cores, chips, lower_bound_cores(network, target),
                     [layer.name for layer in network.layers if layer.host], split, traffic, seconds)
