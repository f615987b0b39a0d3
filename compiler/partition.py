"""Partitioning: every on-chip layer split into core-sized blocks, the blocks placed on cores and chips.

Costs and policy follow the Loihi 2 model of compiler/targets.py, fitted to Intel's own
compiler logs (synapse words per input axon, kernels once per core, < 4,096 neurons).

1. Split. A layer whose single output unit (a neuron; a head; a conv column) cannot
   fit a core with all of its inputs is split by input into the fewest equal
   parts that fit (dense: input features; attention: the tokens of the KV cache;
   conv: input channels). Each part's blocks then send partial sums to added
   accumulator neurons, `<layer>+acc`, which are blocks like any other and are
   reported. Output units are then cut into blocks: `intel` packing (the default)
   as Intel's compiler does (conv and input layers in power-of-two column tiles,
   other layers on k cores, k multiplied by the largest ratio of need to limit
   until every core fits); `tight` packing into the largest blocks that fit.
2. Place. Blocks, in topological order, go onto the current chip: `intel` gives
   every block a core of its own (the logs show no two layers on one core),
   `tight` fits each into the first open core with room; a new chip when the chip
   is full. Consecutive layers therefore share a chip, which keeps spikes between
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

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from nxcompile.compiler.layers import LayerSpec, Network
from nxcompile.compiler.targets import CONV_INPUT_AXONS, TARGETS, Target
from nxcompile.compiler.validate import validate
from nxcompile.errors import NxError
from nxcompile.files import save_figure, write_atomically

HOST = "host"  # pseudo source of a layer with no on-graph inputs (one-hot tokens)
RESOURCES = ("neurons", "synapse words", "input axons")


class DoesNotFit(NxError):
    """The network cannot be placed on the target."""


@dataclass(frozen=True)
class Block:
    """Output neurons [start, stop) of `layer` for input part `part` of `parts`,
    on global core `core` of chip `chip`. `inputs` are the source neuron ranges
    it reads; `neurons`, `synapse_words`, `axons` what the partitioner booked."""
    layer: str
    role: str                      # "neurons" | "partial" | "accumulator"
    start: int
    stop: int
    part: int
    parts: int
    inputs: tuple[tuple[str, int, int], ...]
    neurons: int
    synapse_words: int
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
    packing: str = "intel"

    def core_usage(self, target: Target) -> np.ndarray:
        """[cores_used, 3] fractions of neurons, synaptic memory and input axons booked on each core."""
        usage = np.zeros((self.cores_used, 3))
        for b in self.blocks:
            usage[b.core] += (b.neurons, b.synapse_words, b.axons)
        return usage / capacity(target)

    def cores_per_layer(self) -> dict[str, int]:
        """How many cores each layer's blocks (its accumulators apart) occupy."""
        cores: dict[str, set[int]] = {}
        for b in self.blocks:
            cores.setdefault(b.layer, set()).add(b.core)
        return {layer: len(used) for layer, used in cores.items()}

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

    @staticmethod
    def from_data(data: dict) -> "Placement":
        """A placement read back from a file (`as_data`)."""
        blocks = [Block(**{**b, "inputs": tuple(tuple(read) for read in b["inputs"])}) for b in data["blocks"]]
        return Placement(**{**data, "blocks": blocks})

    def format(self, network: Network, target: Target, per_core: bool = False,
               earlier_stages: dict[str, float] | None = None) -> str:
        """The partition report: cores, bound, utilisation, traffic, time per stage (those before
        partitioning, `earlier_stages`, first)."""
        usage = self.core_usage(target)
        rates = "measured" if any(layer.rate_measured for layer in network.chip_layers()) else "estimated"
        stages = {**(earlier_stages or {}), **self.seconds}
        lines = [
            f"network      {network.source} ({len(network.chip_layers())} layers on chip, "
            f"{len(self.host_layers)} on the host: {', '.join(self.host_layers) or '-'})",
            f"target       {target.name}: {target.description}",
            f"cores used   {self.cores_used:,} on {self.chips_used} chip(s), {self.packing} packing",
            f"lower bound  {self.lower_bound_cores:,} cores (total neurons and synapse words over one "
            f"core's); used / bound = {self.cores_used / self.lower_bound_cores:.3f}",
            "cores per layer " + ", ".join(f"{layer}: {n}" for layer, n in self.cores_per_layer().items()),
            f"blocks       {len(self.blocks):,}; {len(self.accumulators)} layer(s) split by input "
            f"({', '.join(f'{k} x{v}' for k, v in self.accumulators.items()) or 'none'}), "
            f"adding {self.accumulator_neurons():,} accumulator neurons",
            "",
            "utilisation per chip (per core: --per-core)",
            *self._utilisation_table(usage),
            "",
            f"traffic per token ({rates} spike rates; messages = spikes or graded payloads)",
            *(f"  {key.replace('_', ' '):28} {value:>16,.0f}" for key, value in self.traffic.items()),
            "",
            "time per stage",
            *(f"  {stage:28} {sec:8.2f} s" for stage, sec in stages.items()),
        ]
        if per_core:
            chips = self.chip_of_core()
            lines += ["", f"{'core':>6} {'chip':>5}  " + "  ".join(f"{r + ' %':>18}" for r in RESOURCES)]
            lines += [f"{core:>6} {chips[core]:>5}  " + "  ".join(f"{100 * x:>18.1f}" for x in row)
                      for core, row in enumerate(usage)]
        return "\n".join(lines)

    def _utilisation_table(self, usage: np.ndarray) -> list[str]:
        chips = self.chip_of_core()
        lines = [f"{'chip':>5} {'cores':>6}  " + "  ".join(f"{r + ' % (min/mean/max)':>34}" for r in RESOURCES)]
        for chip in range(self.chips_used):
            u = usage[chips == chip] * 100
            lines.append(f"{chip:>5} {len(u):>6}  " + "  ".join(
                f"{u[:, i].min():>10.1f} {u[:, i].mean():>10.1f} {u[:, i].max():>11.1f}" for i in range(3)))
        return lines

    def plot(self, target: Target, path: Path) -> None:
        """Heat-map of each resource's use on every core, one row per chip (PNG)."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        usage = self.core_usage(target)
        chips = self.chip_of_core()
        first_core = np.searchsorted(chips, np.arange(self.chips_used))   # cores are numbered chip by chip
        grid = np.full((3, self.chips_used, target.cores_per_chip), np.nan)
        for core, row in enumerate(usage):
            grid[:, chips[core], core - first_core[chips[core]]] = row * 100
        figure, axes = plt.subplots(3, 1, figsize=(10, 4 + 0.9 * min(self.chips_used, 40)), squeeze=False)
        for i, resource in enumerate(RESOURCES):
            ax = axes[i, 0]
            image = ax.imshow(grid[i], aspect="auto", vmin=0, vmax=100, cmap="viridis", interpolation="nearest")
            ax.set_title(f"{resource} used (%)", fontsize=9)
            ax.set_ylabel("chip")
            figure.colorbar(image, ax=ax)
        axes[-1, 0].set_xlabel("core on chip")
        figure.suptitle(f"{self.source} on {target.name}: {self.cores_used:,} cores", fontsize=10)
        figure.tight_layout()
        save_figure(figure, path)


# --- what a block of each layer kind needs ------------------------------------
# Costs follow compiler/targets.py's Loihi 2 model, fitted to Intel's compiler logs: a dense
# synapse takes its signed weight bits plus `synapse_overhead_bits` in words of
# `synapse_word_bits`, packed per input axon; a pruned layer's axon stores only its kept synapses,
# each also naming its target (`sparse_index_bits`), where that is smaller (an assumption:
# docs/calibration.md); conv kernels are stored once per core.

def _part_range(length: int, part: int, parts: int) -> tuple[int, int]:
    """Part `part` of `parts` near-equal contiguous pieces of range(length)."""
    return part * length // parts, (part + 1) * length // parts


def synapse_words(targets: int, weight_bits: int, target: Target, density: float = 1.0) -> int:
    """Words one input axon's synapses to `targets` neurons of a core take, a `density` of them kept."""
    dense = -(-targets * (weight_bits + target.synapse_overhead_bits) // target.synapse_word_bits)
    if density >= 1.0:
        return dense
    kept = math.ceil(density * targets)
    return min(dense, -(-kept * (weight_bits + target.synapse_overhead_bits + target.sparse_index_bits)
                        // target.synapse_word_bits))


def weight_bits(layer: LayerSpec, target: Target) -> int:
    """A layer's signed weight bits: its own where known (netx files, quantised graphs), else the target's."""
    return layer.params.get("weight_bits") or target.weight_mantissa_bits


def _dense(layer, units, part, parts, target):
    lo, hi = _part_range(layer.params["in_features"], part, parts)
    sources = layer.inputs or (HOST,)
    n = units[1] - units[0]
    words = (hi - lo) * synapse_words(n, weight_bits(layer, target), target, layer.params.get("density", 1.0))
    return n, words, hi - lo, tuple((s, lo, hi) for s in sources)


def _elementwise(layer, units, part, parts, target):
    n = units[1] - units[0]
    ports = len(layer.inputs)
    return n, ports * n * synapse_words(1, weight_bits(layer, target), target), ports * n, \
        tuple((s, *units) for s in layer.inputs)


def _norm(layer, units, part, parts, target):
    """Each output neuron reads its input feature; two statistic neurons per block (mean and
    variance) read every feature: an in-block feature's axon reaches 3 neurons, any other 2."""
    features = layer.params["features"]
    n = units[1] - units[0]
    bits = weight_bits(layer, target)
    words = n * synapse_words(3, bits, target) + (features - n) * synapse_words(2, bits, target)
    return n + 2, words, features, tuple((s, 0, features) for s in layer.inputs)


def _attention(layer, units, part, parts, target):
    """A head's cached keys and values, for its part of the KV cache's tokens (x steps per token):
    each cached token-step holds the head's keys and values at implied positions, kv_bits each."""
    p = layer.params
    first_token, end_token = _part_range(p["kv_capacity"], part, parts)
    heads = units[1] - units[0]
    lo, hi = units[0] * p["head_dim"], units[1] * p["head_dim"]
    entries = -(-2 * p["head_dim"] * p["kv_bits"] // target.array_word_bits)
    return hi - lo, heads * (end_token - first_token) * p["timesteps"] * entries, 3 * (hi - lo), \
        tuple((s, lo, hi) for s in layer.inputs)


def _columns(layer, units) -> int:
    """Neurons of a block of whole output columns (every row and channel)."""
    c, h, _ = layer.params["out_shape"]
    return (units[1] - units[0]) * h * c


def _conv(layer, units, part, parts, target):
    """Unit = one output column, every row and channel (Intel's compiler tiles convs in columns);
    the kernels of all output channels for the part's input channels are stored once per core,
    and the input arrives through CONV_INPUT_AXONS axons."""
    p = layer.params
    c_in, h_in, w_in = p["in_shape"]
    c_out = p["out_shape"][0]
    (kh, kw), (_, sx), (_, px), (_, dx) = p["kernel"], p["stride"], p["padding"], p["dilation"]
    first_col = min(w_in, max(0, units[0] * sx - px))       # a padded edge column may read no input at all
    end_col = max(first_col, min(w_in, (units[1] - 1) * sx - px + dx * (kw - 1) + 1))
    ci0, ci1 = _part_range(c_in, part, parts)
    if (ci0, ci1) == (0, c_in):
        inputs = tuple((s, first_col * h_in * c_in, end_col * h_in * c_in) for s in layer.inputs)
    else:
        inputs = tuple((s, (col * h_in + r) * c_in + ci0, (col * h_in + r) * c_in + ci1) for s in layer.inputs
                       for col in range(first_col, end_col) for r in range(h_in))
    kernel_words = (ci1 - ci0) * kh * kw * -(-c_out * weight_bits(layer, target) // target.array_word_bits)
    return _columns(layer, units), kernel_words, CONV_INPUT_AXONS, inputs


def _input(layer, units, part, parts, target):
    """An on-chip input layer: neurons driven by their bias (or the host), no synapses."""
    return (_columns(layer, units) if "out_shape" in layer.params else units[1] - units[0]), 0, 0, ()


def _whole_columns(layer) -> int:
    c, h, _ = layer.params["out_shape"]
    return h * c


# kind -> (cost of a block, neurons per output unit, most input parts)
KIND_RULES = {
    "dense": (_dense, lambda l: 1, lambda l: l.params["in_features"]),
    "elementwise": (_elementwise, lambda l: 1, lambda l: 1),
    "norm": (_norm, lambda l: 1, lambda l: 1),
    "attention": (_attention, lambda l: l.params["head_dim"], lambda l: l.params["kv_capacity"]),
    "conv": (_conv, _whole_columns, lambda l: l.params["in_shape"][0]),
    "input": (_input, lambda l: _whole_columns(l) if "out_shape" in l.params else 1, lambda l: 1),
}
COLUMN_KINDS = ("conv", "input")       # tiled in power-of-two columns by Intel's compiler
PACKINGS = ("intel", "tight")


def _booking(layer: LayerSpec, units: tuple[int, int], part: int, parts: int, target: Target):
    """(neurons, synapse words, input axons, inputs) of a block, and the limits it exceeds."""
    cost, _, _ = KIND_RULES[layer.kind]
    neurons, words, axons, inputs = cost(layer, units, part, parts, target)
    over = [(need, have, unit) for need, have, unit in (
        (neurons, target.neurons_per_core, "neurons"),
        (words, target.synapse_words_per_core, "words of synaptic memory"),
        (axons, target.input_axons_per_core, "input axons")) if need > have]
    return (neurons, words, axons, inputs), over


def _block(layer: LayerSpec, role: str, units: tuple[int, int], part: int, parts: int,
           target: Target) -> Block | None:
    """The block of output units [u0, u1) and input part, or None if it exceeds a core."""
    (neurons, words, axons, inputs), over = _booking(layer, units, part, parts, target)
    if over:
        return None
    size = KIND_RULES[layer.kind][1](layer)
    return Block(layer.name, role, units[0] * size, units[1] * size, part, parts, inputs,
                 neurons, words, axons)


def _too_big(layer: LayerSpec, target: Target) -> str:
    _, over = _booking(layer, (0, 1), 0, KIND_RULES[layer.kind][2](layer), target)
    what = "; ".join(f"{need:,} {unit} where a core has {have:,} ({need / have:.2f}x)"
                     for need, have, unit in over)
    return f"layer {layer.name}: even its smallest piece needs {what} on {target.name}"


def _units(layer: LayerSpec) -> int:
    return layer.neurons // KIND_RULES[layer.kind][1](layer)


def _tight_blocks(layer: LayerSpec, role: str, part: int, parts: int, target: Target) -> list[Block]:
    """Greedy cut of all output units into the largest blocks that fit."""
    units = _units(layer)
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


def _equal_blocks(layer: LayerSpec, role: str, part: int, parts: int, size: int, target: Target) -> list[Block] | None:
    """Output units dealt `size` per block (the last takes the rest); None if the first, largest, does not fit."""
    units = _units(layer)
    blocks = [_block(layer, role, (start, min(start + size, units)), part, parts, target)
              for start in range(0, units, size)]
    return None if any(b is None for b in blocks) else blocks


def _intel_blocks(layer: LayerSpec, role: str, part: int, parts: int, target: Target) -> list[Block]:
    """Intel's compiler ([Log], compiler/targets.py): conv and input layers in tiles of the most
    columns, a power of two, that fit a core; other layers on k cores, k multiplied by the largest
    ratio of need to limit until every core fits (1 -> 6 -> 12 for PilotNet's 2,560 -> 100)."""
    units = _units(layer)
    if layer.kind in COLUMN_KINDS:
        width = 1 << (units.bit_length() - 1) if units else 1
        while width >= 1:
            blocks = _equal_blocks(layer, role, part, parts, width, target)
            if blocks is not None:
                return blocks
            width //= 2
        raise DoesNotFit(_too_big(layer, target))
    cores = 1
    while True:
        size = -(-units // cores)
        (neurons, words, axons, _), over = _booking(layer, (0, size), part, parts, target)
        if not over:
            return _equal_blocks(layer, role, part, parts, size, target)
        if size == 1:
            raise DoesNotFit(_too_big(layer, target))
        cores = min(units, cores * max(math.ceil(need / have) for need, have, _ in over))


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


def split_layers(network: Network, target: Target, packing: str = "intel") -> tuple[list[Block], dict[str, int]]:
    """All blocks of all on-chip layers, in topological order, and which layers were split by input."""
    blocks_of = _intel_blocks if packing == "intel" else _tight_blocks
    blocks: list[Block] = []
    split: dict[str, int] = {}
    for layer in network.chip_layers():
        parts = input_parts(layer, target)
        role = "neurons" if parts == 1 else "partial"
        for part in range(parts):
            blocks += blocks_of(layer, role, part, parts, target)
        if parts > 1:
            split[layer.name] = parts
            blocks += blocks_of(accumulator_layer(layer, parts), "accumulator", 0, 1, target)
    return blocks, split


def capacity(target: Target) -> np.ndarray:
    """A core's neurons, synapse words and input axons."""
    return np.array([target.neurons_per_core, target.synapse_words_per_core, target.input_axons_per_core],
                    dtype=np.int64)


def place_blocks(blocks: list[Block], target: Target, packing: str = "intel") -> list[Block]:
    """Blocks onto cores, chip by chip: `intel` gives every block a core of its own (Intel's compiler
    put no two layers on one core, [Log]); `tight` fits each into the first open core with room."""
    limits = capacity(target)
    free = np.empty((0, 3), dtype=np.int64)   # free capacity of the current chip's open cores
    chip, first_core, placed = 0, 0, []
    for block in blocks:
        need = np.array([block.neurons, block.synapse_words, block.axons], dtype=np.int64)
        fits = np.flatnonzero((free >= need).all(axis=1)) if packing == "tight" else np.empty(0, dtype=np.int64)
        if fits.size:
            slot = int(fits[0])
        elif len(free) < target.cores_per_chip:
            free = np.vstack([free, limits])
            slot = len(free) - 1
        else:
            chip, first_core = chip + 1, first_core + len(free)
            free, slot = limits[None].copy(), 0
        free[slot] -= need
        placed.append(replace(block, core=first_core + slot, chip=chip))
    return placed


def lower_bound_cores(network: Network, target: Target) -> int:
    """Cores no placement can beat: total neurons and total synapse words over one core's."""
    neurons, words = 0, 0
    for layer in network.chip_layers():
        cost = KIND_RULES[layer.kind][0]
        booked_neurons, booked_words, _, _ = cost(layer, (0, _units(layer)), 0, 1, target)
        neurons, words = neurons + booked_neurons, words + booked_words
    return max(1, math.ceil(neurons / target.neurons_per_core), math.ceil(words / target.synapse_words_per_core))


def _outputs_index(blocks: list[Block]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each message source name, its blocks' (starts, stops, cores) sorted by first neuron."""
    index: dict[str, list[Block]] = {}
    for b in blocks:
        if b.role == "partial":
            name = f"{b.layer}#p{b.part}"
        elif b.role == "accumulator":
            name = b.layer.removesuffix("+acc")
        else:
            name = b.layer
        index.setdefault(name, []).append(b)
    sorted_blocks = ((n, sorted(bs, key=lambda b: b.start)) for n, bs in index.items())
    return {name: tuple(np.array([getattr(b, f) for b in bs], dtype=np.int64) for f in ("start", "stop", "core"))
            for name, bs in sorted_blocks}


def messages_per_neuron(network: Network, name: str) -> float:
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


def _expand_ranges(first: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(which range, index) for every index of the ranges [first[r], last[r]), in order."""
    counts = np.maximum(last - first, 0)
    which = np.repeat(np.arange(len(first)), counts)
    offsets = np.arange(len(which)) - np.repeat(np.cumsum(counts) - counts, counts)
    return which, first[which] + offsets


def _source_overlaps(starts: np.ndarray, stops: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    """For reads of neurons [lo, hi) from a source whose blocks cover [starts, stops):
    (read, source block, neurons read from that block) for every overlap, reads in order."""
    first = np.maximum(np.searchsorted(starts, lo, side="right") - 1, 0)
    last = np.searchsorted(starts, hi, side="left")
    read, block = _expand_ranges(first, last)
    overlap = np.minimum(hi[read], stops[block]) - np.maximum(lo[read], starts[block])
    keep = overlap > 0
    return read[keep], block[keep], overlap[keep]


def core_flows(network: Network, blocks: list[Block]) -> CoreFlows:
    """Every block's inputs traced to the blocks that send them, summed per core pair.
    Vectorised per source (gpt2-xl has tens of millions of core pairs); sums are taken
    in block order, so the totals do not depend on how the work is grouped."""
    outputs = _outputs_index(blocks)
    reads_by_source: dict[str, list[tuple[int, int, int, int]]] = {}   # (read in block order, lo, hi, core)
    for seq, (core, (source, lo, hi)) in enumerate((b.core, read) for b in blocks for read in b.inputs):
        reads_by_source.setdefault(source, []).append((seq, lo, hi, core))
    host_to_chip = 0.0
    order, codes, messages = [], [], []
    cores = 1 + max((b.core for b in blocks), default=-1)
    for source, reads in reads_by_source.items():
        ids, lo, hi, dst = np.array(reads, dtype=np.int64).T
        rate = messages_per_neuron(network, source)
        if source not in outputs:      # host layer or one-hot input
            host_to_chip += float(((hi - lo) * rate).sum())
            continue
        starts, stops, src = outputs[source]
        read, block, overlap = _source_overlaps(starts, stops, lo, hi)
        order.append(ids[read])
        codes.append(src[block] * cores + dst[read])
        messages.append(overlap * rate)
    order, codes, messages = (np.concatenate(a) if a else np.zeros(0) for a in (order, codes, messages))
    in_block_order = np.argsort(order, kind="stable")
    unique, inverse = np.unique(codes[in_block_order].astype(np.int64), return_inverse=True)
    chip_to_host = sum(network.layer(s).neurons * network.layer(s).messages_per_token
                       for layer in network.layers if layer.host
                       for s in layer.inputs if not network.layer(s).host)
    pairs = np.stack([unique // max(cores, 1), unique % max(cores, 1)], axis=1).reshape(-1, 2)
    totals = np.bincount(inverse, weights=messages[in_block_order], minlength=len(unique))
    return CoreFlows(pairs, totals.astype(np.float64), host_to_chip, chip_to_host)


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


def _chip_pair_traffic(chips: np.ndarray, src: np.ndarray, dst: np.ndarray, messages: np.ndarray,
                       crossing: np.ndarray) -> list[tuple[int, int]]:
    """Pairs of chips that exchange messages (`crossing` flags the flows between two chips),
    the heaviest first (ties: the lower chips)."""
    a, b = chips[src][crossing], chips[dst][crossing]
    n_chips = int(chips.max()) + 1
    codes, inverse = np.unique(np.minimum(a, b) * n_chips + np.maximum(a, b), return_inverse=True)
    traffic = np.bincount(inverse, weights=messages[crossing], minlength=len(codes))
    low, high = codes // n_chips, codes % n_chips
    order = np.lexsort((high, low, -traffic))
    return list(zip(low[order].tolist(), high[order].tolist()))


def _traffic_among(cores: np.ndarray, edge_start: np.ndarray, dst: np.ndarray, messages: np.ndarray,
                   n_cores: int) -> np.ndarray:
    """[n, n] symmetric messages among `cores` (ascending), from the flows leaving each of
    them (`edge_start` indexes the flows, sorted by source core, by core)."""
    local = np.full(n_cores, -1)
    local[cores] = np.arange(len(cores))
    owner, edges = _expand_ranges(edge_start[cores], edge_start[cores + 1])
    inside = local[dst[edges]] >= 0
    weights = np.zeros((len(cores), len(cores)))
    np.add.at(weights, (owner[inside], local[dst[edges[inside]]]), messages[edges[inside]])
    weights = weights + weights.T
    np.fill_diagonal(weights, 0.0)
    return weights


def refine_chips(flows: CoreFlows, chip_of_core: np.ndarray, sweeps: int = 3) -> np.ndarray:
    """Moves cores (with everything on them) between chips to cut the rate-weighted
    traffic that crosses chips: pairwise Kernighan-Lin over every pair of chips
    that exchange messages, heaviest pair first, for a few sweeps. Core counts per
    chip never change, so the placement stays valid."""
    chips = chip_of_core.copy()
    by_source = np.lexsort((flows.pairs[:, 1], flows.pairs[:, 0]))
    src, dst = flows.pairs[by_source, 0], flows.pairs[by_source, 1]
    messages = flows.messages[by_source]
    edge_start = np.searchsorted(src, np.arange(len(chips) + 1))
    for _ in range(sweeps):
        crossing = chips[src] != chips[dst]
        if not crossing.any():
            break
        before = float(messages[crossing].sum())
        for chip_a, chip_b in _chip_pair_traffic(chips, src, dst, messages, crossing):
            cores = np.flatnonzero((chips == chip_a) | (chips == chip_b))
            weights = _traffic_among(cores, edge_start, dst, messages, len(chips))
            on_a = _best_swaps(weights, chips[cores] == chip_a, len(cores) // 2)
            chips[cores] = np.where(on_a, chip_a, chip_b)
        after = float(messages[chips[src] != chips[dst]].sum())
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
    same_core = [t for t in TARGETS.values() if np.array_equal(capacity(t), capacity(failed))]
    sized = sorted((t for t in same_core if t.chips is not None and t.total_cores >= cores),
                   key=lambda t: t.total_cores)
    return sized[0].name if sized else next(t.name for t in same_core if t.chips is None)


def place(network: Network, target: Target, packing: str = "intel") -> Placement:
    """Split, place and measure, then check the placement independently (compiler.validate): the
    only way to a Placement, so none the validator rejects is ever returned. Raises DoesNotFit
    when the target is too small."""
    placement = _partition(network, target, packing)
    started = time.perf_counter()
    problems = validate(network, placement, target)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise NxError(f"placement on {target.name} is invalid: {problems[0]}{more}")
    placement.seconds["validate"] = time.perf_counter() - started
    return placement


def _partition(network: Network, target: Target, packing: str) -> Placement:
    """Split, place and measure; raises DoesNotFit when the target is too small."""
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    blocks, split = split_layers(network, target, packing)
    seconds["split"] = time.perf_counter() - started
    started = time.perf_counter()
    placed = place_blocks(blocks, target, packing)
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
                     [layer.name for layer in network.layers if layer.host], split, traffic, seconds, packing)
