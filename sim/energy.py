"""Operation counts of a spiking run, per token and per layer, and their price in energy.

Counted from the spike trains a run produced (the reference simulator, float or
fixed point, with `keep_values=True`), for every on-chip node:

  synaptic ops    one per event crossing one synapse: a Dense layer's input
                  event reaches all of its outputs (fan-out = out_features); an
                  elementwise op (encode, add) has one synapse per neuron; a
                  graded value counts as one event per neuron per token, and a
                  graded spike (payload > 1) as one event, not as its payload.
                  SSA: at each step, every coincident Q/K spike pair of a head
                  (one accumulate into that key's score) plus, for every
                  nonzero score, one accumulate per value spike of that token.
  neuron updates  each neuron of a spiking population (or readout accumulator)
                  once per step; a graded add or norm once per token.
  ANN MACs        what the original model spends on the same layer per token:
                  a Dense in * out; attention 2 * (context) * d (Q.K and A.V) at
                  the token's position; nothing for spike encoders.

Per-op energies are data with their sources (`ENERGY_MODELS`); every report
names the model it used.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nxcompile.compiler.graph import SSA, Add, Dense, Encode, SpikingGraph


@dataclass(frozen=True)
class EnergyModel:
    """Picojoules per operation, and where each figure comes from."""
    name: str
    ann_mac_pj: float
    synaptic_op_pj: float
    neuron_update_pj: float
    source: str


ENERGY_MODELS = {m.name: m for m in (
    EnergyModel("45nm", ann_mac_pj=4.6, synaptic_op_pj=0.9, neuron_update_pj=0.0,
                source="Horowitz, ISSCC 2014, 45 nm: 32-bit float MAC 4.6 pJ (mult 3.7 + add 0.9), "
                       "a synaptic op as one 32-bit float add 0.9 pJ; neuron updates not priced "
                       "(the convention of the spiking-transformer papers)"),
    EnergyModel("45nm-int8", ann_mac_pj=0.23, synaptic_op_pj=0.03, neuron_update_pj=0.0,
                source="Horowitz, ISSCC 2014, 45 nm: 8-bit int MAC 0.23 pJ (mult 0.2 + add 0.03), "
                       "a synaptic op as one 8-bit add 0.03 pJ"),
    EnergyModel("loihi", ann_mac_pj=4.6, synaptic_op_pj=23.6, neuron_update_pj=52.0,
                source="Davies et al., IEEE Micro 38(1) 2018, Table 2: 23.6 pJ per synaptic spike op, "
                       "52 pJ per neuron update; the ANN at Horowitz's 45 nm float MAC 4.6 pJ"),
)}


@dataclass
class LayerCounts:
    """One node's operations per token."""
    name: str
    op: str
    block: int | None
    synaptic_ops: float
    neuron_updates: float
    ann_macs: float
    spike_rate: float          # nonzero outputs per neuron per step (nan: graded output)

    def snn_pj(self, model: EnergyModel) -> float:
        return self.synaptic_ops * model.synaptic_op_pj + self.neuron_updates * model.neuron_update_pj

    def ann_pj(self, model: EnergyModel) -> float:
        return self.ann_macs * model.ann_mac_pj


def _events(x) -> np.ndarray:
    """Input events per token per neuron: spikes of a train [B, S, T, N] summed over T (graded
    payloads count once), or one per neuron for a graded value [B, S, N]."""
    x = np.asarray(x)
    if x.ndim == 4:
        return (x != 0).sum(axis=2)
    return np.ones_like(x, dtype=np.int64)


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


def _hinges(spiking: SpikingGraph) -> int:
    """Populations the converter built per ANN MLP neuron (one per GELU hinge)."""
    from nxcompile.compiler.convert import GELU_HINGES

    return max(1, len(GELU_HINGES.get(spiking.meta.get("options", {}).get("gelu", "relu"), ())))


def _ann_macs(spiking: SpikingGraph, name: str, op, positions: np.ndarray) -> np.ndarray:
    if isinstance(op, Dense):
        widen = _hinges(spiking) if ".mlp." in name else 1     # the converter's MLP layers are per hinge
        return np.full(positions.shape, op.weight.shape[0] * op.weight.shape[1] / widen)
    if isinstance(op, SSA):
        return 2.0 * (positions + 1) * op.out_features
    return np.zeros(positions.shape)


def count(spiking: SpikingGraph, values: dict, timesteps: int) -> list[LayerCounts]:
    """Operations per token (mean over the run's tokens) of every on-chip node."""
    rows = []
    for name in spiking.order():
        node = spiking.graph.nodes[name]
        if node["host"]:
            continue
        op, sources = node["op"], spiking.inputs(name)
        inputs = {port: values[s] for port, s in sources.items()}
        some = np.asarray(next(iter(inputs.values())))
        positions = np.broadcast_to(np.arange(some.shape[1]), some.shape[:2])
        if isinstance(op, SSA):
            synaptic = _ssa_ops(op, inputs["q"], inputs["k"], inputs["v"])
        elif isinstance(op, Dense):
            synaptic = _events(inputs["x"]).sum(-1) * op.out_features
        elif isinstance(op, (Encode, Add)):
            synaptic = sum(_events(x).sum(-1) for x in inputs.values())
        else:
            synaptic = np.zeros(positions.shape)
        per_step = getattr(op, "neuron", None) is not None or isinstance(op, Dense)    # populations, readouts
        updates = op.out_features * (timesteps if per_step else 1)
        out = np.asarray(values[name])
        rate = float((out != 0).mean()) if out.ndim == 4 else float("nan")
        rows.append(LayerCounts(name, type(op).__name__, node["block"], float(np.mean(synaptic)), float(updates),
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
