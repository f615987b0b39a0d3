"""The integer program of a quantised spiking graph, and the reference simulator's fixed-point mode.

`sim.reference.run` computes in float, on whatever numbers the graph holds. On
Loihi every on-chip number is an integer, so this module defines, once, the
integer arithmetic of every on-chip op; the reference's fixed-point mode
(`run`, below: whole sequences at once, causal attention as a masked batch)
and the Lava backend (`backends.lava_sim`: one token at a time on Lava's
message passing, keys and values held in a KV cache) both execute it, and must
agree bit for bit.

Numbers on chip:
  spikes          integers per step: 0/1, -1/0/+1 or a graded-spike payload
  state           the quantiser's state units (weights m * 2**weight_exp,
                  thresholds, biases): v, currents and thresholds are integers;
                  SSA's count times its power-of-two scale (a rounding shift
                  where the scale is below one)
  graded values   (residual stream, norms, readouts) 24-bit signed payloads
                  with GRADED_FRACTION_BITS fraction bits: value = p / 2**F,
                  saturating at +-2**23 (Loihi 2's graded spike)

Rounding, everywhere: shifts and divisions floor (numpy's >> and //), the
readout's window average rounds half up; v_init * threshold is floored; a
leak keeps trunc(|v| * (4096 - dv) / 4096) with v's sign (Lava's CUBA decay).
Matrix products run in float64, which is exact here (every partial sum stays
below 2**53), so BLAS does the work.
Host ops (embedding, final norm, LM head) stay float: a value crossing from
host to chip is rounded to a payload, one crossing back is divided out.

The graded method's ops (one graded spike per layer and token; formats from
`compiler.quantize.quantize_graded`, docs/graded.md):
  graded-dense    the synapses are Lava's own Dense process: it holds 2m (8-bit
                  mantissas m, sign mode MIXED) and sends (sum 2m x) >> (1 + s);
                  the neuron adds its bias, applies identity or an integer GELU
                  (quadratic pieces fitted to the model's own activation) and
                  rescales to its message (`Requantise`: an integer multiply
                  and a shift, rounding half up, saturating)
  attention       scores q.k, rescaled to 2**-10 units, max subtracted, I-BERT's
                  i-exp, the sum, one integer reciprocal 2**32 // sum,
                  probabilities of PROBABILITY_BITS fraction bits, their sum over
                  the cached values, rescaled to its message
  norm            the integer LayerNorm above, its output in its own format
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from transformers.activations import ACT2FN

from nxcompile.compiler.graph import (SSA, Add, Attention, Dense, Encode, GradedDense, LayerNorm, NeuronModel,
                                      SpikingGraph)
from nxcompile.errors import UsageError
from nxcompile.sim.reference import RunResult, decode_output, execute_node

GRADED_FRACTION_BITS = 10          # resolution 1/1024, range +-8192
GRADED_BITS = 24                   # [Lava] Loihi 2 graded s_out payload
PAYLOAD_LIMIT = 2 ** (GRADED_BITS - 1) - 1
DECAY_UNITS = 4096                 # [Lava] 12-bit decays


@dataclass(frozen=True)
class IntNeuron:
    """A population's integer dynamics (see graph.NeuronModel)."""
    threshold: np.ndarray      # per neuron or one, state units
    v_init: np.ndarray         # floor(v_init * threshold)
    keep: int                  # DECAY_UNITS - dv: what a step's leak keeps of v
    signed: bool
    payload_max: int


@dataclass(frozen=True)
class Requantise:
    """A change of fixed-point scale: x * multiplier / 2**shift, rounded half up (a shift <= 0
    multiplies by 2**-shift), saturated to +-limit."""
    multiplier: int
    shift: int
    limit: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = x * self.multiplier
        x = (x + (1 << (self.shift - 1))) >> self.shift if self.shift > 0 else x << -self.shift
        return np.clip(x, -self.limit, self.limit)


def rescaling(ratio: float, limit: int, multiplier_bits: int = 15) -> Requantise:
    """The Requantise that multiplies by `ratio`: a shift alone for a power of two, else an integer
    multiplier of `multiplier_bits` bits and a shift (I-BERT's dyadic rescaling)."""
    exponent = math.log2(ratio)
    if exponent == round(exponent):
        return Requantise(1, -round(exponent), limit)
    shift = multiplier_bits - 1 - math.floor(exponent)
    return Requantise(round(ratio * 2.0 ** shift), shift, limit)


@dataclass(frozen=True)
class IntOp:
    """One on-chip op as integers. `kind` picks the arithmetic:
    encode / dense / readout / ssa / add / graded-add / norm / graded-dense / attention."""
    kind: str
    neuron: IntNeuron | None = None
    weight: np.ndarray | None = None          # dense, readout [out, in]; encode gain; add (scale_a, scale_b)
    bias: np.ndarray | None = None
    unit_log2: int = 0                        # readout: state units per float unit
    n_head: int = 0
    head_dim: int = 0
    kv_capacity: int = 0
    position_norm: bool = False               # ssa: divide query i's current by i + 1
    norm_weight: np.ndarray | None = None     # norm, payload units
    norm_bias: np.ndarray | None = None
    eps: int = 1                              # norm, 2**(2F) units
    input_scale: np.ndarray | None = None     # norm of a spike train: payload per spike
    input_offset: np.ndarray | None = None
    limit: int = PAYLOAD_LIMIT                # norm: saturation of its output
    acc_shift: int = 0                        # graded-dense: what Lava's Dense shifts sum(m x) right by
    activation: str = "identity"              # graded-dense: identity, or the model's GELU (its name)
    to_gelu: Requantise | None = None         # graded-dense: accumulator -> GELU input
    score: Requantise | None = None           # attention: q.k -> i-exp input; ssa: count -> current
    out: Requantise | None = None             # graded-dense, attention: result -> message
    exact: frozenset = frozenset()            # kernels computed exactly in float64 (the study's ablations)


def to_payload(x: np.ndarray) -> np.ndarray:
    """A float value as a graded payload (round to nearest, saturate)."""
    return np.clip(np.round(np.asarray(x, dtype=np.float64) * 2.0 ** GRADED_FRACTION_BITS),
                   -PAYLOAD_LIMIT, PAYLOAD_LIMIT).astype(np.int64)


def from_payload(p: np.ndarray) -> np.ndarray:
    return np.asarray(p, dtype=np.float64) / 2.0 ** GRADED_FRACTION_BITS


def saturate(p: np.ndarray) -> np.ndarray:
    return np.clip(p, -PAYLOAD_LIMIT, PAYLOAD_LIMIT)


def _integers(t: torch.Tensor, what: str) -> np.ndarray:
    """A tensor the quantiser put on an integer grid, as int64; refuses anything else."""
    a = t.detach().cpu().double().numpy()
    if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
        raise UsageError(f"{what} is not on the fixed-point grid; quantise the graph for a Loihi target "
                         f"(`nxcompile export --target loihi2-sim`) before running it in fixed point")
    return a.astype(np.int64)


def _int_neuron(neuron: NeuronModel, name: str) -> IntNeuron:
    theta = _integers(neuron.threshold, f"{name}: threshold")
    keep = DECAY_UNITS - round(neuron.leak * DECAY_UNITS)
    return IntNeuron(theta, np.floor(neuron.v_init * theta).astype(np.int64), keep, neuron.signed,
                     neuron.payload_max)


def _format(spiking: SpikingGraph, name: str) -> dict:
    """A node's message format from the quantiser (bits, frac: value = payload / 2**frac); what
    has none (host values, the other methods' graded messages) travels in the residual format."""
    layers = spiking.meta.get("quantization", {}).get("layers", {})
    return {"bits": GRADED_BITS, "frac": GRADED_FRACTION_BITS} | layers.get(name, {})


def message_bits(spiking: SpikingGraph, name: str) -> int:
    """The bits of the payload node `name` sends, sign included."""
    return _format(spiking, name)["bits"]


def _limit(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def _exact(spiking: SpikingGraph) -> frozenset:
    return frozenset(spiking.meta.get("quantization", {}).get("precision", {}).get("exact", ()))


def _graded_int_op(spiking: SpikingGraph, name: str, op) -> IntOp:
    """A GradedDense or an Attention as integers, from its format and its sources' formats."""
    fmt = _format(spiking, name)
    if isinstance(op, Attention):
        q, k, v = (_format(spiking, spiking.inputs(name)[p])["frac"] for p in "qkv")
        return IntOp("attention", n_head=op.n_head, head_dim=op.head_dim, kv_capacity=op.kv_capacity,
                     score=rescaling(op.scale * 2.0 ** (EXP_INPUT_FRACTION_BITS - q - k), SCORE_LIMIT),
                     out=rescaling(2.0 ** (fmt["frac"] - PROBABILITY_BITS - v), _limit(fmt["bits"])),
                     exact=_exact(spiking))
    if "acc_frac" not in fmt:
        raise UsageError(f"{name}: graded layer has no fixed-point format; quantise the graph for a Loihi 2 target "
                         f"before running it in fixed point")
    gelu = op.activation != "identity"
    out_ratio = (GELU_UNIT if gelu else 2.0 ** -fmt["acc_frac"]) * 2.0 ** fmt["frac"]
    return IntOp("graded-dense", weight=_integers(op.weight * 2.0 ** -fmt["weight_exp"], f"{name}: weight"),
                 bias=_integers(op.bias * 2.0 ** fmt["acc_frac"], f"{name}: bias"), acc_shift=fmt["acc_shift"],
                 activation=op.activation,
                 to_gelu=rescaling(2.0 ** (GELU_INPUT_FRACTION_BITS - fmt["acc_frac"]), PAYLOAD_LIMIT) if gelu else None,
                 out=rescaling(out_ratio, _limit(fmt["bits"])), exact=_exact(spiking))


def _int_op(spiking: SpikingGraph, name: str) -> IntOp:
    op = spiking.op(name)
    if isinstance(op, (GradedDense, Attention)):
        return _graded_int_op(spiking, name, op)
    if isinstance(op, LayerNorm):
        scale, fmt = op.input_scale, _format(spiking, name)
        unit = 2.0 ** fmt["frac"]
        return IntOp("norm", norm_weight=np.round(op.weight.double().numpy() * unit).astype(np.int64),
                     norm_bias=np.round(op.bias.double().numpy() * unit).astype(np.int64),
                     eps=max(1, round(op.eps * 2.0 ** (2 * GRADED_FRACTION_BITS))),
                     input_scale=to_payload(scale.double().numpy()) if scale.numel() else None,
                     input_offset=to_payload(op.input_offset.double().numpy()) if scale.numel() else None,
                     limit=_limit(fmt["bits"]), exact=_exact(spiking))
    if isinstance(op, Add) and op.neuron is None:
        return IntOp("graded-add")
    if isinstance(op, Dense) and op.neuron is None:
        layers = spiking.meta.get("quantization", {}).get("layers", {})
        if name not in layers:
            raise UsageError(f"{name}: readout has no fixed-point format; quantise the graph for a Loihi target "
                             f"before running it in fixed point")
        unit = layers[name]["unit_log2"]
        return IntOp("readout", weight=_integers(op.weight * 2.0 ** unit, f"{name}: weight"),
                     bias=_integers(op.bias * 2.0 ** unit, f"{name}: bias"), unit_log2=unit)
    neuron = _int_neuron(op.neuron, name)
    if isinstance(op, SSA):
        return IntOp("ssa", neuron, n_head=op.n_head, head_dim=op.head_dim,
                     score=rescaling(op.scale, SCORE_LIMIT),
                     kv_capacity=op.kv_capacity, position_norm=op.position_norm)
    if isinstance(op, Dense):
        return IntOp("dense", neuron, _integers(op.weight, f"{name}: weight"), _integers(op.bias, f"{name}: bias"))
    if isinstance(op, Add):
        scales = torch.stack([op.scale_a.expand(op.features), op.scale_b.expand(op.features)])
        return IntOp("add", neuron, _integers(scales, f"{name}: scales"), _integers(op.bias, f"{name}: bias"))
    if isinstance(op, Encode):
        return IntOp("encode", neuron, _integers(op.gain, f"{name}: gain"), _integers(op.bias, f"{name}: bias"))
    raise UsageError(f"{name}: a {type(op).__name__} cannot run on chip")


def integer_program(spiking: SpikingGraph) -> dict[str, IntOp]:
    """Every on-chip node as integers (host nodes stay float and are not listed)."""
    return {name: _int_op(spiking, name) for name in spiking.order() if not spiking.graph.nodes[name]["host"]}


# ---- kernels shared by both executors -------------------------------------------------------

def matmul(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """x @ weight.T on integers, through float64 BLAS (exact below 2**53)."""
    return np.rint(x.astype(np.float64) @ weight.T.astype(np.float64)).astype(np.int64)


def synaptic_input(x: np.ndarray, graded: bool, weight: np.ndarray) -> np.ndarray:
    """State-unit current from one input: spikes count as integers, a graded payload
    carries F fraction bits that the synapse shifts out."""
    current = matmul(x, weight) if weight.ndim == 2 else x * weight
    return current >> GRADED_FRACTION_BITS if graded else current


def neuron_reset(neuron: IntNeuron, shape: tuple[int, ...]) -> np.ndarray:
    """v at a window's start."""
    return np.broadcast_to(neuron.v_init, shape).astype(np.int64).copy()


def neuron_step(neuron: IntNeuron, v: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One step of the integrate-and-fire family with reset by subtraction: (spikes, new v)."""
    if neuron.keep != DECAY_UNITS:
        v = np.sign(v) * ((np.abs(v) * neuron.keep) >> 12)
    v = v + current
    if neuron.signed:
        s = np.sign(v) * np.minimum(np.abs(v) // neuron.threshold, neuron.payload_max)
    else:
        s = np.clip(v // neuron.threshold, 0, neuron.payload_max)
    return s, v - s * neuron.threshold


def readout_payload(op: IntOp, accumulated: np.ndarray, timesteps: int) -> np.ndarray:
    """A window's summed current (state units) as the graded payload of its mean, rounded half up."""
    denominator = timesteps << op.unit_log2
    return saturate((2 * (accumulated << GRADED_FRACTION_BITS) + denominator) // (2 * denominator))


def window_payload(op: IntOp, spike_sum: np.ndarray, timesteps: int) -> np.ndarray:
    """A norm's spike-train input decoded over the window: mean_t(s) * scale + offset, as a payload."""
    return (2 * spike_sum * op.input_scale + timesteps) // (2 * timesteps) + op.input_offset


def isqrt(x: np.ndarray) -> np.ndarray:
    """floor(sqrt(x)) of non-negative int64, exact (float64 estimate, then corrected)."""
    r = np.floor(np.sqrt(x.astype(np.float64))).astype(np.int64)
    r -= (r * r > x)
    r += ((r + 1) * (r + 1) <= x)
    return r


def layer_norm(op: IntOp, p: np.ndarray) -> np.ndarray:
    """LayerNorm of payloads over the last axis, in integers:
    c = x - floor(mean), std = isqrt(floor(mean(c^2)) + eps), y = floor(c * w / std) + b,
    saturated to the op's limit (w and b in the output's fraction bits)."""
    if "norm" in op.exact:
        x = p.astype(np.float64)
        centred = x - x.mean(-1, keepdims=True)
        y = centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + op.eps) * op.norm_weight + op.norm_bias
        return np.clip(np.round(y), -op.limit, op.limit).astype(np.int64)
    n = p.shape[-1]
    centred = p - p.sum(-1, keepdims=True) // n
    variance = (centred * centred).sum(-1, keepdims=True) // n
    return np.clip(centred * op.norm_weight // isqrt(variance + op.eps) + op.norm_bias, -op.limit, op.limit)


# ---- the graded method's kernels ----------------------------------------------------------------
# exp as in I-BERT (Kim et al., ICML 2021): a second-order polynomial and a shift, on integers.

GELU_INPUT_FRACTION_BITS = 10        # the integer GELU reads x in units of 2**-10
_GELU_SEGMENT_BITS = 8               # pieces of 2**8 input units (0.25) ...
_GELU_SEGMENTS = 16                  # ... covering |x| < 4; beyond, GELU(x) = max(x, 0)
_GELU_H_BITS = 20                    # h(x) = GELU(x) / x in units of 2**-20
_GELU_LINEAR_SHIFT, _GELU_SQUARE_SHIFT = 16, 24    # extra fraction bits of the pieces' coefficients
GELU_UNIT = 2.0 ** -(GELU_INPUT_FRACTION_BITS + _GELU_H_BITS)           # value of one integer_gelu unit
EXP_INPUT_FRACTION_BITS = 10         # i-exp reads x <= 0 in units of 2**-10
_EXP_INPUT_UNIT = 2.0 ** -EXP_INPUT_FRACTION_BITS
_EXP_X0_INT = math.floor(-0.6931 / _EXP_INPUT_UNIT)                      # -ln 2
_EXP_COEF = (0.35815147, 0.96963238, 1.0)                                # exp(r) ~ a r^2 + b r + c on (-ln 2, 0]
_EXP_B_INT = math.floor(_EXP_COEF[1] / _EXP_COEF[0] / _EXP_INPUT_UNIT)
_EXP_C_INT = math.floor(_EXP_COEF[2] / _EXP_COEF[0] / _EXP_INPUT_UNIT ** 2)
EXP_UNIT = _EXP_COEF[0] * _EXP_INPUT_UNIT ** 2                           # value of one i_exp unit
_EXP_MAX_HALVINGS = 30               # I-BERT's clamp: exp(x) for x < 30 (-ln 2) rounds to 0 anyway
PROBABILITY_BITS = 15                # attention probabilities in units of 2**-15
_RECIPROCAL_BITS = 48                # one reciprocal per query, 2**48 // sum of exps: >= 16 bits for 1,024 keys
SCORE_LIMIT = 2 ** 40


@functools.lru_cache(maxsize=None)
def gelu_table(activation: str) -> np.ndarray:
    """[16, 3] integer coefficients of h(x) = GELU(x) / x (the model's own `activation`) on |x| < 4:
    on piece k, h ~ c0 + c1 t + c2 t^2 with t the input units into the piece, least squares,
    in units of 2**-20 (c1, c2 with 16 and 24 more fraction bits). Max error of GELU 7e-5 for
    gpt2's gelu_new (I-BERT's i-GELU: 0.018)."""
    t = np.arange(1 << _GELU_SEGMENT_BITS, dtype=np.float64)
    rows = []
    for k in range(_GELU_SEGMENTS):
        x = torch.from_numpy((k * (1 << _GELU_SEGMENT_BITS) + t) / 2.0 ** GELU_INPUT_FRACTION_BITS)
        x[x == 0] = 1e-9                                         # h(0) is the limit, 1/2
        h = (ACT2FN[activation](x) / x).numpy()
        c2, c1, c0 = np.polyfit(t, h, 2)
        rows.append((round(c0 * 2 ** _GELU_H_BITS), round(c1 * 2 ** (_GELU_H_BITS + _GELU_LINEAR_SHIFT)),
                     round(c2 * 2 ** (_GELU_H_BITS + _GELU_SQUARE_SHIFT))))
    return np.array(rows, dtype=np.int64)


def integer_gelu(op: IntOp, g: np.ndarray) -> np.ndarray:
    """GELU(x) of x = g / 2**10 in units of GELU_UNIT: x h(|x|) for x >= 0 and x (1 - h(|x|)) below
    (GELU(x) / x is symmetric about 1/2), h from `gelu_table` (the piece chosen by a shift, a
    quadratic in the offset into it), h = 1 beyond |x| >= 4."""
    if "gelu" in op.exact:
        x = torch.from_numpy(g / 2.0 ** GELU_INPUT_FRACTION_BITS)
        return np.round(ACT2FN[op.activation](x).numpy() / GELU_UNIT).astype(np.int64)
    table = gelu_table(op.activation)
    u = np.minimum(np.abs(g), (_GELU_SEGMENTS << _GELU_SEGMENT_BITS) - 1)
    k, t = u >> _GELU_SEGMENT_BITS, u & ((1 << _GELU_SEGMENT_BITS) - 1)
    h = table[k, 0] + ((table[k, 1] * t) >> _GELU_LINEAR_SHIFT) + ((table[k, 2] * t * t) >> _GELU_SQUARE_SHIFT)
    h = np.where(np.abs(g) >= _GELU_SEGMENTS << _GELU_SEGMENT_BITS, 1 << _GELU_H_BITS, h)
    return g * np.where(g >= 0, h, (1 << _GELU_H_BITS) - h)


def i_exp(op: IntOp, x: np.ndarray) -> np.ndarray:
    """exp(x) of x = payload / 2**10 <= 0, in units of EXP_UNIT (I-BERT's i-exp: x = -q ln2 + r,
    exp(r) a second-order polynomial on (-ln 2, 0], then q halvings as a shift)."""
    x = np.maximum(x, _EXP_MAX_HALVINGS * _EXP_X0_INT)
    if "exp" in op.exact:
        return np.round(np.exp(x * _EXP_INPUT_UNIT) / EXP_UNIT).astype(np.int64)
    q = x // _EXP_X0_INT
    r = x - _EXP_X0_INT * q
    return ((r + _EXP_B_INT) * r + _EXP_C_INT) >> q


def dense_accumulate(x: np.ndarray, mantissas: np.ndarray, shift: int) -> np.ndarray:
    """What Lava's Dense sends a graded neuron: it holds 2m (sign mode MIXED keeps even weights) and
    weight_exp = -(1 + shift), so a = (sum 2m x) >> (1 + shift) = floor(sum m x / 2**shift)."""
    return matmul(x, 2 * mantissas) >> (1 + shift)


def graded_neuron(op: IntOp, accumulated: np.ndarray) -> np.ndarray:
    """A GradedDense neuron's message from its Dense's accumulation: bias, activation, rescale."""
    v = accumulated + op.bias
    if op.activation != "identity":
        v = integer_gelu(op, op.to_gelu(v))
    return op.out(v)


def attend(op: IntOp, q: np.ndarray, keys: np.ndarray, values: np.ndarray,
           visible: np.ndarray | None = None) -> np.ndarray:
    """Softmax attention of queries q [..., Sq, H*hd] over cached keys and values [..., Sk, H*hd]
    (payloads), `visible` [Sq, Sk] the keys each query may see (None: all): integer scores,
    max subtracted, i-exp, one reciprocal per query, probabilities times values, rescaled."""
    heads = lambda x: ssa_heads(op, x).astype(np.float64)        # noqa: E731   [..., S, H, hd]
    scores = op.score(np.rint(np.einsum("...ihd,...jhd->...hij", heads(q), heads(keys))).astype(np.int64))
    if visible is not None:
        scores = np.where(visible, scores, -SCORE_LIMIT)
    exps = i_exp(op, scores - scores.max(-1, keepdims=True))
    if visible is not None:
        exps = np.where(visible, exps, 0)
    reciprocal = (1 << _RECIPROCAL_BITS) // exps.sum(-1, keepdims=True)
    probabilities = (exps * reciprocal) >> (_RECIPROCAL_BITS - PROBABILITY_BITS)
    out = np.rint(np.einsum("...hij,...jhd->...ihd", probabilities.astype(np.float64), heads(values)))
    return op.out(out.astype(np.int64)).reshape(q.shape)


def query_neuron(op: IntOp, positions) -> IntNeuron:
    """The SSA neuron of the queries at `positions` (0-based: an array [S, 1], or one token's
    index). With position_norm its threshold and initial voltage are (i + 1) times the stored
    ones, which divides query i's current by the number of keys it attends to without rounding."""
    if not op.position_norm:
        return op.neuron
    factor = np.asarray(positions, dtype=np.int64) + 1
    return dataclasses.replace(op.neuron, threshold=op.neuron.threshold * factor, v_init=op.neuron.v_init * factor)


def ssa_heads(op: IntOp, x: np.ndarray) -> np.ndarray:
    """[..., H*hd] -> [..., H, hd]."""
    return x.reshape(x.shape[:-1] + (op.n_head, op.head_dim))


# ---- the reference's fixed-point mode: whole sequences ------------------------------------------

def _is_spike_train(x: np.ndarray) -> bool:
    return x.ndim == 4


def _current(op: IntOp, inputs: dict[str, np.ndarray], timesteps: int) -> np.ndarray:
    """[B, S, T, N] state-unit input current of a population."""
    if op.kind == "ssa":
        return _ssa_current(op, inputs["q"], inputs["k"], inputs["v"])
    if op.kind == "add":
        terms = [synaptic_input(inputs[port], not _is_spike_train(inputs[port]), op.weight[i])
                 for i, port in enumerate("ab")]
        current = sum(t if t.ndim == 4 else t[:, :, None] for t in terms) + op.bias
    else:
        x = inputs["x"]
        current = synaptic_input(x, not _is_spike_train(x), op.weight)
        current = (current if current.ndim == 4 else current[:, :, None]) + op.bias
    return np.broadcast_to(current, current.shape[:2] + (timesteps,) + current.shape[3:])


def _ssa_current(op: IntOp, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """scale * sum_{j <= i} (Q_i[t] . K_j[t]) V_j[t], as a causal mask over the whole sequence."""
    qh, kh, vh = (ssa_heads(op, x).astype(np.float64) for x in (q, k, v))     # [B, S, T, H, hd]
    scores = np.einsum("bithd,bjthd->bthij", qh, kh)
    scores *= np.tril(np.ones((q.shape[1], q.shape[1])))
    out = np.einsum("bthij,bjthd->bithd", scores, vh)
    return op.score(np.rint(out).astype(np.int64).reshape(q.shape))


def _fire(neuron: IntNeuron, current: np.ndarray) -> np.ndarray:
    v = neuron_reset(neuron, current[:, :, 0].shape)
    spikes = np.empty_like(current)
    for t in range(current.shape[2]):
        spikes[:, :, t], v = neuron_step(neuron, v, current[:, :, t])
    return spikes


def execute(op: IntOp, inputs: dict[str, np.ndarray], timesteps: int) -> np.ndarray:
    """One on-chip op on whole sequences: spike trains [B, S, T, N] or payloads [B, S, N]."""
    if op.kind == "graded-add":
        return saturate(inputs["a"] + inputs["b"])
    if op.kind == "graded-dense":
        return graded_neuron(op, dense_accumulate(inputs["x"], op.weight, op.acc_shift))
    if op.kind == "attention":
        s = inputs["q"].shape[1]
        return attend(op, inputs["q"], inputs["k"], inputs["v"], np.tril(np.ones((s, s), dtype=bool)))
    if op.kind == "norm":
        x = inputs["x"]
        return layer_norm(op, window_payload(op, x.sum(2), timesteps) if _is_spike_train(x) else x)
    current = _current(op, inputs, timesteps)
    if op.kind == "readout":
        return readout_payload(op, current.sum(2), timesteps)
    if op.kind == "ssa":
        return _fire(query_neuron(op, np.arange(current.shape[1])[:, None]), current)
    return _fire(op.neuron, current)


def _from_host(value: torch.Tensor) -> np.ndarray:
    return to_payload(value.detach().cpu().double().numpy())


def to_host(op, value: np.ndarray, timesteps: int) -> torch.Tensor:
    """What a chip node sends the host, as the float64 value the host computes on: a graded
    payload divided out, or a spike train's window sum [..., N] decoded (mean * spike value + offset)."""
    neuron = getattr(op, "neuron", None)
    if neuron is None:
        return torch.from_numpy(from_payload(value))
    return torch.from_numpy(value / timesteps) * neuron.spike_value.double() + neuron.offset.double()


def in_float64(op):
    """A host op computing in float64: after the chip, the host's results then do not depend on
    how many tokens one matrix product holds (the Lava run feeds one at a time), once rounded
    back to float32."""
    return dataclasses.replace(op, **{f.name: getattr(op, f.name).double() for f in dataclasses.fields(op)
                                      if isinstance(getattr(op, f.name), torch.Tensor)})


def run(spiking: SpikingGraph, token_ids: torch.Tensor, timesteps: int, keep_values: bool = False):
    """The graph on token ids [B, S] in Loihi's integers: the Lava run's twin.
    Returns a `sim.reference.RunResult` (values: int64 arrays for on-chip nodes)."""
    if timesteps <= 0:
        raise UsageError(f"timesteps must be > 0, got {timesteps}")
    started = time.perf_counter()
    program = integer_program(spiking)
    values: dict[str, object] = {}
    rate, count, hidden = {}, {}, {}
    block_of_output = {name: b for b, name in enumerate(spiking.meta["block_outputs"])}
    for name in spiking.order():
        sources = spiking.inputs(name)
        if name in program:
            inputs = {port: values[s] if s in program else _from_host(values[s]) for port, s in sources.items()}
            out = execute(program[name], inputs, timesteps)
            if _is_spike_train(out):
                rate[name] = float(np.abs(out).mean())
                count[name] = float(np.abs(out).sum())
        else:
            inputs = {port: to_host(spiking.op(s), _window_sum(values[s]), timesteps) if s in program else values[s]
                      for port, s in sources.items()}
            after_chip = any(x.dtype == torch.float64 for x in inputs.values())
            out = execute_node(in_float64(spiking.op(name)) if after_chip else spiking.op(name), inputs,
                               token_ids, timesteps)
        values[name] = out
        if name in block_of_output:
            hidden[block_of_output[name]] = _graded_value(spiking, name, out)
    logits = values[spiking.meta["logits_node"]].float()
    return RunResult(logits, rate, count, hidden, timesteps, time.perf_counter() - started,
                     values if keep_values else {})


def _window_sum(value: np.ndarray) -> np.ndarray:
    return value.sum(2) if _is_spike_train(value) else value


def _graded_value(spiking: SpikingGraph, name: str, out) -> torch.Tensor:
    """A block output as the float value it stands for."""
    if isinstance(out, torch.Tensor):
        return out
    if _is_spike_train(out):
        return decode_output(spiking.op(name), torch.from_numpy(out).float())
    return torch.from_numpy(from_payload(out)).float()

