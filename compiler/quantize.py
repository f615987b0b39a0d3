"""Quantisation: a float spiking graph -> the same graph in Loihi fixed point.

Every on-chip population moves to integer units, per layer (as Loihi stores it):

    weight  w_q = m * 2**weight_exp       m: signed `weight_mantissa_bits` integer
    thresh  theta_q = round(theta * u)    u = 2**(k + weight_exp), one per layer
    bias    b_q = mb * 2**bias_exp        mb: signed `bias_mantissa_bits` integer
    leak    a multiple of 1/2**decay_bits

k is the largest power of two that still fits the largest weight into the
mantissa (m = round(w * 2**k)), so every layer uses its full weight precision;
weight_exp = 6 aligns thresholds and biases 6 bits finer than the weights, as
Loihi's own state does (Lava's fixed-point models shift by 6), unless the
threshold would then overflow `threshold_bits` + 6 bits. Dividing a whole
population's dynamics by one positive number changes none of its spikes, so the
spike train is what the float graph makes up to rounding; a spike's value
downstream (folded into the next weights) is kept in `NeuronModel.value`.

SSA has no weights: its current is the integer count sum_j (Q.K_j) V_j times
`scale`; its scale becomes 2**6 and each threshold theta / scale * 2**6.

An on-chip Dense without neurons (a graded readout such as an attention or MLP
output projection) gets the same weight and bias grid, kept in float units
(w_q / u), since its graded output is a value, not a spike count. Graded
messages (LayerNorm outputs) stay float here: their payload format is the Lava
backend's. Quantising a quantised graph changes nothing, so
weights fine-tuned against this quantiser pass through unchanged.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import asdict, dataclass

import torch

from nxcompile.compiler.graph import SSA, Add, Dense, Encode, NeuronModel, SpikingGraph
from nxcompile.compiler.targets import Target

ALIGN_BITS = 6   # Lava's fixed-point LIF/Dense: threshold and activation MSB-aligned by 6 bits


@dataclass(frozen=True)
class LayerFormat:
    """How one layer's numbers are stored."""
    weight_exp: int        # weights are mantissa * 2**weight_exp in state units
    unit_log2: int         # state units per float unit = 2**unit_log2
    bias_exp: int
    mantissa_bits_used: int
    threshold_max: int


def _round_to(x: torch.Tensor, step: float, limit: int) -> torch.Tensor:
    """x rounded to a multiple of `step`, the multiple clipped to [-limit, limit]."""
    return torch.clamp(torch.round(x / step), -limit, limit) * step


def layer_format(weights: list[torch.Tensor], threshold: torch.Tensor, bias: torch.Tensor,
                 target: Target) -> LayerFormat:
    """The per-layer scaling: full weight mantissas, thresholds within their bits."""
    largest = max(float(w.abs().max()) for w in weights) if weights else 0.0
    mantissa_max = 2 ** (target.weight_mantissa_bits - 1) - 1
    k = math.floor(math.log2(mantissa_max / largest)) if largest > 0 else 0
    weight_exp = ALIGN_BITS
    threshold_limit = 2 ** (target.threshold_bits + ALIGN_BITS) - 1
    while weight_exp > 0 and float(threshold.max()) * 2.0 ** (k + weight_exp) > threshold_limit:
        weight_exp -= 1
    unit = 2.0 ** (k + weight_exp)
    bias_limit = 2 ** (target.bias_mantissa_bits - 1) - 1
    scaled_bias = float(bias.abs().max()) * unit if bias.numel() else 0.0
    bias_exp = max(0, math.ceil(math.log2(scaled_bias / bias_limit))) if scaled_bias > bias_limit else 0
    bias_exp = min(bias_exp, 2 ** target.bias_exponent_bits - 1)
    used = max(1, math.ceil(math.log2(largest * 2.0 ** k + 1)) + 1) if largest > 0 else 1
    return LayerFormat(weight_exp, k + weight_exp, bias_exp, used, threshold_limit)


def _quantise_neuron(neuron: NeuronModel, fmt: LayerFormat, target: Target, unit: float) -> NeuronModel:
    threshold = torch.clamp(torch.round(neuron.threshold * unit), 1, fmt.threshold_max)
    decay_steps = 2 ** target.decay_bits
    return NeuronModel(threshold=threshold, leak=round(neuron.leak * decay_steps) / decay_steps,
                       signed=neuron.signed, v_init=neuron.v_init, offset=neuron.offset,
                       payload_max=neuron.payload_max, value=neuron.spike_value.clone())


def _weights(op) -> list[torch.Tensor]:
    if isinstance(op, Dense):
        return [op.weight]
    if isinstance(op, Add):
        return [op.scale_a, op.scale_b]
    if isinstance(op, Encode):
        return [op.gain]
    return []


def _weight_on_grid(w: torch.Tensor, fmt: LayerFormat, target: Target) -> torch.Tensor:
    """Float-unit weights as mantissa * 2**weight_exp, in state units."""
    return _round_to(w * 2.0 ** fmt.unit_log2, 2.0 ** fmt.weight_exp, 2 ** (target.weight_mantissa_bits - 1) - 1)


def _bias_on_grid(b: torch.Tensor, fmt: LayerFormat, target: Target) -> torch.Tensor:
    """Float-unit biases as mantissa * 2**bias_exp, in state units."""
    return _round_to(b * 2.0 ** fmt.unit_log2, 2.0 ** fmt.bias_exp, 2 ** (target.bias_mantissa_bits - 1) - 1)


def _quantise_readout(op: Dense, target: Target):
    """Weights and bias of a graded readout on the fixed-point grid, in float units."""
    fmt = layer_format([op.weight], torch.zeros(1), op.bias, target)
    unit = 2.0 ** fmt.unit_log2
    return Dense(_weight_on_grid(op.weight, fmt, target) / unit, _bias_on_grid(op.bias, fmt, target) / unit,
                 None), fmt


def _ssa_unit(op: SSA) -> float:
    """State units per float unit of an SSA population: its scale becomes 2**ALIGN_BITS."""
    return 2.0 ** ALIGN_BITS / op.scale


def _quantise_op(op, target: Target):
    """The fixed-point twin of one population op, and its format."""
    if isinstance(op, Dense) and op.neuron is None:
        return _quantise_readout(op, target)
    if isinstance(op, SSA):
        unit = _ssa_unit(op)
        fmt = LayerFormat(0, ALIGN_BITS, 0, 1, 2 ** (target.threshold_bits + ALIGN_BITS) - 1)
        return dataclasses.replace(op, scale=2.0 ** ALIGN_BITS,
                                   neuron=_quantise_neuron(op.neuron, fmt, target, unit)), fmt
    fmt = layer_format(_weights(op), op.neuron.threshold, op.bias, target)
    q = lambda w: _weight_on_grid(w, fmt, target)   # noqa: E731
    q_bias = _bias_on_grid(op.bias, fmt, target)
    neuron = _quantise_neuron(op.neuron, fmt, target, 2.0 ** fmt.unit_log2)
    if isinstance(op, Dense):
        return Dense(q(op.weight), q_bias, neuron), fmt
    if isinstance(op, Add):
        return Add(op.features, neuron, q(op.scale_a), q(op.scale_b), q_bias), fmt
    return Encode(op.features, neuron, q(op.gain), q_bias), fmt


def on_grid(op, target: Target):
    """`op` as its fixed-point twin computes it, in float units: every weight, bias and
    threshold moved onto the target's grid and divided back by the layer's unit.
    Fine-tuning trains through this, so the weights it saves are the ones the
    quantiser deploys (quantising them again changes nothing)."""
    quantised, fmt = _quantise_op(op, target)
    if isinstance(op, Dense) and op.neuron is None:
        return quantised
    unit = _ssa_unit(op) if isinstance(op, SSA) else 2.0 ** fmt.unit_log2
    neuron = dataclasses.replace(quantised.neuron, threshold=quantised.neuron.threshold / unit,
                                 value=op.neuron.spike_value.clone())
    if isinstance(op, SSA):
        return dataclasses.replace(op, neuron=neuron)
    scaled = {f.name: getattr(quantised, f.name) / unit for f in dataclasses.fields(quantised)
              if isinstance(getattr(quantised, f.name), torch.Tensor)}
    return dataclasses.replace(quantised, neuron=neuron, **scaled)


def quantisable(spiking: SpikingGraph, name: str) -> bool:
    """On-chip populations and readouts: what carries integer weights on Loihi."""
    node = spiking.graph.nodes[name]
    op = node["op"]
    return not node["host"] and (getattr(op, "neuron", None) is not None or isinstance(op, Dense))


def quantize(spiking: SpikingGraph, target: Target) -> SpikingGraph:
    """A copy of `spiking` in `target`'s fixed point; meta["quantization"] records each layer's format."""
    quantised = SpikingGraph(copy.deepcopy(spiking.graph), copy.deepcopy(spiking.meta))
    formats = {}
    for name in spiking.order():
        if quantisable(spiking, name):
            op, fmt = _quantise_op(spiking.op(name), target)
            quantised.graph.nodes[name]["op"] = op
            formats[name] = asdict(fmt)
    quantised.meta["quantization"] = {"target": target.name, "layers": formats}
    return quantised


@dataclass(frozen=True)
class LayerError:
    """How far one layer's quantised output is from the float graph's on the same text."""
    name: str
    weight_error: float        # relative L2 error of the weights in float units
    output_cosine: float       # decoded outputs, quantised vs float
    spikes_equal: float        # fraction of (token, neuron) spike counts that are identical (nan: graded)
    mantissa_bits_used: int
    weight_exp: int


def _weight_error(float_op, quant_op, unit: float) -> float:
    if getattr(quant_op, "neuron", None) is None:
        unit = 1.0          # readouts keep float units
    pairs = list(zip(_weights(float_op), _weights(quant_op)))
    if not pairs:
        return 0.0
    num = sum(float((q / unit - w).norm() ** 2) for w, q in pairs)
    den = sum(float(w.norm() ** 2) for w, _ in pairs)
    return math.sqrt(num / den) if den else 0.0


def quantisation_error(float_graph: SpikingGraph, quantised: SpikingGraph, token_ids: torch.Tensor,
                       timesteps: int) -> list[LayerError]:
    """Runs both graphs on the same tokens and compares every quantised layer, then the logits."""
    from nxcompile.sim.reference import decode_output, run

    reference = run(float_graph, token_ids, timesteps, keep_values=True).values
    fixed = run(quantised, token_ids, timesteps, keep_values=True).values
    rows = []
    for name, fmt in quantised.meta["quantization"]["layers"].items():
        float_op, quant_op = float_graph.op(name), quantised.op(name)
        cosine = _cosine(decode_output(float_op, reference[name]), decode_output(quant_op, fixed[name]))
        spiking = getattr(quant_op, "neuron", None) is not None
        equal = float((reference[name].sum(2) == fixed[name].sum(2)).float().mean()) if spiking else math.nan
        rows.append(LayerError(name, _weight_error(float_op, quant_op, 2.0 ** fmt["unit_log2"]), cosine, equal,
                               fmt["mantissa_bits_used"], fmt["weight_exp"]))
    logits = quantised.meta["logits_node"]
    rows.append(LayerError(f"{logits} (logits)", 0.0, _cosine(reference[logits], fixed[logits]), math.nan, 0, 0))
    return rows


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten(), b.flatten()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0)) if a.norm() * b.norm() > 0 else 1.0
