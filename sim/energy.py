"""Operation counts of a spiking run, per token and per layer, and their price in energy.

Counted from the messages a run produced (the reference simulator, float or
fixed point, with `keep_values=True`, or a Lava run's records), for every
on-chip node:

  accumulates     a binary or ternary spike crossing one synapse: the weight is
                  added to (or subtracted from) the target's current. A Dense
                  layer's input event reaches all of its outputs (fan-out =
                  out_features); an elementwise op (encode, add) has one synapse
                  per neuron. SSA: at each step, every coincident Q/K spike pair
                  of a head (one accumulate into that key's score) plus, for
                  every nonzero score, one accumulate per value spike of that key.
  MACs            a graded spike crossing one synapse: its payload times the
                  weight, accumulated (a multiply-accumulate, in every method:
                  the graded method's messages, the residual stream and norm
                  outputs of the others, 8-bit graded spikes). A graded value is
                  one event per nonzero neuron per token, a graded spike train
                  one per nonzero payload per step. Softmax attention: a query
                  against every cached key and the probabilities against every
                  cached value, 2 (i + 1) d at position i.
  neuron ops      what each neuron update computes, as adds (adds, compares,
                  shifts, selects) and multiplies (multiplies, divisions), read
                  off the integer program in `sim/fixed_point` (`NEURON_OPS`,
                  docs/energy.md): a binary IF update is 3 adds, a graded
                  neuron with GELU 21 adds and 4 multiplies, and so on.
  messages        spikes and payloads sent (each nonzero event leaving a neuron).
  ANN MACs        what the original model spends on the same layer per token:
                  a Dense in * out; attention 2 (i + 1) d (Q.K and A.V); nothing
                  for encoders, adds and norms (the papers' convention).

Per-op energies are data with their sources (`ENERGY_MODELS`); every report
names the model it used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nxcompile.compiler.graph import (SSA, Add, Attention, Dense, GradedDense, LayerNorm, Role, SpikingGraph,
                                      out_kind)
from nxcompile.errors import UsageError


@dataclass(frozen=True)
class EnergyModel:
    """Picojoules per operation, and where each figure comes from. Static power, priced over the time
    a token takes, is `sim.timing`'s."""
    name: str
    accumulate_pj: float       # a binary or ternary spike crossing a synapse
    mac_pj: float              # a graded spike crossing a synapse (payload x weight)
    add_pj: float              # one add, compare or shift of a neuron update
    mult_pj: float             # one multiply or division of a neuron update
    message_pj: float          # one spike or payload sent
    ann_mac_pj: float          # the ANN's multiply-accumulate
    source: str


def _scaled(model: EnergyModel, name: str, factor: float, source: str) -> EnergyModel:
    """A price set whose on-chip figures are `model`'s times `factor` (the ANN's MAC unchanged)."""
    return EnergyModel(name, model.accumulate_pj * factor, model.mac_pj * factor, model.add_pj * factor,
                       model.mult_pj * factor, model.message_pj * factor, model.ann_mac_pj, source)


# Loihi 1's per-operation energies (Davies et al., IEEE Micro 38(1) 2018, Table 2): a synaptic
# spike op 23.6 pJ, a neuron update 81 pJ active (52 inactive: every neuron here integrates a
# bias or input each step), a spike within a tile 1.7 pJ. Loihi's CUBA update is 6 operations
# (`NEURON_OPS["cuba"]`): 81 / 6 pJ each prices other neurons by what they compute (an
# assumption, as is a graded synaptic op as a spike op plus one such operation: Loihi 1 has no
# graded spikes).
_LOIHI_OP_PJ = 81.0 / 6
LOIHI1 = EnergyModel("loihi", accumulate_pj=23.6, mac_pj=23.6 + _LOIHI_OP_PJ, add_pj=_LOIHI_OP_PJ,
                     mult_pj=_LOIHI_OP_PJ, message_pj=1.7, ann_mac_pj=4.6,
                     source="Davies et al., IEEE Micro 2018, Table 2 (Loihi 1): a synaptic spike op 23.6 pJ, a spike "
                            "within a tile 1.7 pJ, an active neuron update 81 pJ over a CUBA update's 6 operations "
                            "(13.5 pJ each, an assumption), a graded synaptic op as a spike op plus one of them; "
                            "the ANN at Horowitz's 45 nm float MAC 4.6 pJ")
# Loihi 2: no per-operation energies are published. Intel measured PilotNet SNN on one Loihi 2
# chip (../shared/loihi2-measured: 1.094 mJ dynamic per 16-step inference, 0.232 W static, 408.91
# inferences/s): LOIHI1's prices predict LOIHI2_FIT_PREDICTED_MJ for it from a Lava run on lava-dl's
# input (`python bench/loihi2_energy.py`), so Loihi 1's figures scaled by measured / predicted are
# fitted to that one number (the split between synaptic ops and neuron updates stays Loihi 1's).
LOIHI2_MEASURED_MJ = 1.093544
LOIHI2_FIT_PREDICTED_MJ = 1.3471            # `python bench/loihi2_energy.py`
LOIHI2 = _scaled(LOIHI1, "loihi2", LOIHI2_MEASURED_MJ / LOIHI2_FIT_PREDICTED_MJ,
                 "Loihi 1's figures scaled to Intel's one Loihi 2 measurement (PilotNet SNN, 1.094 mJ dynamic "
                 "per inference; bench/loihi2_energy.py): fitted to that number alone")
ENERGY_MODELS = {m.name: m for m in (
    LOIHI2,
    LOIHI1,
    EnergyModel("45nm", accumulate_pj=0.9, mac_pj=4.6, add_pj=0.9, mult_pj=3.7, message_pj=0.0, ann_mac_pj=4.6,
                source="Horowitz, ISSCC 2014, 45 nm 32-bit float: MAC 4.6 pJ (mult 3.7 + add 0.9), an accumulate "
                       "or a neuron's add 0.9 pJ, a neuron's multiply 3.7 pJ; messages not priced (the "
                       "spiking-transformer papers' convention)"),
    EnergyModel("45nm-int8", accumulate_pj=0.03, mac_pj=0.23, add_pj=0.03, mult_pj=0.2, message_pj=0.0,
                ann_mac_pj=0.23,
                source="Horowitz, ISSCC 2014, 45 nm 8-bit integer: MAC 0.23 pJ (mult 0.2 + add 0.03), an "
                       "accumulate or a neuron's add 0.03 pJ, a neuron's multiply 0.2 pJ (a lower bound: the "
                       "graded method's payloads are up to 24 bits)"),
)}

# (adds, multiplies) of one neuron update, read off sim/fixed_point's integer program. Adds count
# adds, compares, shifts and selects; multiplies count multiplies and divisions.
NEURON_OPS = {
    "if": (3, 0),                 # v += I; s = v >= theta; v -= s theta
    "if-ternary": (4, 0),         # and the compare with -theta
    "if-graded": (4, 2),          # s = clamp(v // theta, 0, 255): a division and two compares; v -= s theta
    "leak": (2, 1),               # LIF first: sign(v) ((|v| keep) >> 12)
    "current": (1, 0),            # the bias (SSA: the scale, a shift) added to each step's current
    "readout-step": (1, 0),       # a readout accumulates its current each step ...
    "readout-token": (5, 1),      # ... and rounds the window's mean once per token, saturating
    "norm-feature": (6, 3),       # per feature: sum, centre, square, sum; times w, // std, + b, saturate
    "norm-token": (13, 8),        # per token: mean, variance, an integer square root (Newton's, ~6 steps)
    "window-step": (1, 0),        # a norm of a spike train sums each feature's spikes over the window ...
    "window-token": (2, 2),       # ... and decodes the sum once per token
    "graded-add": (3, 0),         # a + b, saturated
    "graded-dense": (5, 0),       # bias; rescale (a power of two: round, shift); saturate
    "gelu": (16, 4),              # to 2**-10 units; |x|, clip, piece and offset; c1 t, t t, c2 t^2, shifts,
                                  # sum; beyond-4 and sign selects, 1 - h; x h
    "attention-pair": (13, 5),    # per query, key and head: score rescale, max, subtract; i-exp (clamp,
                                  # q = x // x0, r = x - q x0, (r + b) r + c, >> q); sum; probability
    "attention-query": (0, 1),    # per query and head: one reciprocal, 2**48 // sum
    "attention-feature": (4, 0),  # per output feature: rounding shift, saturation
    "cuba": (4, 2),               # lava-dl netx's LOIHI/CUBA neuron: two decays, two adds, compare, reset
    "sigma-delta": (5, 1),        # netx's SDNN neuron: sigma += input, + bias, ReLU, delta, compare, residue
}


@dataclass
class LayerCounts:
    """One node's operations per token (mean over the run's tokens)."""
    name: str
    op: str
    block: int | None
    role: Role | None
    accumulates: float
    macs: float
    neuron_updates: float
    neuron_adds: float
    neuron_mults: float
    messages: float
    ann_macs: float
    spike_rate: float          # nonzero outputs per neuron per step (nan: graded output)

    @property
    def synaptic_ops(self) -> float:
        return self.accumulates + self.macs

    def snn_pj(self, model: EnergyModel) -> float:
        return (self.accumulates * model.accumulate_pj + self.macs * model.mac_pj + self.neuron_adds * model.add_pj
                + self.neuron_mults * model.mult_pj + self.messages * model.message_pj)

    def ann_pj(self, model: EnergyModel) -> float:
        return self.ann_macs * model.ann_mac_pj


def _events(x) -> np.ndarray:
    """Input events per token per neuron: nonzero messages of a train [B, S, T, N] summed over T, or of a
    graded value [B, S, N] (one per nonzero neuron)."""
    x = np.asarray(x)
    return (x != 0).sum(axis=2) if x.ndim == 4 else (x != 0).astype(np.int64)


def _ssa_ops(op: SSA, q, k, v) -> np.ndarray:
    """[B, S] accumulates of spiking self-attention (see the module docstring)."""
    b, s, t, _ = q.shape

    def heads(x):   # -> [B, T, H, S, hd] of 0/1 events
        return (np.asarray(x) != 0).astype(np.float64).reshape(b, s, t, op.n_head, op.head_dim).transpose(0, 2, 3, 1, 4)

    qh, kh, vh = heads(q), heads(k), heads(v)
    scores = qh @ kh.transpose(0, 1, 2, 4, 3)                       # [B, T, H, S_i, S_j] coincidences
    causal = np.tril(np.ones((s, s)))
    score_ops = (scores * causal).sum(axis=(1, 2, 4))                 # [B, S_i]
    value_ops = (((scores * causal) > 0) * vh.sum(-1)[:, :, :, None, :]).sum(axis=(1, 2, 4))
    return score_ops + value_ops


def _ann_macs(spiking: SpikingGraph, name: str, op, positions: np.ndarray) -> np.ndarray:
    from nxcompile.compiler.convert import method_of

    if isinstance(op, (Dense, GradedDense)):      # a method may build several populations per MLP neuron
        mlp = spiking.role(name).branch == "mlp"
        widen = method_of(spiking).mlp_populations(spiking.meta["options"]) if mlp else 1
        return np.full(positions.shape, op.weight.shape[0] * op.weight.shape[1] / widen)
    if isinstance(op, (SSA, Attention)):
        return 2.0 * (positions + 1) * op.out_features
    return np.zeros(positions.shape)


def _graded_source(spiking: SpikingGraph, source: str) -> bool:
    """Whether a source's messages carry payloads (each crossing a synapse is a MAC), not 0/1 spikes."""
    return out_kind(spiking.op(source)) not in ("binary", "ternary")


def _fan_out(spiking: SpikingGraph, name: str, op) -> int | np.ndarray:
    """Synapses each input event of a port crosses: all outputs of a Dense (each input's kept ones
    where the layer is pruned: a sparse synapse list holds no others), one of an elementwise op."""
    if not isinstance(op, (Dense, GradedDense)):
        return 1
    precision = spiking.quantization.precision if spiking.quantization is not None else None
    if precision is not None and precision.sparsity_of(name) > 0:
        return (op.weight != 0).sum(0).numpy()
    return op.out_features


def _synaptic(spiking: SpikingGraph, name: str, op, inputs: dict, timesteps: int) -> tuple[np.ndarray, np.ndarray]:
    """[B, S] accumulates and MACs of a node's synapses."""
    some = next(iter(inputs.values()))
    zeros = np.zeros(np.asarray(some).shape[:2])
    if isinstance(op, SSA):
        return _ssa_ops(op, inputs["q"], inputs["k"], inputs["v"]), zeros
    if isinstance(op, Attention):
        positions = np.broadcast_to(np.arange(zeros.shape[1]), zeros.shape)
        return zeros, 2.0 * (positions + 1) * op.out_features
    accumulates, macs = zeros.copy(), zeros.copy()
    for port, source in spiking.inputs(name).items():
        events = (_events(inputs[port]) * _fan_out(spiking, name, op)).sum(-1)
        if _graded_source(spiking, source):
            macs += events
        else:
            accumulates += events
    return accumulates, macs


def _ops(*names: str, times: float = 1.0) -> np.ndarray:
    return times * np.sum([NEURON_OPS[n] for n in names], axis=0)


def _neuron_ops(op, values_in: dict, timesteps: int, positions: np.ndarray) -> tuple[float, np.ndarray]:
    """(neuron updates, [adds, multiplies]) per token of one node."""
    neuron = getattr(op, "neuron", None)
    n = op.out_features
    if neuron is not None:
        kind = "if-graded" if neuron.payload_max > 1 else "if-ternary" if neuron.signed else "if"
        per_step = _ops(kind, "current") + (_ops("leak") if neuron.leak > 0 else 0)
        return n * timesteps, n * timesteps * per_step
    if isinstance(op, Dense):                    # a readout
        return n * timesteps, n * (_ops("readout-step", times=timesteps) + _ops("readout-token"))
    if isinstance(op, LayerNorm):
        spikes_in = np.asarray(values_in["x"]).ndim == 4
        window = _ops("window-step", times=timesteps) + _ops("window-token") if spikes_in else 0
        return n, n * (_ops("norm-feature") + window) + _ops("norm-token")
    if isinstance(op, Add):
        return n, n * _ops("graded-add")
    if isinstance(op, GradedDense):
        return n, n * (_ops("graded-dense") + (_ops("gelu") if op.activation != "identity" else 0))
    if isinstance(op, Attention):
        keys = float(np.mean(positions + 1))
        return n, (op.n_head * (keys * _ops("attention-pair") + _ops("attention-query"))
                   + n * _ops("attention-feature"))
    return 0.0, np.zeros(2)


def count(spiking: SpikingGraph, values: dict, timesteps: int) -> list[LayerCounts]:
    """Operations per token (mean over the run's tokens) of every on-chip node."""
    rows = []
    for name in spiking.order():
        node = spiking.graph.nodes[name]
        if node["host"]:
            continue
        op, sources = node["op"], spiking.inputs(name)
        inputs = {port: values[s] for port, s in sources.items()}
        shape = np.asarray(next(iter(inputs.values()))).shape[:2]
        positions = np.broadcast_to(np.arange(shape[1]), shape)
        accumulates, macs = _synaptic(spiking, name, op, inputs, timesteps)
        updates, (adds, mults) = _neuron_ops(op, inputs, timesteps, positions)
        out = np.asarray(values[name])
        rate = float((out != 0).mean()) if out.ndim == 4 else float("nan")
        rows.append(LayerCounts(name, type(op).__name__, node["block"], node["role"], float(np.mean(accumulates)),
                                float(np.mean(macs)), float(updates), float(adds), float(mults),
                                float(_events(out).sum(-1).mean()),
                                float(np.mean(_ann_macs(spiking, name, op, positions))), rate))
    return rows


@dataclass(frozen=True)
class EnergySummary:
    """Picojoules per token, SNN and ANN, over a set of layers."""
    snn_pj: float
    ann_pj: float

    @property
    def reduction(self) -> float:
        return 1.0 - self.snn_pj / self.ann_pj if self.ann_pj else float("nan")

    def change(self) -> str:
        """The SNN against the ANN in words: "48.1 % less" or "98.4 % more"."""
        return f"{100 * abs(self.reduction):.1f} % {'less' if self.reduction >= 0 else 'more'}"


def total(rows: list[LayerCounts], model: EnergyModel, where=lambda row: True) -> EnergySummary:
    chosen = [r for r in rows if where(r)]
    return EnergySummary(sum(r.snn_pj(model) for r in chosen), sum(r.ann_pj(model) for r in chosen))


def _taps(size_in: int, size_out: int, kernel: int, stride: int, padding: int, dilation: int) -> np.ndarray:
    """For each input position along one axis, how many output positions' kernels cover it."""
    position = np.arange(size_in)[:, None] + padding - np.arange(kernel)[None] * dilation
    out = position // stride
    return ((position % stride == 0) & (out >= 0) & (out < size_out)).sum(axis=1)


def _netx_fan_out(layer, events: np.ndarray) -> float:
    """Synaptic events into `layer` from input events [neurons, steps] of its source (Lava's (W, H, C)
    order flattened): each reaches all neurons of a dense layer, one of an input layer, and the
    output positions whose kernels cover it times the output channels of a conv layer."""
    per_neuron = (events != 0).sum(axis=-1)
    if layer.kind == "dense":
        return float(per_neuron.sum()) * layer.neurons
    if layer.kind == "conv":
        p = layer.params
        c_in, h_in, w_in = p["in_shape"]
        c_out, h_out, w_out = p["out_shape"]
        fan_y = _taps(h_in, h_out, p["kernel"][0], p["stride"][0], p["padding"][0], p["dilation"][0])
        fan_x = _taps(w_in, w_out, p["kernel"][1], p["stride"][1], p["padding"][1], p["dilation"][1])
        counts = per_neuron.reshape(w_in, h_in, c_in)
        return float((counts * fan_x[:, None, None] * fan_y[None, :, None]).sum()) * c_out
    return float(per_neuron.sum())


def _netx_ann_macs(layer) -> int:
    """The MACs an ANN of the same layer spends per step: every weight once (a conv's kernel at every
    output position); an input layer has none."""
    if layer.kind == "dense":
        return layer.neurons * layer.params["in_features"]
    if layer.kind == "conv":
        return layer.neurons * layer.params["in_shape"][0] * int(np.prod(layer.params["kernel"]))
    return 0


def count_netx(network, messages: list[np.ndarray], spikes_in: np.ndarray, steps_per_inference: int,
               sent_input=None) -> list[LayerCounts]:
    """Operations per inference of a lava-dl netx network from a Lava run: `messages` are what each
    on-chip layer sent ([..., steps], netx's layer order), `spikes_in` what entered the first. Binary
    spikes into a layer are accumulates, graded ones (sigma-delta, messageBits) MACs; every neuron
    updates every step (a CUBA or a sigma-delta update); the ANN is the same layers' MACs.
    `sent_input`: a skipped input layer counted as on chip, its neurons driven by their bias and
    sending `spikes_in`."""
    layers = network.chip_layers()
    steps = spikes_in.shape[-1]
    inferences = max(1.0, steps / steps_per_inference)
    rows = []
    if sent_input is not None:
        updates = sent_input.neurons * steps / inferences
        cuba = NEURON_OPS["cuba"]
        rows.append(LayerCounts(f"{sent_input.name} (bias-driven)", "input", None, None, 0.0, 0.0, updates,
                                updates * cuba[0], updates * cuba[1], float((spikes_in != 0).sum()) / inferences,
                                0.0, float((spikes_in != 0).mean())))
    for i, (layer, sent) in enumerate(zip(layers, messages)):
        source = spikes_in if i == 0 else messages[i - 1]
        source_graded = (layers[i - 1].message_bits > 1) if i else spikes_in.dtype != bool
        events = _netx_fan_out(layer, source.reshape(-1, source.shape[-1])) / inferences
        sent = sent.reshape(-1, sent.shape[-1])
        update = NEURON_OPS["sigma-delta" if layer.message_bits > 1 else "cuba"]
        updates = layer.neurons * steps / inferences
        rows.append(LayerCounts(layer.name, layer.kind, None, None, 0.0 if source_graded else events,
                                events if source_graded else 0.0, updates, updates * update[0], updates * update[1],
                                float((sent != 0).sum()) / inferences, float(_netx_ann_macs(layer)),
                                float((sent != 0).mean()) if layer.message_bits == 1 else float("nan")))
    return rows


# ---- reports ---------------------------------------------------------------------------------------

ATTENTION_OP = "attention op (SSA, or the graded method's softmax) vs ANN attention (Q.K, A.V)"
SCOPES = {ATTENTION_OP: lambda r: r.op in ("SSA", "Attention"),
          "attention blocks (Q/K/V, attention, output projection)":
              lambda r: r.role is not None and r.role.branch == "attention" and r.role.part != "norm",
          "every on-chip layer": lambda r: True}
WHOLE = "every on-chip layer"


def summaries(rows: list[LayerCounts]) -> dict[str, dict[str, EnergySummary]]:
    """SSA against ANN attention (the op alone and the whole attention block) and every on-chip layer,
    under every energy model."""
    return {scope: {m: total(rows, ENERGY_MODELS[m], where) for m in ENERGY_MODELS} for scope, where in SCOPES.items()}


def loihi_line(by_model: dict[str, EnergySummary], performance) -> str:
    """Loihi's dynamic energy per token under Loihi 1's and the fitted Loihi 2 prices, and the static
    energy of the chips held over the time a token takes (`sim.timing.Performance`): decoding (one
    token through the depth) and in a pipelined prefill, at one chip's measured static power."""
    from nxcompile.sim.timing import STATIC_W_PER_CHIP

    watts = STATIC_W_PER_CHIP["one chip"]
    decode, prefill = performance.decode_seconds, performance.interval * performance.steady.seconds
    return (f"at Loihi 1's per-op energies (Davies 2018) {by_model['loihi'].snn_pj / 1e3:.1f} nJ, at Loihi 2's "
            f"(fitted to one chip measurement) {by_model['loihi2'].snn_pj / 1e3:.1f} nJ dynamic + "
            f"{performance.static_pj(decode, watts) / 1e3:,.1f} nJ static decoding / "
            f"{performance.static_pj(prefill, watts) / 1e3:,.1f} nJ in a pipelined prefill ({performance.chips} "
            f"chip(s) x {watts:.3f} W x {decode * 1e6:,.1f} / {prefill * 1e6:,.2f} us per token, "
            f"{performance.model.name} time model; `nxcompile perf` for both phases)")


def _table(rows: list[LayerCounts], model: EnergyModel) -> list[str]:
    lines = [f"{'layer':22} {'op':11} {'spike rate':>10} {'accumulates':>11} {'MACs':>10} {'neuron upd':>10} "
             f"{'adds':>10} {'mults':>9} {'messages':>9} {'ANN MACs':>10} {'SNN nJ':>9} {'ANN nJ':>9}"]
    for r in rows:
        rate = "graded" if math.isnan(r.spike_rate) else f"{r.spike_rate:.4f}"
        lines.append(f"{r.name:22} {r.op:11} {rate:>10} {r.accumulates:>11.0f} {r.macs:>10.0f} "
                     f"{r.neuron_updates:>10.0f} {r.neuron_adds:>10.0f} {r.neuron_mults:>9.0f} {r.messages:>9.0f} "
                     f"{r.ann_macs:>10.0f} {r.snn_pj(model) / 1e3:>9.2f} {r.ann_pj(model) / 1e3:>9.2f}")
    return lines


@dataclass
class TokenEnergy:
    """Operations per token of a graph's fixed-point run over `tokens` tokens, with how fast its
    placement runs on Loihi 2 (`sim.timing.Performance`: what static energy is priced over)."""
    source: str
    rows: list[LayerCounts]
    tokens: int
    timesteps: int
    performance: object

    def scopes(self) -> dict[str, dict[str, EnergySummary]]:
        return summaries(self.rows)

    def format(self, model: EnergyModel) -> str:
        """The per-layer table under `model`, per block, the scopes under every price set and Loihi's."""
        blocks = sorted({r.block for r in self.rows if r.block is not None})
        per_block = " | ".join(
            f"{b}: SNN {total(self.rows, model, lambda r, b=b: r.block == b).snn_pj / 1e3:.1f} nJ, "
            f"ANN {total(self.rows, model, lambda r, b=b: r.block == b).ann_pj / 1e3:.1f} nJ" for b in blocks)
        lines = [f"{self.source}: operations per token, mean over {self.tokens} held-out tokens, T = "
                 f"{self.timesteps}, Loihi fixed point; energy model {model.name}: {model.source}",
                 *_table(self.rows, model),
                 "host layers (embedding, final norm, LM head) are the same on both sides and not counted; a graded "
                 "spike crossing a synapse is a MAC, a binary one an accumulate; neuron updates are priced by their "
                 "adds and multiplies (docs/energy.md)",
                 f"per block ({model.name}): {per_block}"]
        scoped = self.scopes()
        for scope, by_model in scoped.items():
            lines.append(f"{scope}:")
            lines += [f"  {m:10} SNN {e.snn_pj / 1e3:10.1f} nJ | ANN {e.ann_pj / 1e3:10.1f} nJ | SNN {e.change()}"
                      for m, e in by_model.items()]
        lines.append(f"on Loihi, per token: {loihi_line(scoped[WHOLE], self.performance)}")
        lines.append("energy models:")
        lines += [f"  {m.name:10} {m.source}" for m in ENERGY_MODELS.values()]
        return "\n".join(lines)

    def summary_line(self) -> str:
        """One line: the whole chip and the attention op against the ANN, and Loihi's figures."""
        scoped = self.scopes()
        whole, attention = scoped[WHOLE], scoped[ATTENTION_OP]["45nm"]
        nm45 = whole["45nm"]
        return (f"per token on chip: SNN {nm45.snn_pj / 1e3:.1f} nJ vs ANN {nm45.ann_pj / 1e3:.1f} nJ "
                f"({nm45.change()}; 45 nm figures, Horowitz 2014), attention op {attention.change()} than "
                f"ANN attention; {loihi_line(whole, self.performance)}; `nxcompile energy FILE.net` for the "
                f"table")


def held_out_ids(tokenizer, tokens: int) -> list[int]:
    """The first `tokens` tokens of the held-out text."""
    from nxcompile.models.corpus import evaluation_text

    ids = tokenizer(evaluation_text(None)[: tokens * 16])["input_ids"][:tokens]
    if len(ids) < 1:
        raise UsageError("the held-out text gave no tokens")
    return ids


def counted_rows(graph: SpikingGraph, tokenizer, tokens: int) -> tuple[list[LayerCounts], int]:
    """Counts per layer over the first `tokens` held-out tokens (at most the model's context), run in
    Loihi's fixed point, and how many tokens that was."""
    import torch

    from nxcompile.sim import fixed_point

    ids = held_out_ids(tokenizer, min(tokens, int(graph.meta.get("n_positions", tokens))))
    timesteps = int(graph.meta["options"]["timesteps"])
    run = fixed_point.run(graph, torch.tensor([ids]), timesteps, keep_values=True)
    return count(graph, run.values, timesteps), len(ids)


def token_energy(graph: SpikingGraph, tokenizer, tokens: int, placement=None, source: str = "",
                 time_model: str = "loihi2-fitted") -> TokenEnergy:
    """Counts per layer over the first `tokens` held-out tokens, and how fast `placement` (else a
    loihi2-sim placement) runs them on Loihi 2 under `time_model`."""
    from nxcompile.compiler.layers import network_from_graph
    from nxcompile.compiler.partition import place
    from nxcompile.compiler.targets import get_target
    from nxcompile.sim.timing import TIME_MODELS, graph_performance

    rows, counted = counted_rows(graph, tokenizer, tokens)
    placement = placement or place(network_from_graph(graph), get_target("loihi2-sim"))
    return TokenEnergy(source or str(graph.meta.get("model")), rows, counted, int(graph.meta["options"]["timesteps"]),
                       graph_performance(graph, placement, rows, TIME_MODELS[time_model]))


def plot_layers(rows: list[LayerCounts], model: EnergyModel, folder) -> list:
    """Energy per layer, spike rate per layer and ANN against SNN per layer, as PNG files in `folder`."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nxcompile.files import save_figure

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {folder} ({exc}); choose a writable --plot-dir") from None
    names = [r.name for r in rows]
    positions = np.arange(len(rows))
    plots = {
        "energy_per_layer.png": (lambda ax: ax.bar(names, [r.snn_pj(model) / 1e3 for r in rows]),
                                 f"SNN energy per token (nJ, {model.name})"),
        "spike_rate_per_layer.png": (lambda ax: ax.bar(names, [0 if math.isnan(r.spike_rate) else r.spike_rate
                                                               for r in rows]), "spike rate (per neuron per step)"),
        "ann_vs_snn.png": (lambda ax: (ax.bar(positions - 0.2, [r.ann_pj(model) / 1e3 for r in rows], width=0.4,
                                              label="ANN"),
                                       ax.bar(positions + 0.2, [r.snn_pj(model) / 1e3 for r in rows], width=0.4,
                                              label="SNN"), ax.legend()),
                           f"energy per token (nJ, {model.name})"),
    }
    written = []
    for filename, (draw, ylabel) in plots.items():
        fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.25), 4))
        draw(ax)
        ax.set_xticks(range(len(rows)), names, rotation=90, fontsize=6)
        ax.set_ylabel(ylabel)
        fig.tight_layout()
        save_figure(fig, folder / filename, "choose a writable --plot-dir", dpi=120)
        written.append(folder / filename)
    return written


# ---- foreign lava-dl networks, counted from their Lava run -----------------------------------------

def inference_steps(steps_per_inference: int | None, reset_interval: int | None, steps: int) -> int:
    """Steps of one inference of a netx network: as given, else its reset interval (a sample's length),
    else every step run (one inference)."""
    return steps_per_inference or reset_interval or steps


@dataclass
class InferenceEnergy:
    """Operations per inference of a lava-dl netx network, counted from its Lava run."""
    source: str
    rows: list[LayerCounts]
    steps_per_inference: int
    input_name: str

    def dynamic_mj(self, model: EnergyModel) -> float:
        return total(self.rows, model).snn_pj / 1e9

    def format(self, model: EnergyModel, measured_mj: float | None = None) -> str:
        lines = [f"{self.source}: operations per inference ({self.steps_per_inference} steps), from its Lava run on "
                 f"{self.input_name} (netx's builders, Loihi2SimCfg fixed point); energy model {model.name}: "
                 f"{model.source}", *_table(self.rows, model)]
        for m in ENERGY_MODELS.values():
            line = f"dynamic energy per inference  {self.dynamic_mj(m):.3f} mJ  ({m.name})"
            if measured_mj:
                line += (f"; measured {measured_mj:.3f} mJ: predicted / measured = "
                         f"{self.dynamic_mj(m) / measured_mj:.2f}")
            lines.append(line)
        return "\n".join(lines)


def netx_energy(path, spikes: np.ndarray, steps: int | None = None, skip_layers: int = 0,
                input_layer_on_chip: bool = False, reset_interval: int | None = None, reset_offset: int = 0,
                steps_per_inference: int | None = None, input_name: str = "its input") -> InferenceEnergy:
    """Operations per inference of a lava-dl netx network, counted from its run in Lava (netx's builders)
    on `spikes` [..., time] for `steps` (default: the input's length). `input_layer_on_chip`: a skipped
    input layer (skip_layers 1) counted as on chip, its neurons driven by their bias, sending `spikes`."""
    from nxcompile.backends.lava_sim import run_netx
    from nxcompile.compiler.layers import network_from_netx

    network = network_from_netx(path, skip_layers)
    steps = steps or spikes.shape[-1]
    if input_layer_on_chip and not (skip_layers == 1 and network.layers[0].kind == "input"):
        raise UsageError("--input-layer-on-chip counts a skipped input layer: give --skip-layers 1 for a network "
                         "whose first layer is netx's input layer")
    messages = run_netx(path, spikes, steps, None, skip_layers, reset_interval, reset_offset, every_layer=True)
    per = inference_steps(steps_per_inference, reset_interval, steps)
    rows = count_netx(network, messages, spikes[..., :steps], per, network.layers[0] if input_layer_on_chip else None)
    return InferenceEnergy(str(path), rows, per, input_name)
