"""Fit a chip budget: each graded layer's weight width chosen by its measured sensitivity.

Loihi 2 holds 1- to 8-bit weights, and a narrower synapse takes fewer bits of a core's
synaptic memory (the dense rule fitted to Intel's compiler: the weight's bits + 8). The
graded method's layers differ in how much narrowing costs, so the fit measures it: each
layer alone at each width of WIDTHS, every other layer at 8 bits, scored by the KL
divergence of its fixed-point logits from the all-8-bit network's on calibration text.
Then, greedily, the layer whose next narrower width costs the least KL per synapse bit
saved is narrowed, one step at a time down to every layer at the narrowest width, each
step placed on the target's cores: that path is the frontier, and the fit is its first
point that fits the budget (the least predicted loss, taking the layers' KLs as adding up).
With random weights there is no model to lose: the frontier is the uniform widths.
Not yet: sparsity (pruned synapses), error-aware rounding (plain rounding here).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from nxcompile.compiler.graph import GradedDense, GradedPrecision, SpikingGraph
from nxcompile.compiler.layers import network_from_graph
from nxcompile.compiler.partition import place
from nxcompile.compiler.quantize import quantize
from nxcompile.compiler.targets import TARGETS, Target
from nxcompile.errors import UsageError

WIDTHS = (8, 6, 4, 3, 2)
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


@dataclass
class FitPoint:
    """One configuration on the frontier: the widths, the predicted loss (summed KLs) and its size."""
    bits: dict[str, int]
    predicted_kl: float
    cores: int
    chips: int
    measured: object = None        # sim.evaluate.Evaluation, when scored on held-out text

    def precision(self) -> GradedPrecision:
        return GradedPrecision(layer_weight_bits=tuple((n, b) for n, b in self.bits.items() if b != 8))

    def describe(self) -> str:
        counts = {w: sum(b == w for b in self.bits.values()) for w in WIDTHS}
        return ", ".join(f"{n} at {w} bits" for w, n in counts.items() if n)


@dataclass
class Fit:
    points: list[FitPoint]
    chosen: FitPoint | None
    sensitivity: dict[tuple[str, int], float] = field(default_factory=dict)
    measurable: bool = True


def graded_layers(spiking: SpikingGraph) -> list[str]:
    """The on-chip layers whose weights a width applies to."""
    return [n for n in spiking.order() if isinstance(spiking.op(n), GradedDense) and not spiking.graph.nodes[n]["host"]]


def _logits(spiking: SpikingGraph, precision: GradedPrecision, ids: torch.Tensor) -> torch.Tensor:
    from nxcompile.sim import fixed_point

    return torch.cat([fixed_point.run(quantize(spiking, UNBOUNDED, precision), window[None], 1).logits
                      for window in ids]).flatten(0, 1)


def sensitivity(spiking: SpikingGraph, ids: torch.Tensor, progress=None) -> dict[tuple[str, int], float]:
    """KL(all 8 bits || one layer narrowed) per (layer, width), mean over the tokens of `ids`."""
    reference = F.log_softmax(_logits(spiking, GradedPrecision(), ids).double(), -1)
    cases = [(name, bits) for name in graded_layers(spiking) for bits in WIDTHS[1:]]
    measured = {}
    for name, bits in (progress(cases) if progress else cases):
        narrowed = F.log_softmax(_logits(spiking, GradedPrecision(layer_weight_bits=((name, bits),)), ids).double(), -1)
        measured[(name, bits)] = float(F.kl_div(narrowed, reference, log_target=True, reduction="batchmean"))
    return measured


def _placed(spiking: SpikingGraph, bits: dict[str, int], kl: float, packing: str) -> FitPoint:
    chosen = FitPoint(dict(bits), kl, 0, 0)
    placement = place(network_from_graph(quantize(spiking, UNBOUNDED, chosen.precision())), UNBOUNDED, packing)
    chosen.cores, chosen.chips = placement.cores_used, placement.chips_used
    return chosen


def _greedy_path(spiking: SpikingGraph, measured: dict[tuple[str, int], float]) -> list[dict[str, int]]:
    """Widths from all 8 down to all of the narrowest, one layer one step narrower at a time, the
    cheapest step in KL per synapse bit saved first."""
    bits = {name: WIDTHS[0] for name in graded_layers(spiking)}
    synapses = {name: spiking.op(name).weight.numel() for name in bits}
    path = [dict(bits)]
    while True:
        steps = []
        for name, width in bits.items():
            if width == WIDTHS[-1]:
                continue
            narrower = WIDTHS[WIDTHS.index(width) + 1]
            cost = measured[(name, narrower)] - measured.get((name, width), 0.0)
            steps.append((max(cost, 0.0) / (synapses[name] * (width - narrower)), name, narrower))
        if not steps:
            return path
        _, name, narrower = min(steps)
        bits[name] = narrower
        path.append(dict(bits))


def fit(spiking: SpikingGraph, budget: Budget, ids: torch.Tensor | None, points: int = 12,
        progress=None) -> Fit:
    """The frontier (at most `points` configurations placed, evenly along the path) and the first
    that fits `budget`. `ids` None: weights are random, the frontier is the uniform widths."""
    if spiking.meta["options"]["method"] != "graded":
        raise UsageError("fit chooses each layer's weight width for the graded method (--method graded); the "
                         "rate-coded methods' populations are not narrowed yet")
    layers = graded_layers(spiking)
    if ids is None:
        frontier = [_placed(spiking, {n: w for n in layers}, float("nan"), budget.packing) for w in WIDTHS]
        return Fit(frontier, next((p for p in frontier if budget.holds(p)), None), measurable=False)
    measured = sensitivity(spiking, ids, progress)
    path = _greedy_path(spiking, measured)
    picks = sorted({round(i * (len(path) - 1) / (points - 1)) for i in range(points)})
    frontier = [_placed(spiking, path[i], sum(measured.get((n, b), 0.0) for n, b in path[i].items()), budget.packing)
                for i in picks]
    return Fit(frontier, next((p for p in frontier if budget.holds(p)), None), measured)

