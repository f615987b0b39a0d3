"""Fit a chip budget: each weight layer's width and pruned fraction chosen by its measured
sensitivity.

Loihi 2 holds 1- to 8-bit weights and sparse synapses, and a narrower or pruned layer takes fewer
bits of a core's synaptic memory (compiler/partition.py: the dense rule fitted to Intel's
compiler, the weight's bits + 8; a sparse synapse also names its target, an assumption). A
network's weight layers (the graded method's GradedDense, the rate-coded methods' on-chip Dense:
populations and readouts) differ in how much each cut costs, so the fit measures it: each layer
alone at each width of WIDTHS (8-bit dense elsewhere) and alone at each pruned fraction asked
(SPARSITIES unless told; at 8 bits), scored by the KL divergence of its fixed-point logits from the all-8-bit
dense network's on calibration text; a layer both narrowed and pruned is predicted by the sum of
its two KLs. Then, greedily, the cut of least KL per synapse bit saved is made, one layer one step
at a time, down to every layer at the narrowest width and the largest fraction: that path is the
frontier (the least predicted loss, taking the layers' KLs as adding up; in a rate-coded network
each above the layer's noise floor, the largest floor counted once: `noise_floors`). The layers'
losses add up only roughly, so the fit measures its candidates instead of trusting the sum: the
path's points and the uniform configurations (every layer alike), each with all its cuts at once
on the calibration text, and chooses, of those that fit the budget, the one that loses least.
With random weights there is no model to lose: the frontier is the uniform configurations.
Pruning is Wanda's (|w| * ||x|| on the calibration text) or magnitude's; a cut layer's rounding
GPTQ's (on the same text) or plain rounding to the nearest mantissa. Wanda
and GPTQ weigh a layer's graded inputs, so the rate-coded methods (whose inputs are spike trains and
whose populations share one unit with their thresholds) prune by magnitude and round to nearest.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from nxcompile.compiler.graph import Dense, GradedDense, GradedPrecision, SpikingGraph
from nxcompile.compiler.layers import network_from_graph
from nxcompile.compiler.partition import place
from nxcompile.compiler.quantize import on_grid, quantize
from nxcompile.compiler.targets import TARGETS, Target
from nxcompile.errors import UsageError

WIDTHS = (8, 6, 4, 3, 2)
SPARSITIES = (0.0, 0.6, 0.75, 0.9)       # below about 0.45 a sparse synapse saves nothing (its index)
UNBOUNDED = TARGETS["loihi2-sim"]          # Loihi 2's cores, as many chips as needed: the size of a choice


@dataclass(frozen=True)
class Budget:
    """What must hold the network: a target's chips, or fewer cores than it has."""
    target: Target
    cores: int | None = None
    packing: str = "intel"

    def holds(self, point: "FitPoint") -> bool:
        chips = self.target.chips if self.target.chips is not None else point.chips
        return point.chips <= chips and (self.cores is None or point.cores <= self.cores)

    def describe(self) -> str:
        return f"{self.cores:,} cores of {self.target.name}" if self.cores is not None else self.target.name


Cut = tuple[int, float]                    # a layer's (weight bits, pruned fraction)


@dataclass
class FitPoint:
    """One configuration on the frontier: each layer's cut, the predicted loss (summed KLs) and its size."""
    cuts: dict[str, Cut]
    predicted_kl: float
    cores: int
    chips: int
    pruning: str = "magnitude"
    rounding: str = "nearest"
    uniform: bool = False          # every layer alike, placed beside the path
    kv_bits: int = GradedPrecision.kv_bits   # the graded method's KV cache, the same at every point
    calibration_kl: float = float("nan")      # all its cuts at once, on the calibration text
    measured: object = None        # sim.evaluate.Evaluation, when scored on held-out text

    def precision(self) -> GradedPrecision:
        return GradedPrecision(layer_weight_bits=tuple((n, b) for n, (b, _) in self.cuts.items() if b != 8),
                               layer_sparsity=tuple((n, f) for n, (_, f) in self.cuts.items() if f > 0),
                               pruning=self.pruning, rounding=self.rounding, kv_bits=self.kv_bits)

    def describe(self) -> str:
        widths = {w: sum(b == w for b, _ in self.cuts.values()) for w in WIDTHS}
        pruned = sorted(Counter(f for _, f in self.cuts.values() if f > 0).items())
        return ", ".join([f"{n} at {w} bits" for w, n in widths.items() if n]
                         + [f"{n} pruned {100 * f:.0f} %" for f, n in pruned])


@dataclass
class Fit:
    points: list[FitPoint]
    chosen: FitPoint | None
    sensitivity: dict[tuple[str, int, float], float] = field(default_factory=dict)
    measurable: bool = True
    input_grams: dict[str, torch.Tensor] = field(default_factory=dict)    # Wanda's, to quantise a point

    def quantised(self, spiking: SpikingGraph, point: FitPoint, target: Target = UNBOUNDED) -> SpikingGraph:
        """`spiking` quantised for `target` as `point` cuts it."""
        return quantize(spiking, target, point.precision(), self.input_grams)

    def cut_graph(self, spiking: SpikingGraph, point: FitPoint) -> SpikingGraph:
        """`spiking` with each layer's weights pruned and rounded as `point` cuts them (float units)
        and that grid recorded: what `finetune --graph` recovers from and `export` deploys."""
        cut = spiking.copy()
        if graded(spiking):          # the quantiser keeps graded weights in float units (Wanda's, GPTQ's)
            quantised = self.quantised(spiking, point)
            weights = {name: quantised.op(name).weight for name in cut_layers(spiking)}
        else:                        # a rate-coded layer's quantised weights are in state units
            weights = {name: on_grid(spiking.op(name), UNBOUNDED, *point.cuts[name]).weight
                       for name in cut_layers(spiking)}
        for name, weight in weights.items():
            cut.graph.nodes[name]["op"] = dataclasses.replace(spiking.op(name), weight=weight)
        return cut.with_weight_grid(point.precision())


def cut_layers(spiking: SpikingGraph) -> list[str]:
    """The on-chip layers whose weights a width and a pruned fraction apply to."""
    return [n for n in spiking.order()
            if isinstance(spiking.op(n), (GradedDense, Dense)) and not spiking.graph.nodes[n]["host"]]


def graded(spiking: SpikingGraph) -> bool:
    """Whether the graph is the graded method's (its layers' inputs graded values, not spike trains)."""
    return spiking.meta["options"]["method"] == "graded"


def check_kv_bits(spiking: SpikingGraph, kv_bits: int) -> int:
    """A KV cache width asked for this graph: the graded method's keys and values are graded payloads;
    a rate-coded method's are spikes, which have no width to choose."""
    if not graded(spiking):
        raise UsageError(f"--kv-bits sets the graded method's KV cache; the {spiking.meta['options']['method']} "
                         f"method caches spikes (use --method graded, or leave --kv-bits out)")
    return kv_bits


def default_choices(spiking: SpikingGraph) -> tuple[str, str]:
    """(pruning, rounding) the fit uses unless told: Wanda and GPTQ for the graded method's graded
    inputs, magnitude and nearest for the rate-coded methods' spike trains."""
    return ("wanda", "gptq") if graded(spiking) else ("magnitude", "nearest")


def uniform_grid(spiking: SpikingGraph, bits: int, fraction: float, rounding: str = "nearest",
                 kv_bits: int = GradedPrecision.kv_bits) -> GradedPrecision:
    """Every weight layer at signed `bits` with `fraction` of each neuron's synapses pruned by magnitude;
    the graded method's KV cache at `kv_bits` (its synaptic memory is a fixed share of a long context's cores)."""
    return GradedPrecision(weight_bits=bits, kv_bits=kv_bits, rounding=rounding,
                           layer_sparsity=tuple((n, fraction) for n in cut_layers(spiking) if fraction))


def input_grams(spiking: SpikingGraph, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each graded layer's input Gram matrix X^T X over the tokens of `ids` (the float graph's
    values, float64): Wanda weighs a synapse's |w| by its diagonal's root, GPTQ rounds against it."""
    from nxcompile.sim.reference import run

    values = run(spiking, ids, None, keep_values=True).values
    grams = {}
    for name in cut_layers(spiking):
        x = values[spiking.inputs(name)["x"]].double().flatten(0, -2)
        grams[name] = x.T @ x
    return grams


def _log_probs(spiking: SpikingGraph, precision: GradedPrecision, ids: torch.Tensor,
               grams: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token log-probabilities [tokens, vocab] of `spiking` so cut, in Loihi's integers."""
    from nxcompile.sim import fixed_point

    quantised = quantize(spiking, UNBOUNDED, precision, grams)
    timesteps = int(spiking.meta["options"]["timesteps"])
    logits = torch.cat([fixed_point.run(quantised, window[None], timesteps).logits for window in ids]).flatten(0, 1)
    return F.log_softmax(logits.double(), -1)


def _kl(reference: torch.Tensor, spiking: SpikingGraph, precision: GradedPrecision, ids: torch.Tensor,
        grams: dict[str, torch.Tensor]) -> float:
    """KL(all 8 bits dense || `precision`'s cut), mean over the tokens of `ids`."""
    cut = _log_probs(spiking, precision, ids, grams)
    return float(F.kl_div(cut, reference, log_target=True, reduction="batchmean"))


def _single_cuts(spiking: SpikingGraph, sparsities: tuple[float, ...]) -> list[tuple[str, int, float]]:
    """Each layer at each narrower width (dense), and at each pruned fraction (8 bits)."""
    return [(name, bits, 0.0) for name in cut_layers(spiking) for bits in WIDTHS[1:]] + \
        [(name, WIDTHS[0], f) for name in cut_layers(spiking) for f in sparsities[1:]]


def sensitivity(spiking: SpikingGraph, ids: torch.Tensor, pruning: str, rounding: str,
                grams: dict[str, torch.Tensor], sparsities: tuple[float, ...] = SPARSITIES, progress=None,
                reference: torch.Tensor | None = None) -> dict[tuple[str, int, float], float]:
    """KL(all 8 bits dense || one layer cut) per (layer, bits, pruned fraction), mean over the tokens of `ids`;
    `reference`: the uncut network's log-probabilities on them (`_log_probs`), if already computed."""
    reference = reference if reference is not None else _log_probs(spiking, GradedPrecision(), ids, grams)
    cases = _single_cuts(spiking, sparsities)
    measured = {}
    for name, bits, fraction in (progress(cases) if progress else cases):
        cut = GradedPrecision(layer_weight_bits=((name, bits),), layer_sparsity=((name, fraction),), pruning=pruning,
                              rounding=rounding)
        measured[(name, bits, fraction)] = _kl(reference, spiking, cut, ids, grams)
    return measured


def noise_floors(spiking: SpikingGraph, measured: dict[tuple[str, int, float], float]) -> dict[str, float]:
    """Each layer's KL from any change at all to it. In a rate-coded network a population whose spikes
    move a little moves every later population's spike times, so every single cut's KL carries the
    same floor, and floors do not add up when several layers are cut (gpt2-tiny's NeurTransformer
    on 512 tokens: each layer alone at 6 bits 0.0004 to 0.019, all 24 at once 0.029, where their sum
    is 0.25). Taken as the least KL measured for the layer; none for the graded method, whose values
    move smoothly with its weights."""
    if graded(spiking):
        return {}
    floors: dict[str, float] = {}
    for (name, _, _), kl in measured.items():
        floors[name] = min(kl, floors.get(name, kl))
    return floors


def predicted_kl(measured: dict[tuple[str, int, float], float], name: str, cut: Cut, floor: float = 0.0) -> float:
    """A layer's KL with both cuts: its width's and its pruning's, each above the layer's noise floor, added."""
    bits, fraction = cut
    return sum(measured[key] - floor for key in ((name, bits, 0.0), (name, WIDTHS[0], fraction)) if key in measured)


def predicted_total(measured: dict[tuple[str, int, float], float], floors: dict[str, float],
                    cuts: dict[str, Cut]) -> float:
    """The network's KL: each cut layer's KL above its noise floor, added, and the largest floor among
    the cut layers once."""
    cut = [name for name, c in cuts.items() if c != (WIDTHS[0], 0.0)]
    return max((floors.get(name, 0.0) for name in cut), default=0.0) + sum(
        predicted_kl(measured, name, c, floors.get(name, 0.0)) for name, c in cuts.items())


def synapse_bits(cut: Cut, target: Target = UNBOUNDED) -> float:
    """The synaptic memory one synapse of a layer so cut takes, on average (partition's rule, unrounded)."""
    bits, fraction = cut
    dense = bits + target.synapse_overhead_bits
    return dense if fraction == 0 else min(dense, (1 - fraction) * (dense + target.sparse_index_bits))


def _placed(spiking: SpikingGraph, cuts: dict[str, Cut], kl: float, packing: str, pruning: str, rounding: str,
            grams: dict[str, torch.Tensor], uniform: bool = False, kv_bits: int = GradedPrecision.kv_bits) -> FitPoint:
    chosen = FitPoint(dict(cuts), kl, 0, 0, pruning, rounding, uniform, kv_bits=kv_bits)
    placement = place(network_from_graph(quantize(spiking, UNBOUNDED, chosen.precision(), grams)), UNBOUNDED,
                      packing)
    chosen.cores, chosen.chips = placement.cores_used, placement.chips_used
    return chosen


def _next_cuts(cut: Cut, sparsities: tuple[float, ...]) -> list[Cut]:
    bits, fraction = cut
    narrower = [(WIDTHS[WIDTHS.index(bits) + 1], fraction)] if bits != WIDTHS[-1] else []
    return narrower + [(bits, f) for f in sparsities if f > fraction]


def _greedy_path(spiking: SpikingGraph, measured: dict[tuple[str, int, float], float],
                 sparsities: tuple[float, ...], floors: dict[str, float]) -> list[dict[str, Cut]]:
    """Cuts from all 8-bit dense to all of the narrowest and most pruned, one layer one step at a
    time, the cheapest step in predicted KL (above the layer's noise floor) per synapse bit saved first."""
    cuts: dict[str, Cut] = {name: (WIDTHS[0], 0.0) for name in cut_layers(spiking)}
    synapses = {name: spiking.op(name).weight.numel() for name in cuts}
    path = [dict(cuts)]
    while True:
        steps = []
        for name, cut in cuts.items():
            for after in _next_cuts(cut, sparsities):
                saved = synapses[name] * (synapse_bits(cut) - synapse_bits(after))
                if saved > 0:
                    floor = floors.get(name, 0.0)
                    cost = predicted_kl(measured, name, after, floor) - predicted_kl(measured, name, cut, floor)
                    steps.append((max(cost, 0.0) / saved, name, after))
        if not steps:
            return path
        _, name, after = min(steps)
        cuts[name] = after
        path.append(dict(cuts))


def _uniform(spiking: SpikingGraph, sparsities: tuple[float, ...]) -> list[dict[str, Cut]]:
    """Every layer alike, each width at each pruned fraction, the largest synapse first (8 bits dense too)."""
    cuts = sorted({(b, f) for b in WIDTHS for f in sparsities}, key=lambda cut: (-synapse_bits(cut), cut))
    return [{name: cut for name in cut_layers(spiking)} for cut in cuts]


def fit(spiking: SpikingGraph, budget: Budget, ids: torch.Tensor | None, points: int = 12,
        pruning: str | None = "wanda", rounding: str = "gptq", progress=None,
        kv_bits: int = GradedPrecision.kv_bits, sparsities: tuple[float, ...] = SPARSITIES) -> Fit:
    """The frontier (at most `points` configurations placed, evenly along the path, then the uniform
    ones) and the choice for `budget`: of the configurations that fit it (the path's first under it
    among them), the one whose cuts, made all at once, lose least on the calibration text (KL
    measured, not predicted: the layers' KLs add up only roughly). `ids` None: weights are random,
    the frontier is the uniform configurations (pruned by magnitude, rounded to nearest) and the
    choice the first that fits. `pruning` None: widths only, every layer dense. `progress`: a
    progress bar over an iterable, given its description. `sparsities`: the pruned fractions a
    layer may take (dense always among them). `kv_bits`: the graded method's KV cache at
    every point (a long context's cache is a fixed share of the cores that no weight cut reduces);
    each candidate's measured KL includes its cost (the same at every point), the layers' single
    cuts are measured without it."""
    if not graded(spiking) and (pruning == "wanda" or rounding == "gptq"):
        raise UsageError(f"the {spiking.meta['options']['method']} method's layers are pruned by magnitude and "
                         f"rounded to nearest (--pruning magnitude --rounding nearest); Wanda and GPTQ weigh the "
                         f"graded method's inputs")
    sparsities = tuple(sorted({0.0, *sparsities})) if pruning is not None else (0.0,)
    if ids is None:
        frontier = [_placed(spiking, cuts, float("nan"), budget.packing, "magnitude", "nearest", {}, uniform=True,
                            kv_bits=kv_bits) for cuts in _uniform(spiking, sparsities)]
        return Fit(frontier, next((p for p in frontier if budget.holds(p)), None), measurable=False)
    pruning = pruning or "magnitude"
    grams = input_grams(spiking, ids) if rounding == "gptq" or (pruning == "wanda" and len(sparsities) > 1) else {}
    reference = _log_probs(spiking, GradedPrecision(), ids, grams)
    measured = sensitivity(spiking, ids, pruning, rounding, grams, sparsities, progress and progress("sensitivity"),
                           reference)
    floors = noise_floors(spiking, measured)
    path = _greedy_path(spiking, measured, sparsities, floors)

    def placed(step: int) -> FitPoint:
        return _placed(spiking, path[step], predicted_total(measured, floors, path[step]), budget.packing, pruning,
                       rounding, grams, kv_bits=kv_bits)

    picks = sorted({round(i * (len(path) - 1) / (points - 1)) for i in range(points)})
    frontier = {step: placed(step) for step in picks}
    fitting = [step for step in picks if budget.holds(frontier[step])]
    if fitting and fitting[0] > 0:              # the path's first step that fits, between two picks
        lo, hi = picks[picks.index(fitting[0]) - 1], fitting[0]
        while hi - lo > 1:
            middle = (lo + hi) // 2
            frontier[middle] = placed(middle)
            lo, hi = (lo, middle) if budget.holds(frontier[middle]) else (middle, hi)
    on_path = [frontier[step] for step in sorted(frontier)]
    uniform = [_placed(spiking, cuts, predicted_total(measured, floors, cuts), budget.packing, pruning, rounding,
                       grams, uniform=True, kv_bits=kv_bits) for cuts in _uniform(spiking, sparsities)
               if all(cuts != point.cuts for point in on_path)]
    candidates = on_path + uniform
    for point in (progress("candidates")(candidates) if progress else candidates):
        point.calibration_kl = _kl(reference, spiking, point.precision(), ids, grams)
    fitting_points = [p for p in candidates if budget.holds(p)]
    chosen = min(fitting_points, key=lambda p: (p.calibration_kl, p.cores)) if fitting_points else None
    return Fit(candidates, chosen, measured, input_grams=grams)
