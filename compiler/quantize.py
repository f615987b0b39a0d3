"""Quantisation: a float spiking graph -> the same graph in Loihi fixed point.

Every on-chip population moves to integer units, per layer (as Loihi stores it):

    weight  w_q = m * 2**weight_exp       m: signed `weight_mantissa_bits` integer
    thresh  theta_q = round(theta * u)    u = 2**(k + weight_exp), one per layer
    bias    b_q = mb * 2**bias_exp        mb: signed `bias_mantissa_bits` integer
    leak    a multiple of 1/2**decay_bits

k is the largest power of two that still fits the largest weight into the
mantissa (m = round(w * 2**k)), so every layer uses its full weight precision
(a Dense cut by a weight grid: its layer's narrower width, its pruned synapses zero);
weight_exp = 6 aligns thresholds and biases 6 bits finer than the weights, as
Loihi's own state does (Lava's fixed-point models shift by 6), unless the
threshold would then overflow `threshold_bits` + 6 bits. Dividing a whole
population's dynamics by one positive number changes none of its spikes, so the
spike train is what the float graph makes up to rounding; a spike's value
downstream (folded into the next weights) is kept in `NeuronModel.value`.

SSA has no weights: its current is the integer count sum_j (Q.K_j) V_j times
`scale`; its scale becomes 2**6 and each threshold theta / scale * 2**6 (a smaller
power of two, a rounding shift on chip, where a threshold would overflow its bits).

An on-chip Dense without neurons (a graded readout such as an attention or MLP
output projection) gets the same weight and bias grid, kept in float units
(w_q / u), since its graded output is a value, not a spike count. Graded
messages (LayerNorm outputs) stay float here: their payload format is the Lava
backend's. Quantising a quantised graph changes nothing, so
weights fine-tuned against this quantiser pass through unchanged.

The graded method (`quantize_graded`) sizes every message instead: a payload
of b bits with f fraction bits (value = p / 2**f), f the most that still holds
the message's calibrated range. Messages into synapses carry 16 bits (fewer
where the Dense's int32 accumulation could otherwise overflow), keys and values
8 (the KV cache), the residual stream 24 with the fraction bits every method
shares. A GradedDense keeps 8-bit weight mantissas m with a per-layer exponent
(w = m * 2**-k) and accumulates sum(m x) >> s, s the fewest bits that keep the
sum within the neuron's 24-bit state; its bias lives on that accumulator's grid.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from nxcompile.compiler.graph import (RESIDUAL_FORMAT, SSA, AccumulatorFormat, Add, Attention, Dense, Encode,
                                      GradedDense, GradedPrecision, MessageFormat, NeuronModel, PopulationFormat,
                                      Quantization, SpikingGraph)
from nxcompile.compiler.targets import Target
from nxcompile.errors import UsageError
from nxcompile.sim.fixed_point import limit_of

ALIGN_BITS = 6   # Lava's fixed-point LIF/Dense: threshold and activation MSB-aligned by 6 bits


def _round_to(x: torch.Tensor, step: float, limit: int) -> torch.Tensor:
    """x rounded to a multiple of `step`, the multiple clipped to [-limit, limit]."""
    return torch.clamp(torch.round(x / step), -limit, limit) * step


def layer_format(weights: list[torch.Tensor], threshold: torch.Tensor, bias: torch.Tensor,
                 target: Target, weight_bits: int | None = None) -> PopulationFormat:
    """The per-layer scaling: full weight mantissas (`weight_bits` signed, else the target's),
    thresholds and biases within their bits.
    Where a bias would overflow its mantissa at the largest exponent (a population reading
    graded spikes has tiny folded weights, hence a large unit, beside a bias of ordinary
    size), the weights give up mantissa bits instead: clipping the bias would move every
    neuron's operating point (a GELU hinge's breakpoint, an encoder's offset)."""
    largest = max(float(w.abs().max()) for w in weights) if weights else 0.0
    mantissa_max = limit_of(weight_bits or target.weight_mantissa_bits)
    k = math.floor(math.log2(mantissa_max / largest)) if largest > 0 else 0
    threshold_limit = 2 ** (target.threshold_bits + ALIGN_BITS) - 1
    bias_limit = limit_of(target.bias_mantissa_bits)
    bias_exp_max = 2 ** target.bias_exponent_bits - 1
    largest_bias = float(bias.abs().max()) if bias.numel() else 0.0
    bias_fits = lambda unit: largest_bias * unit <= bias_limit * 2.0 ** bias_exp_max   # noqa: E731
    weight_exp = ALIGN_BITS
    while weight_exp > 0 and (float(threshold.max()) * 2.0 ** (k + weight_exp) > threshold_limit
                              or not bias_fits(2.0 ** (k + weight_exp))):
        weight_exp -= 1
    while largest * 2.0 ** k >= 2 and not bias_fits(2.0 ** (k + weight_exp)):
        k -= 1
    unit = 2.0 ** (k + weight_exp)
    scaled_bias = largest_bias * unit
    bias_exp = max(0, math.ceil(math.log2(scaled_bias / bias_limit))) if scaled_bias > bias_limit else 0
    bias_exp = min(bias_exp, bias_exp_max)
    used = max(1, math.ceil(math.log2(largest * 2.0 ** k + 1)) + 1) if largest > 0 else 1
    return PopulationFormat(weight_exp, k + weight_exp, bias_exp, used, threshold_limit)


def _quantise_neuron(neuron: NeuronModel, fmt: PopulationFormat, target: Target, unit: float) -> NeuronModel:
    threshold = torch.clamp(torch.round(neuron.threshold * unit), 1, fmt.threshold_max)
    decay_steps = 2 ** target.decay_bits
    return NeuronModel(threshold=threshold, leak=round(neuron.leak * decay_steps) / decay_steps,
                       signed=neuron.signed, v_init=neuron.v_init, offset=neuron.offset,
                       payload_max=neuron.payload_max, value=neuron.spike_value.clone())


def _weights(op) -> list[torch.Tensor]:
    if isinstance(op, (Dense, GradedDense)):
        return [op.weight]
    if isinstance(op, Add):
        return [op.scale_a, op.scale_b]
    if isinstance(op, Encode):
        return [op.gain]
    return []


def _weight_on_grid(w: torch.Tensor, fmt: PopulationFormat, weight_bits: int) -> torch.Tensor:
    """Float-unit weights as signed `weight_bits` mantissas * 2**weight_exp, in state units."""
    return _round_to(w * 2.0 ** fmt.unit_log2, 2.0 ** fmt.weight_exp, limit_of(weight_bits))


def _bias_on_grid(b: torch.Tensor, fmt: PopulationFormat, target: Target) -> torch.Tensor:
    """Float-unit biases as mantissa * 2**bias_exp, in state units."""
    return _round_to(b * 2.0 ** fmt.unit_log2, 2.0 ** fmt.bias_exp, limit_of(target.bias_mantissa_bits))


def _quantise_readout(op: Dense, target: Target, weight_bits: int):
    """Weights and bias of a graded readout on the fixed-point grid, in float units."""
    fmt = layer_format([op.weight], torch.zeros(1), op.bias, target, weight_bits)
    unit = 2.0 ** fmt.unit_log2
    return Dense(_weight_on_grid(op.weight, fmt, weight_bits) / unit, _bias_on_grid(op.bias, fmt, target) / unit,
                 None), fmt


def _ssa_unit(op: SSA, target: Target) -> float:
    """State units per float unit of an SSA population: its scale becomes 2**ALIGN_BITS, or a smaller
    power of two where its thresholds would not fit their bits otherwise (graded Q, K and V: a
    coincidence counts up to 255**3, so the float scale is 255**3 times smaller)."""
    limit = 2 ** (target.threshold_bits + ALIGN_BITS) - 1
    unit = 2.0 ** ALIGN_BITS / op.scale
    while float(op.neuron.threshold.max()) * unit > limit:
        unit /= 2
    return unit


def _quantise_op(op, target: Target, weight_bits: int = 8, fraction: float = 0.0):
    """The fixed-point twin of one population op, and its format. A rate-coded Dense (a population
    or a readout) may be cut: `fraction` of each neuron's synapses pruned by magnitude, its
    mantissas `weight_bits` wide (at most the target's); other ops keep the target's width."""
    bits = min(weight_bits, target.weight_mantissa_bits) if isinstance(op, Dense) else target.weight_mantissa_bits
    if isinstance(op, Dense) and fraction > 0:
        op = dataclasses.replace(op, weight=pruned(op.weight, fraction))
    if isinstance(op, Dense) and op.neuron is None:
        return _quantise_readout(op, target, bits)
    if isinstance(op, SSA):
        unit = _ssa_unit(op, target)
        fmt = PopulationFormat(0, ALIGN_BITS, 0, 1, 2 ** (target.threshold_bits + ALIGN_BITS) - 1)
        return dataclasses.replace(op, scale=op.scale * unit,
                                   neuron=_quantise_neuron(op.neuron, fmt, target, unit)), fmt
    fmt = layer_format(_weights(op), op.neuron.threshold, op.bias, target, bits)
    q = lambda w: _weight_on_grid(w, fmt, bits)   # noqa: E731
    q_bias = _bias_on_grid(op.bias, fmt, target)
    neuron = _quantise_neuron(op.neuron, fmt, target, 2.0 ** fmt.unit_log2)
    if isinstance(op, Dense):
        return Dense(q(op.weight), q_bias, neuron), fmt
    if isinstance(op, Add):
        return Add(op.features, neuron, q(op.scale_a), q(op.scale_b), q_bias), fmt
    return Encode(op.features, neuron, q(op.gain), q_bias), fmt


def on_grid(op, target: Target, weight_bits: int = 8, fraction: float = 0.0):
    """`op` as its fixed-point twin computes it, in float units: every weight, bias and
    threshold moved onto the target's grid (a Dense's cut as `_quantise_op` cuts it) and
    divided back by the layer's unit. Fine-tuning trains through this, so the weights it
    saves are the ones the quantiser deploys (quantising them again changes nothing)."""
    quantised, fmt = _quantise_op(op, target, weight_bits, fraction)
    if isinstance(op, Dense) and op.neuron is None:
        return quantised
    unit = _ssa_unit(op, target) if isinstance(op, SSA) else 2.0 ** fmt.unit_log2
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
    return not node["host"] and (getattr(op, "neuron", None) is not None or isinstance(op, (Dense, GradedDense)))


def _sizes_messages(spiking: SpikingGraph) -> bool:
    """Whether the graph computes on graded payloads whose formats the quantiser sizes node by node
    (GradedDense and softmax Attention: the graded method), rather than on spike counts."""
    return any(isinstance(spiking.op(n), (GradedDense, Attention)) for n in spiking.graph.nodes)


def quantize(spiking: SpikingGraph, target: Target, precision: GradedPrecision | None = None,
             grams: dict[str, torch.Tensor] | None = None) -> SpikingGraph:
    """A copy of `spiking` in `target`'s fixed point; its `quantization` records each layer's format.
    `precision` narrows and prunes weight layers and chooses their rounding (for the rate-coded
    methods' Dense: magnitude and nearest only), and sets the graded payloads' bit widths (default:
    the grid the graph was fitted or fine-tuned for; recorded where it cuts anything); Wanda
    pruning and GPTQ rounding read each cut layer's input Gram matrix X^T X on calibration text
    (`grams`, from `compiler.fit.input_grams`)."""
    grid = precision or spiking.weight_grid()
    if _sizes_messages(spiking):
        return quantize_graded(spiking, target, grid, grams)
    if grid.pruning != "magnitude" or grid.rounding != "nearest":
        raise UsageError("the rate-coded methods' layers are pruned by magnitude and rounded to nearest "
                         "(Wanda and GPTQ weigh graded inputs: --method graded)")
    quantised = spiking.copy()
    formats = {}
    for name in spiking.order():
        if quantisable(spiking, name):
            op, fmt = _quantise_op(spiking.op(name), target, grid.weight_bits_of(name), grid.sparsity_of(name))
            quantised.graph.nodes[name]["op"] = op
            formats[name] = fmt
    quantised.quantization = Quantization(target.name, formats, grid if grid != GradedPrecision() else None)
    return quantised


# ---- the graded method ----------------------------------------------------------------------

ACCUMULATOR_BITS = 24          # a graded neuron's state (Lava's 24-bit state), sign included
DENSE_DOT_BITS = 32            # Lava's Dense accumulates sum(w x) in int32 before its weight_exp shift


def _exponent(weight: torch.Tensor, bits: int) -> int:
    """k with weight ~ m * 2**-k, the largest |m| filling `bits` signed bits."""
    largest = float(weight.abs().max())
    return math.floor(math.log2(limit_of(bits) / largest)) if largest > 0 else 0


def _mantissas(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, int]:
    """Signed `bits`-bit mantissas m, rounded to nearest, and the exponent k: weight ~ m * 2**-k."""
    k, limit = _exponent(weight, bits), limit_of(bits)
    return torch.clamp(torch.round(weight * 2.0 ** k), -limit, limit), k


GPTQ_DAMPING = 0.01            # of the Gram matrix's mean diagonal, as GPTQ's reference code


def gptq_mantissas(weight: torch.Tensor, bits: int, gram: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mantissas chosen one input at a time, each one's rounding error spread over the inputs not
    yet rounded so that the layer's output on the calibration inputs (X^T X = `gram`) moves least
    (GPTQ: Frantar et al., ICLR 2023). Zero weights (pruned) stay zero, their neighbours absorbing
    what they carried, as SparseGPT does with a fixed mask. The exponent is nearest rounding's."""
    k, limit = _exponent(weight, bits), limit_of(bits)
    w = weight.double() * 2.0 ** k                         # in units of the grid
    kept = weight != 0
    h = gram.double().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    h += GPTQ_DAMPING * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype)
    upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    mantissas = torch.zeros_like(w)
    for i in range(w.shape[1]):
        column = torch.where(kept[:, i], torch.clamp(torch.round(w[:, i]), -limit, limit), 0.0)
        error = (w[:, i] - column) / upper[i, i]
        w[:, i:] -= error[:, None] * upper[i, i:][None, :]
        mantissas[:, i] = column
    return mantissas.to(weight.dtype), k


def pruned(weight: torch.Tensor, fraction: float, input_norm: torch.Tensor | None = None) -> torch.Tensor:
    """`weight` [out, in] with each output neuron's `fraction` least important synapses zero:
    importance |w|, or |w| * ||x_in|| with the input's norm (Wanda, which compares per output
    too). Per neuron, so that every neuron keeps the same fan-in."""
    drop = round(fraction * weight.shape[1])
    if drop == 0:
        return weight
    importance = weight.abs() * (input_norm[None, :] if input_norm is not None else 1.0)
    return weight.scatter(1, importance.topk(drop, dim=1, largest=False).indices, 0.0)


def graded_on_grid(op: GradedDense, bits: int, fraction: float) -> GradedDense:
    """A GradedDense with its weights as the graded quantiser deploys them when it prunes by
    magnitude and rounds to nearest, in float units. Fine-tuning on a cut grid trains through this;
    a graph of such weights quantises to itself (its zeros are the least |w|, its values on the grid)."""
    mantissas, k = _mantissas(pruned(op.weight, fraction), bits)
    return dataclasses.replace(op, weight=mantissas * 2.0 ** -k)


def _gram_of(name: str, grams: dict[str, torch.Tensor], why: str) -> torch.Tensor:
    if name not in grams:
        raise UsageError(f"{why} of {name} needs its input's Gram matrix on calibration text "
                         f"(compiler.fit.input_grams); or prune by magnitude and round to nearest")
    return grams[name]


def _layer_mantissas(spiking: SpikingGraph, name: str, precision: GradedPrecision,
                     grams: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """A GradedDense's pruned synapses zeroed, then its weights rounded: GPTQ where asked and the
    layer is cut (narrowed or pruned; at 8 bits dense nearest rounding loses nothing measurable)."""
    weight, fraction, bits = spiking.op(name).weight, precision.sparsity_of(name), precision.weight_bits_of(name)
    if fraction > 0 and precision.pruning == "wanda":
        weight = pruned(weight, fraction, _gram_of(name, grams, "Wanda pruning").diagonal().sqrt().to(weight.dtype))
    else:
        weight = pruned(weight, fraction)
    if precision.rounding == "gptq" and (fraction > 0 or bits < 8):
        return gptq_mantissas(weight, bits, _gram_of(name, grams, "GPTQ rounding"))
    return _mantissas(weight, bits)


def _dot_bits(mantissas: torch.Tensor) -> int:
    """The widest input payload (bits, sign included) for which Lava's Dense, holding 2m (sign mode
    MIXED), cannot overflow its int32 sum: 2 * max_row sum|m| * (2**(b-1) - 1) < 2**31."""
    row_l1 = int(mantissas.abs().sum(dim=1).max())
    return max(2, int(math.floor(math.log2(limit_of(DENSE_DOT_BITS) / (2 * max(1, row_l1))))) + 1)


def _fraction_bits(bits: int, value_range: float) -> int:
    """The most fraction bits with which `value_range` fits a signed `bits`-bit payload, one bit of
    headroom left above the calibrated range for 16 bits and more."""
    headroom = 1 if bits >= 16 else 0
    return bits - 1 - headroom - (math.ceil(math.log2(value_range)) if value_range > 0 else 0)


def _residual(spiking: SpikingGraph, name: str) -> bool:
    """Whether a node's message travels in the residual stream's format (into an add or to the host)."""
    graph = spiking.graph
    return isinstance(spiking.op(name), Add) or any(
        isinstance(spiking.op(c), Add) or graph.nodes[c]["host"] for c in graph.successors(name))


def _message_format(spiking: SpikingGraph, name: str, dot_bits: dict[str, int],
                    precision: GradedPrecision) -> MessageFormat:
    """bits and fraction bits of the one message a node sends per token."""
    if _residual(spiking, name):
        return RESIDUAL_FORMAT
    bits = precision.activation_bits
    for _, consumer, data in spiking.graph.out_edges(name, data=True):
        if isinstance(spiking.op(consumer), Attention) and data["port"] in "kv":
            bits = min(bits, precision.kv_bits)
        elif consumer in dot_bits:
            bits = min(bits, dot_bits[consumer])
    return MessageFormat(bits, _fraction_bits(bits, spiking.op(name).out_range))


def quantize_graded(spiking: SpikingGraph, target: Target, precision: GradedPrecision,
                    grams: dict[str, torch.Tensor] | None = None) -> SpikingGraph:
    """The graded method in fixed point: each on-chip node's message format, each GradedDense's weight
    mantissas (its pruned synapses zero) and accumulator shift; weights and biases moved onto their
    grids (in float units)."""
    if precision.activation_bits > target.graded_payload_bits or precision.kv_bits > target.graded_payload_bits:
        raise ValueError(f"{target.name} carries graded payloads of at most {target.graded_payload_bits} bits")
    quantised = spiking.copy()
    chip = [n for n in spiking.order() if not spiking.graph.nodes[n]["host"]]
    dense = {n: _layer_mantissas(spiking, n, precision, grams or {}) for n in chip
             if isinstance(spiking.op(n), GradedDense)}
    dot_bits = {n: _dot_bits(m) for n, (m, _) in dense.items()}
    formats: dict[str, MessageFormat] = {}
    for name in chip:
        formats[name] = _message_format(spiking, name, dot_bits, precision)
        if name in dense:
            formats[name] = fmt = _accumulator(spiking, name, dense[name], formats)
            op = spiking.op(name)
            unit = 2.0 ** fmt.acc_frac
            limit = limit_of(ACCUMULATOR_BITS)
            bias = torch.clamp(torch.round(op.bias * unit), -limit, limit) / unit
            quantised.graph.nodes[name]["op"] = dataclasses.replace(op, weight=dense[name][0] * 2.0 ** -dense[name][1],
                                                                    bias=bias)
    quantised.quantization = Quantization(target.name, formats, precision)
    return quantised


def _accumulator(spiking: SpikingGraph, name: str, dense: tuple[torch.Tensor, int],
                 formats: dict[str, MessageFormat]) -> AccumulatorFormat:
    """A GradedDense's message format (already in `formats`) and how it accumulates: input format,
    weight exponent and the shift s that keeps sum(m x) >> s within the neuron's state; acc_frac is
    the sum's fraction bits after it."""
    source = formats.get(spiking.inputs(name)["x"], RESIDUAL_FORMAT)       # host: the residual's
    mantissas, k = dense
    worst = int(mantissas.abs().sum(dim=1).max()) * limit_of(source.bits)
    shift = max(0, worst.bit_length() - (ACCUMULATOR_BITS - 1))
    return AccumulatorFormat(formats[name].bits, formats[name].frac, source.bits, source.frac, -k, shift,
                             source.frac + k - shift, max(1, int(mantissas.abs().max()).bit_length() + 1))


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
        unit = 1.0          # readouts and graded layers keep float units
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
    for name, fmt in quantised.quantization.layers.items():
        float_op, quant_op = float_graph.op(name), quantised.op(name)
        cosine = _cosine(decode_output(float_op, reference[name]), decode_output(quant_op, fixed[name]))
        spiking = getattr(quant_op, "neuron", None) is not None
        equal = float((reference[name].sum(2) == fixed[name].sum(2)).float().mean()) if spiking else math.nan
        rows.append(LayerError(name, _weight_error(float_op, quant_op, 2.0 ** getattr(fmt, "unit_log2", 0)), cosine,
                               equal, getattr(fmt, "mantissa_bits_used", 0), getattr(fmt, "weight_exp", 0)))
    logits = quantised.meta["logits_node"]
    rows.append(LayerError(f"{logits} (logits)", 0.0, _cosine(reference[logits], fixed[logits]), math.nan, 0, 0))
    return rows


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten(), b.flatten()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0)) if a.norm() * b.norm() > 0 else 1.0
