"""The integer program of a quantised spiking graph, and the reference simulator's fixed-point mode.

`sim.reference.run` computes in float, on whatever numbers the graph holds. On
Loihi every on-chip number is an integer, so this module defines, once, the
integer arithmetic of every on-chip op: one small dataclass per op (its fields
the op's integers, its docstring the integer equation, its methods the
arithmetic). The reference's fixed-point mode (`run`, below: whole sequences at
once, causal attention as a masked batch) calls each op's `execute`; the Lava
backend (`backends.lava_processes`: one step at a time on Lava's message
passing, keys and values held in a KV cache) calls the same op's per-step and
per-token methods. The two must agree bit for bit.

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
leak keeps trunc(|v| * (2**DECAY_BITS - dv) / 2**DECAY_BITS) with v's sign
(Lava's CUBA decay). Matrix products run in float64, which is exact here
(every partial sum stays below 2**53), so BLAS does the work.
Host ops (embedding, final norm, LM head) stay float: a value crossing from
host to chip is rounded to a payload, one crossing back is divided out.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from transformers.activations import ACT2FN

from nxcompile.compiler.graph import (GRADED_BITS, GRADED_FRACTION_BITS, SSA, Add, Attention, Dense, Encode,
                                      GradedDense, LayerNorm, NeuronModel, SpikingGraph, limit_of, out_kind)
from nxcompile.errors import UsageError
from nxcompile.sim.reference import RunResult, decode_output, execute_node

PAYLOAD_LIMIT = limit_of(GRADED_BITS)
DECAY_BITS = 12                    # [Lava] lif/models.py: du, dv are 12-bit
DECAY_UNITS = 1 << DECAY_BITS


def to_payload(x: np.ndarray) -> np.ndarray:
    """A float value as a graded payload (round to nearest, saturate)."""
    return np.clip(np.round(np.asarray(x, dtype=np.float64) * 2.0 ** GRADED_FRACTION_BITS),
                   -PAYLOAD_LIMIT, PAYLOAD_LIMIT).astype(np.int64)


def from_payload(p: np.ndarray) -> np.ndarray:
    return np.asarray(p, dtype=np.float64) / 2.0 ** GRADED_FRACTION_BITS


def saturate(p: np.ndarray) -> np.ndarray:
    return np.clip(p, -PAYLOAD_LIMIT, PAYLOAD_LIMIT)


@dataclass(frozen=True, eq=False)
class Synapses:
    """The synapses from one input, integers in state units: a matrix [out, in] (a Dense) or one
    weight per neuron (elementwise, 1-D). A spike counts as an integer, a graded payload carries F
    fraction bits that the synapse shifts out:

        I = W x            (spikes)
        I = (W x) >> F     (graded payloads)
    Matrix products run in float64 (exact: every partial sum stays below 2**53), so BLAS does
    the work on whole sequences; one step's spikes (a vector) gather only the rows of the inputs
    that spiked, which is the same sum."""
    weight: np.ndarray

    def __post_init__(self):
        rows = np.ascontiguousarray(self.weight.T, dtype=np.float64) if self.weight.ndim == 2 else None
        object.__setattr__(self, "_rows", rows)        # [in, out], converted once

    def current(self, x: np.ndarray, spikes: bool) -> np.ndarray:
        if self._rows is None:
            current = x * self.weight
        elif spikes and x.ndim == 1:
            active = np.flatnonzero(x)
            current = np.rint(x[active].astype(np.float64) @ self._rows[active]).astype(np.int64)
        else:
            current = np.rint(x.astype(np.float64) @ self._rows).astype(np.int64)
        return current if spikes else current >> GRADED_FRACTION_BITS


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


# ---- neurons --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class IntNeuron:
    """A population's integer dynamics (graph.NeuronModel in state units), per step:

        v = sign(v) * ((|v| * keep) >> DECAY_BITS)        (only with a leak, keep < 2**DECAY_BITS)
        v = v + I
        s = clamp(floor(v / threshold), 0, payload_max)    (signed: sign(v) min(|v| // threshold, payload_max))
        v = v - s * threshold
    and v = v_init = floor(v_init * threshold) at every window's start."""
    threshold: np.ndarray      # per neuron or one, state units
    v_init: np.ndarray
    keep: int                  # DECAY_UNITS - dv: what a step's leak keeps of v
    signed: bool
    payload_max: int

    def reset(self, shape: tuple[int, ...]) -> np.ndarray:
        """v at a window's start."""
        return np.broadcast_to(self.v_init, shape).astype(np.int64).copy()

    def step(self, v: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step: (spikes, new v)."""
        if self.keep != DECAY_UNITS:
            v = np.sign(v) * ((np.abs(v) * self.keep) >> DECAY_BITS)
        v = v + current
        if self.signed:
            s = np.sign(v) * np.minimum(np.abs(v) // self.threshold, self.payload_max)
        else:
            s = np.clip(v // self.threshold, 0, self.payload_max)
        return s, v - s * self.threshold

    def fire(self, current: np.ndarray) -> np.ndarray:
        """Spikes [B, S, T, N] of a window of currents [B, S, T, N]."""
        v = self.reset(current[:, :, 0].shape)
        spikes = np.empty_like(current)
        for t in range(current.shape[2]):
            spikes[:, :, t], v = self.step(v, current[:, :, t])
        return spikes

    def scaled(self, factor) -> "IntNeuron":
        """The same neuron with threshold and initial voltage times `factor` (an integer, or an
        array broadcasting against the neurons): a current divided by `factor`, without rounding."""
        factor = np.asarray(factor, dtype=np.int64)
        return dataclasses.replace(self, threshold=self.threshold * factor, v_init=self.v_init * factor)


def _window(x: np.ndarray, spikes: bool) -> np.ndarray:
    """A whole-sequence input as a window: a spike train [B, S, T, N] as it is, a graded payload
    [B, S, N] as the same value at every step, [B, S, 1, N]."""
    return x if spikes else x[:, :, None]


# ---- window ops: a population integrates its current over a token's T steps ------------------------

@dataclass(frozen=True)
class Population:
    """Spiking neurons driven by their inputs' synapses, per step t of a token's window:

        I[t] = sum_p W_p (x) x_p[t] + bias           (x) a matrix product (Dense) or elementwise
        s[t] = neuron(I[t])                           (Encode, the spiking residual Add)
    where a spike counts as an integer and a graded payload's fraction bits are shifted out."""
    neuron: IntNeuron
    weights: dict[str, Synapses]        # input port -> its synapses
    bias: np.ndarray
    spike_ports: frozenset[str]         # ports whose messages are spikes (else graded payloads)
    windowed: ClassVar[bool] = True      # integrates over a window of T steps
    sends_spikes: ClassVar[bool] = True

    @property
    def ports(self) -> tuple[str, ...]:
        return tuple(self.weights)

    def current(self, x: dict[str, np.ndarray]) -> np.ndarray:
        """The state-unit current of one step (or of a whole window, broadcasting)."""
        return self.steady_current(x) + self.spike_current(x)

    def steady_current(self, x: dict[str, np.ndarray]) -> np.ndarray:
        """The part of the current that holds for the whole window: the graded inputs' (a graded
        input arrives once and drives every step) and the bias, so a step-by-step run computes it once."""
        return sum((w.current(x[p], False) for p, w in self.weights.items() if p not in self.spike_ports), self.bias)

    def spike_current(self, x: dict[str, np.ndarray]) -> np.ndarray | int:
        """The part of a step's current from the spikes of that step (0 with no spiking input)."""
        return sum(w.current(x[p], True) for p, w in self.weights.items() if p in self.spike_ports)

    def execute(self, inputs: dict[str, np.ndarray], timesteps: int) -> np.ndarray:
        current = self.current({p: _window(x, p in self.spike_ports) for p, x in inputs.items()})
        return self.neuron.fire(np.broadcast_to(current, current.shape[:2] + (timesteps,) + current.shape[3:]))


@dataclass(frozen=True)
class Readout:
    """A Dense without neurons, read out as a graded value per token: I[t] = W x[t] + bias summed
    over the window, sent as the payload of its mean, round half up:
        p = floor((2 * (sum_t I[t] << F) + T 2**u) / (2 T 2**u))      (u = unit_log2 state units per unit)."""
    synapses: Synapses
    bias: np.ndarray
    unit_log2: int
    spike_ports: frozenset[str]
    windowed: ClassVar[bool] = True
    sends_spikes: ClassVar[bool] = False
    ports: ClassVar[tuple[str, ...]] = ("x",)

    def window_current(self, window_input: np.ndarray, timesteps: int) -> np.ndarray:
        """sum_t I[t] over a window, from the window's spike counts (sum_t x[t]: W is linear, so
        W sum_t x[t] + T bias is the steps' sum exactly) or from a graded input, the same every step
        (T times its step's current, the fraction bits shifted out per step)."""
        if "x" in self.spike_ports:
            return self.synapses.current(window_input, True) + timesteps * self.bias
        return timesteps * (self.synapses.current(window_input, False) + self.bias)

    def payload(self, accumulated: np.ndarray, timesteps: int) -> np.ndarray:
        """A window's summed current as the graded payload of its mean."""
        denominator = timesteps << self.unit_log2
        return saturate((2 * (accumulated << GRADED_FRACTION_BITS) + denominator) // (2 * denominator))

    def execute(self, inputs: dict[str, np.ndarray], timesteps: int) -> np.ndarray:
        x = inputs["x"].sum(2) if "x" in self.spike_ports else inputs["x"]
        return self.payload(self.window_current(x, timesteps), timesteps)


def heads(x: np.ndarray, n_head: int, head_dim: int) -> np.ndarray:
    """[..., H*hd] -> [..., H, hd]."""
    return x.reshape(x.shape[:-1] + (n_head, head_dim))


@dataclass(frozen=True)
class SpikingAttention:
    """SSA on integer spikes, per head and step t (graph.SSA), with its scale a Requantise:

        I_i[t] = score( sum_{j visible to i} (Q_i[t] . K_j[t]) V_j[t] )
        s_i[t] = neuron_i(I_i[t])      neuron_i: thresholds times (i + 1) with position_norm
    Keys and values of earlier tokens come from the KV cache (at most kv_capacity tokens)."""
    neuron: IntNeuron
    n_head: int
    head_dim: int
    score: Requantise
    kv_capacity: int
    position_norm: bool
    windowed: ClassVar[bool] = True
    sends_spikes: ClassVar[bool] = True
    ports: ClassVar[tuple[str, ...]] = ("q", "k", "v")

    def current(self, q: np.ndarray, keys: np.ndarray, values: np.ndarray,
                visible: np.ndarray | None = None) -> np.ndarray:
        """Queries [..., Sq, H*hd] against keys and values [..., Sk, H*hd] of the same step;
        `visible` [Sq, Sk] the keys each query sees (None: all)."""
        qh, kh, vh = (heads(x, self.n_head, self.head_dim).astype(np.float64) for x in (q, keys, values))
        scores = np.einsum("...ihd,...jhd->...hij", qh, kh)
        if visible is not None:
            scores = scores * visible
        out = np.einsum("...hij,...jhd->...ihd", scores, vh)
        return self.score(np.rint(out).astype(np.int64).reshape(q.shape))

    def neuron_at(self, positions) -> IntNeuron:
        """The neurons of the queries at `positions` (0-based: an array [S, 1], or one token's index):
        with position_norm, query i's current is divided by the i + 1 keys it attends to."""
        return self.neuron.scaled(np.asarray(positions) + 1) if self.position_norm else self.neuron

    def execute(self, inputs: dict[str, np.ndarray], timesteps: int) -> np.ndarray:
        q, k, v = (inputs[p].transpose(0, 2, 1, 3) for p in self.ports)        # [B, T, S, N]
        s = q.shape[2]
        current = self.current(q, k, v, np.tril(np.ones((s, s)))).transpose(0, 2, 1, 3)
        return self.neuron_at(np.arange(s)[:, None]).fire(current)


# ---- per-token ops: one graded value per token, computed once ------------------------------------

@dataclass(frozen=True)
class GradedAdd:
    """The residual connection on graded payloads: y = saturate(a + b)."""
    windowed: ClassVar[bool] = False
    sends_spikes: ClassVar[bool] = False
    ports: ClassVar[tuple[str, ...]] = ("a", "b")

    def value(self, x: dict[str, np.ndarray], timesteps: int) -> np.ndarray:
        return saturate(x["a"] + x["b"])

    def execute(self, inputs: dict[str, np.ndarray], timesteps: int) -> np.ndarray:
        return self.value(inputs, timesteps)


def isqrt(x: np.ndarray) -> np.ndarray:
    """floor(sqrt(x)) of non-negative int64, exact (float64 estimate, then corrected)."""
    r = np.floor(np.sqrt(x.astype(np.float64))).astype(np.int64)
    r -= (r * r > x)
    r += ((r + 1) * (r + 1) <= x)
    return r


@dataclass(frozen=True)
class Norm:
    """LayerNorm of payloads over the features, in integers (weight and bias in the output's
    fraction bits, saturated to +-limit):

        c = x - floor(mean(x)),  std = isqrt(floor(mean(c^2)) + eps),  y = floor(c * w / std) + b
    A spike-train input is first decoded over its window: x = floor((2 sum_t s * scale + T) / 2T) + offset."""
    weight: np.ndarray
    bias: np.ndarray
    eps: int                                 # in 2**(2F) units
    input_scale: np.ndarray | None           # a spike train's payload per spike (None: graded input)
    input_offset: np.ndarray | None
    limit: int
    exact: bool = False                      # the graded study's ablation: float64 LayerNorm, rounded
    windowed: ClassVar[bool] = False
    sends_spikes: ClassVar[bool] = False
    ports: ClassVar[tuple[str, ...]] = ("x",)

    def window_payload(self, spike_sum: np.ndarray, timesteps: int) -> np.ndarray:
        """A spike window's sum decoded: mean_t(s) * scale + offset, as a payload."""
        return (2 * spike_sum * self.input_scale + timesteps) // (2 * timesteps) + self.input_offset

    def normalise(self, p: np.ndarray) -> np.ndarray:
        if self.exact:
            x = p.astype(np.float64)
            centred = x - x.mean(-1, keepdims=True)
            y = centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + self.eps) * self.weight + self.bias
            return np.clip(np.round(y), -self.limit, self.limit).astype(np.int64)
        n = p.shape[-1]
        centred = p - p.sum(-1, keepdims=True) // n
        variance = (centred * centred).sum(-1, keepdims=True) // n
        return np.clip(centred * self.weight // isqrt(variance + self.eps) + self.bias, -self.limit, self.limit)

    def value(self, x: dict[str, np.ndarray], timesteps: int) -> np.ndarray:
        """From a graded payload, or from a spike window's sum."""
        return self.normalise(x["x"] if self.input_scale is None else self.window_payload(x["x"], timesteps))

    def execute(self, inputs: dict[str, np.ndarray], timesteps: int) -> np.ndarray:
        x = inputs["x"]
        return self.value({"x": x if self.input_scale is None else x.sum(2)}, timesteps)


# ---- the graded method's kernels (one graded spike per layer and token) ------------------------------
# GELU is a table of quadratic pieces fitted to the model's own activation; exp is I-BERT's
# (Kim et al., ICML 2021): a second-order polynomial and a shift, on integers.

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
RECIPROCAL_BITS = 48                 # one reciprocal per query, 2**48 // sum of exps: >= 16 bits for 1,024 keys
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


def integer_gelu(activation: str, g: np.ndarray, exact: bool = False) -> np.ndarray:
    """GELU(x) of x = g / 2**10 in units of GELU_UNIT: x h(|x|) for x >= 0 and x (1 - h(|x|)) below
    (GELU(x) / x is symmetric about 1/2), h from `gelu_table` (the piece chosen by a shift, a
    quadratic in the offset into it), h = 1 beyond |x| >= 4. `exact`: the float64 GELU, rounded."""
    if exact:
        x = torch.from_numpy(g / 2.0 ** GELU_INPUT_FRACTION_BITS)
        return np.round(ACT2FN[activation](x).numpy() / GELU_UNIT).astype(np.int64)
    table = gelu_table(activation)
    u = np.minimum(np.abs(g), (_GELU_SEGMENTS << _GELU_SEGMENT_BITS) - 1)
    k, t = u >> _GELU_SEGMENT_BITS, u & ((1 << _GELU_SEGMENT_BITS) - 1)
    h = table[k, 0] + ((table[k, 1] * t) >> _GELU_LINEAR_SHIFT) + ((table[k, 2] * t * t) >> _GELU_SQUARE_SHIFT)
    h = np.where(np.abs(g) >= _GELU_SEGMENTS << _GELU_SEGMENT_BITS, 1 << _GELU_H_BITS, h)
    return g * np.where(g >= 0, h, (1 << _GELU_H_BITS) - h)


def i_exp(x: np.ndarray, exact: bool = False) -> np.ndarray:
    """exp(x) of x = payload / 2**10 <= 0, in units of EXP_UNIT (I-BERT's i-exp: x = -q ln2 + r,
    exp(r) a second-order polynomial on (-ln 2, 0], then q halvings as a shift). `exact`: float64."""
    x = np.maximum(x, _EXP_MAX_HALVINGS * _EXP_X0_INT)
    if exact:
        return np.round(np.exp(x * _EXP_INPUT_UNIT) / EXP_UNIT).astype(np.int64)
    q = x // _EXP_X0_INT
    r = x - _EXP_X0_INT * q
    return ((r + _EXP_B_INT) * r + _EXP_C_INT) >> q


@dataclass(frozen=True)
class GradedLinear:
    """A GradedDense, y = act(W x + b) once per token. Its synapses are Lava's own Dense process,
    which holds 2m (8-bit mantissas m, sign mode MIXED keeps even weights) with weight_exp
    = -(1 + acc_shift) and sends
        a = (sum 2m x) >> (1 + acc_shift) = floor(sum m x / 2**acc_shift);
    its neurons add the bias, apply identity or the integer GELU (on `to_gelu(v)`) and rescale to
    their message (`out`: an integer multiply and a shift, rounding half up, saturating)."""
    weight: np.ndarray                   # mantissas m [out, in]
    bias: np.ndarray                     # on the accumulator's grid
    acc_shift: int
    activation: str                      # identity, or the model's GELU (its name)
    to_gelu: Requantise | None           # accumulator -> GELU input
    out: Requantise
    exact_gelu: bool = False
    windowed: ClassVar[bool] = False
    sends_spikes: ClassVar[bool] = False
    ports: ClassVar[tuple[str, ...]] = ("x",)

    def accumulate(self, x: np.ndarray) -> np.ndarray:
        """What Lava's Dense sends the neurons."""
        return Synapses(2 * self.weight).current(x, spikes=True) >> (1 + self.acc_shift)

    def neuron_value(self, accumulated: np.ndarray) -> np.ndarray:
        """The neurons' message from their Dense's accumulation: bias, activation, rescale."""
        v = accumulated + self.bias
        if self.activation != "identity":
            v = integer_gelu(self.activation, self.to_gelu(v), self.exact_gelu)
        return self.out(v)

    def value(self, x: dict[str, np.ndarray], timesteps: int) -> np.ndarray:
        return self.neuron_value(self.accumulate(x["x"]))

    def execute(self, inputs: dict[str, np.ndarray], timesteps: int) -> np.ndarray:
        return self.value(inputs, timesteps)


@dataclass(frozen=True)
class SoftmaxAttention:
    """Softmax attention over the KV cache in integers, per query i and head:

        s_ij = score(q_i . k_j) - max_j score(q_i . k_j)             (2**-10 units, <= 0)
        e_ij = i_exp(s_ij),  r_i = 2**48 // sum_j e_ij,  p_ij = (e_ij r_i) >> (48 - 15)
        y_i = out( sum_j p_ij v_j )                                    (rescaled to its message)"""
    n_head: int
    head_dim: int
    kv_capacity: int
    score: Requantise
    out: Requantise
    exact_exp: bool = False
    windowed: ClassVar[bool] = False
    sends_spikes: ClassVar[bool] = False
    ports: ClassVar[tuple[str, ...]] = ("q", "k", "v")

    def attend(self, q: np.ndarray, keys: np.ndarray, values: np.ndarray,
               visible: np.ndarray | None = None) -> np.ndarray:
        """Queries q [..., Sq, H*hd] over cached keys and values [..., Sk, H*hd] (payloads),
        `visible` [Sq, Sk] the keys each query may see (None: all)."""
        split = lambda x: heads(x, self.n_head, self.head_dim).astype(np.float64)        # noqa: E731
        scores = self.score(np.rint(np.einsum("...ihd,...jhd->...hij", split(q), split(keys))).astype(np.int64))
        if visible is not None:
            scores = np.where(visible, scores, -SCORE_LIMIT)
        exps = i_exp(scores - scores.max(-1, keepdims=True), self.exact_exp)
        if visible is not None:
            exps = np.where(visible, exps, 0)
        reciprocal = (1 << RECIPROCAL_BITS) // exps.sum(-1, keepdims=True)
        probabilities = (exps * reciprocal) >> (RECIPROCAL_BITS - PROBABILITY_BITS)
        out = np.rint(np.einsum("...hij,...jhd->...ihd", probabilities.astype(np.float64), split(values)))
        return self.out(out.astype(np.int64)).reshape(q.shape)

    def execute(self, inputs: dict[str, np.ndarray], timesteps: int) -> np.ndarray:
        s = inputs["q"].shape[1]
        return self.attend(inputs["q"], inputs["k"], inputs["v"], np.tril(np.ones((s, s), dtype=bool)))


# ---- a quantised graph as integer ops --------------------------------------------------------------

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


def _layer_format(spiking: SpikingGraph, name: str, what: str):
    fmt = spiking.quantization.layers.get(name) if spiking.quantization is not None else None
    if fmt is None:
        raise UsageError(f"{name}: {what} has no fixed-point format; quantise the graph for a Loihi target "
                         f"before running it in fixed point")
    return fmt


def _exact(spiking: SpikingGraph, kernel: str) -> bool:
    precision = spiking.quantization.precision if spiking.quantization is not None else None
    return precision is not None and kernel in precision.exact


def _spike_ports(spiking: SpikingGraph, name: str) -> frozenset[str]:
    """The ports of a node fed by on-chip spikes (host values and graded messages are payloads)."""
    graph = spiking.graph
    return frozenset(port for port, source in spiking.inputs(name).items()
                     if not graph.nodes[source]["host"] and out_kind(spiking.op(source)) != "graded")


def _graded_dense(spiking: SpikingGraph, name: str, op: GradedDense) -> GradedLinear:
    fmt = _layer_format(spiking, name, "graded layer")
    gelu = op.activation != "identity"
    out_ratio = (GELU_UNIT if gelu else 2.0 ** -fmt.acc_frac) * 2.0 ** fmt.frac
    return GradedLinear(_integers(op.weight * 2.0 ** -fmt.weight_exp, f"{name}: weight"),
                        _integers(op.bias * 2.0 ** fmt.acc_frac, f"{name}: bias"), fmt.acc_shift, op.activation,
                        rescaling(2.0 ** (GELU_INPUT_FRACTION_BITS - fmt.acc_frac), PAYLOAD_LIMIT) if gelu else None,
                        rescaling(out_ratio, limit_of(fmt.bits)), _exact(spiking, "gelu"))


def _attention(spiking: SpikingGraph, name: str, op: Attention) -> SoftmaxAttention:
    fmt = spiking.message_format(name)
    q, k, v = (spiking.message_format(spiking.inputs(name)[p]).frac for p in "qkv")
    return SoftmaxAttention(op.n_head, op.head_dim, op.kv_capacity,
                            rescaling(op.scale * 2.0 ** (EXP_INPUT_FRACTION_BITS - q - k), SCORE_LIMIT),
                            rescaling(2.0 ** (fmt.frac - PROBABILITY_BITS - v), limit_of(fmt.bits)),
                            _exact(spiking, "exp"))


def _norm(spiking: SpikingGraph, name: str, op: LayerNorm) -> Norm:
    unit = 2.0 ** spiking.message_format(name).frac
    spikes = op.input_scale.numel() > 0
    return Norm(np.round(op.weight.double().numpy() * unit).astype(np.int64),
                np.round(op.bias.double().numpy() * unit).astype(np.int64),
                max(1, round(op.eps * 2.0 ** (2 * GRADED_FRACTION_BITS))),
                to_payload(op.input_scale.double().numpy()) if spikes else None,
                to_payload(op.input_offset.double().numpy()) if spikes else None,
                limit_of(spiking.message_format(name).bits), _exact(spiking, "norm"))


def _dense(spiking: SpikingGraph, name: str, op: Dense):
    if op.neuron is not None:
        return Population(_int_neuron(op.neuron, name), {"x": Synapses(_integers(op.weight, f"{name}: weight"))},
                          _integers(op.bias, f"{name}: bias"), _spike_ports(spiking, name))
    unit = _layer_format(spiking, name, "readout").unit_log2
    return Readout(Synapses(_integers(op.weight * 2.0 ** unit, f"{name}: weight")),
                   _integers(op.bias * 2.0 ** unit, f"{name}: bias"), unit, _spike_ports(spiking, name))


def _add(spiking: SpikingGraph, name: str, op: Add):
    if op.neuron is None:
        return GradedAdd()
    weights = {"a": Synapses(_integers(op.scale_a.expand(op.features), f"{name}: scale_a")),
               "b": Synapses(_integers(op.scale_b.expand(op.features), f"{name}: scale_b"))}
    return Population(_int_neuron(op.neuron, name), weights, _integers(op.bias, f"{name}: bias"),
                      _spike_ports(spiking, name))


def _encode(spiking: SpikingGraph, name: str, op: Encode) -> Population:
    return Population(_int_neuron(op.neuron, name), {"x": Synapses(_integers(op.gain, f"{name}: gain"))},
                      _integers(op.bias, f"{name}: bias"), _spike_ports(spiking, name))


def _ssa(spiking: SpikingGraph, name: str, op: SSA) -> SpikingAttention:
    return SpikingAttention(_int_neuron(op.neuron, name), op.n_head, op.head_dim, rescaling(op.scale, SCORE_LIMIT),
                            op.kv_capacity, op.position_norm)


# graph op type -> its integer op (one builder per type, as netx's create_<layer>)
INTEGER_OPS = {Encode: _encode, Dense: _dense, SSA: _ssa, Add: _add, LayerNorm: _norm, GradedDense: _graded_dense,
               Attention: _attention}


def integer_program(spiking: SpikingGraph) -> dict[str, object]:
    """Every on-chip node as its integer op (host nodes stay float and are not listed)."""
    program = {}
    for name in spiking.order():
        if spiking.graph.nodes[name]["host"]:
            continue
        op = spiking.op(name)
        builder = INTEGER_OPS.get(type(op))
        if builder is None:
            raise UsageError(f"{name}: a {type(op).__name__} cannot run on chip")
        program[name] = builder(spiking, name, op)
    return program


def message_bits(spiking: SpikingGraph, name: str) -> int:
    """The bits of the payload node `name` sends, sign included."""
    return spiking.message_format(name).bits


# ---- the reference's fixed-point mode: whole sequences ------------------------------------------

def _is_spike_train(x: np.ndarray) -> bool:
    return x.ndim == 4


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
            out = program[name].execute(inputs, timesteps)
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
