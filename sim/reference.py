"""Reference executor of a SpikingGraph: vectorised torch over batch x sequence x time.

Spike trains are tensors [batch, sequence, T, neurons]; graded messages are
[batch, sequence, neurons]. Only the time loop inside a neuron population is a
Python loop (T iterations, each a tensor op over every neuron of every token);
everything else is one tensor op per node. With `timesteps=None` it runs the
rate limit (T -> infinity): each population emits its mean spike value per
step, clip(I / threshold, 0 or -1, 1), on a time axis of length 1; the
converter calibrates thresholds in that mode.

The time semantics are those of docs/time-semantics.md and `compiler.graph`.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from transformers.activations import ACT2FN

from nxcompile.compiler.graph import (SSA, Add, Attention, Dense, Embed, Encode, GradedDense, LayerNorm,
                                      NeuronModel, SpikingGraph, limit_of, out_kind)


SpikeFunction = Callable[[NeuronModel, torch.Tensor], torch.Tensor]


def payload_range(neuron: NeuronModel) -> tuple[float, float]:
    """The least and the most a neuron sends in one step."""
    top = float(neuron.payload_max)
    return (-top if neuron.signed else 0.0), top


def spike_levels(neuron: NeuronModel, v_over_threshold: torch.Tensor) -> torch.Tensor:
    """How many thresholds' worth of voltage a neuron sends (0/1, -1/0/+1 or a graded payload)."""
    level = torch.trunc if neuron.signed else torch.floor
    return level(v_over_threshold).clamp_(*payload_range(neuron))


def fire(neuron: NeuronModel, current: torch.Tensor, timesteps: int | None,
         spike: SpikeFunction = spike_levels) -> torch.Tensor:
    """Spikes of a population driven by `current` [B, S, T, N] (see NeuronModel).
    `spike` maps v / threshold to the spike sent; fine-tuning swaps in a
    surrogate-gradient twin of `spike_levels`."""
    theta = neuron.threshold.to(current.dtype)
    if timesteps is None:
        return torch.clamp(current / theta, *payload_range(neuron))
    current = current.expand(-1, -1, timesteps, -1)  # a constant (graded) drive repeats each step
    v = torch.full_like(current[:, :, 0], neuron.v_init) * theta
    steps = []
    decay = 1.0 - neuron.leak
    for t in range(current.shape[2]):
        v = v * decay + current[:, :, t]
        s = spike(neuron, v / theta)
        v = v - s * theta
        steps.append(s)
    return torch.stack(steps, dim=2)


def _embed(op: Embed, inputs, ctx) -> torch.Tensor:
    ids = ctx["token_ids"]
    return op.wte[ids] + op.wpe[torch.arange(ids.shape[1], device=op.wpe.device)][None]


def as_train(x: torch.Tensor) -> torch.Tensor:
    """A graded value [B, S, N] as a one-step train [B, S, 1, N] (the same every step)."""
    return x if x.dim() == 4 else x[:, :, None, :]


def decode(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """A spike train's window value mean_t(s) * scale + offset; graded values pass through."""
    if x.dim() == 3 or scale.numel() == 0:
        return x
    return x.mean(dim=2) * scale + offset


def decode_output(op, value: torch.Tensor) -> torch.Tensor:
    """A node's output as a graded value per token (spiking populations decoded)."""
    neuron = getattr(op, "neuron", None)
    return value if neuron is None else decode(value, neuron.spike_value, neuron.offset)


def _layer_norm(op: LayerNorm, inputs, ctx) -> torch.Tensor:
    x = decode(inputs["x"], op.input_scale, op.input_offset)
    return F.layer_norm(x, op.weight.shape, op.weight, op.bias, op.eps)


def _encode_current(op: Encode, inputs, ctx) -> torch.Tensor:
    return as_train(inputs["x"] * op.gain + op.bias)


def _dense_current(op: Dense, inputs, ctx) -> torch.Tensor:
    return as_train(inputs["x"]) @ op.weight.T + op.bias


def _dense(op: Dense, inputs, ctx) -> torch.Tensor:
    current = _dense_current(op, inputs, ctx)
    if op.neuron is None:
        return current.mean(dim=2)
    return fire(op.neuron, current, ctx["timesteps"], ctx["spike"])


def ssa_current(op: SSA, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """scale * sum_{j<=i} (Q_i[t].K_j[t]) V_j[t] (/ (i + 1) with position_norm), per head and step;
    [B, S, T, H*hd]."""
    b, s, t, _ = q.shape

    def heads(x):  # [B, S, T, H*hd] -> [B, H, T, S, hd]
        return x.reshape(b, s, t, op.n_head, op.head_dim).permute(0, 3, 2, 1, 4)

    scores = heads(q) @ heads(k).transpose(-1, -2)
    scores = scores.masked_fill(~torch.ones(s, s, dtype=torch.bool, device=q.device).tril(), 0.0)   # causal
    out = (scores @ heads(v)) * op.scale
    if op.position_norm:       # query i attends to i + 1 keys
        out = out / torch.arange(1, s + 1, dtype=out.dtype, device=out.device)[:, None]
    return out.permute(0, 3, 2, 1, 4).reshape(b, s, t, op.n_head * op.head_dim)


def _ssa_current(op: SSA, inputs, ctx) -> torch.Tensor:
    return ssa_current(op, inputs["q"], inputs["k"], inputs["v"])


def _spiking(current_of):
    """An executor for a population: its input current, then `fire`."""
    return lambda op, inputs, ctx: fire(op.neuron, current_of(op, inputs, ctx), ctx["timesteps"], ctx["spike"])


def _add_current(op: Add, inputs, ctx) -> torch.Tensor:
    return as_train(inputs["a"]) * op.scale_a + as_train(inputs["b"]) * op.scale_b + op.bias


def _add(op: Add, inputs, ctx) -> torch.Tensor:
    if op.neuron is None:
        return inputs["a"] + inputs["b"]
    return fire(op.neuron, _add_current(op, inputs, ctx), ctx["timesteps"], ctx["spike"])


def activation(name: str, x: torch.Tensor) -> torch.Tensor:
    """A graded neuron's activation: `identity` or one of transformers' (the model's GELU)."""
    return x if name == "identity" else ACT2FN[name](x)


def _graded_dense(op: GradedDense, inputs, ctx) -> torch.Tensor:
    return activation(op.activation, inputs["x"] @ op.weight.T + op.bias)


def on_payload_grid(x: torch.Tensor, bits: int, fraction_bits: int) -> torch.Tensor:
    """`x` as a signed `bits`-bit payload with `fraction_bits` carries it (rounded half up, saturated,
    as fixed point rescales a message); the gradient passes the rounding straight through."""
    limit = limit_of(bits)
    unit = 2.0 ** fraction_bits
    fixed = torch.clamp(torch.floor(x * unit + 0.5), -limit, limit) / unit
    return x + (fixed - x).detach()


def _attention(op: Attention, inputs, ctx) -> torch.Tensor:
    """Causal softmax attention per head; [B, S, H*hd]."""
    b, s, _ = inputs["q"].shape
    if op.kv_grid is not None:
        inputs = inputs | {p: on_payload_grid(inputs[p], *grid) for p, grid in zip("kv", op.kv_grid)}
    q, k, v = (inputs[p].reshape(b, s, op.n_head, op.head_dim).transpose(1, 2) for p in "qkv")
    scores = (q @ k.transpose(-1, -2)) * op.scale
    scores = scores.masked_fill(~torch.ones(s, s, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, op.out_features)


# Input current of each op that drives a neuron population (the converter
# calibrates thresholds on these), and the executor of every op type.
CURRENTS = {Encode: _encode_current, Dense: _dense_current, SSA: _ssa_current, Add: _add_current}
EXECUTORS = {Embed: _embed, LayerNorm: _layer_norm, Encode: _spiking(_encode_current),
             Dense: _dense, SSA: _spiking(_ssa_current), Add: _add, GradedDense: _graded_dense,
             Attention: _attention}


def _context(token_ids: torch.Tensor, timesteps: int | None, spike: SpikeFunction = spike_levels) -> dict:
    """What every executor may read besides its op and inputs."""
    return {"token_ids": token_ids, "timesteps": timesteps, "spike": spike}


def execute_node(op, inputs: dict[str, torch.Tensor], token_ids: torch.Tensor,
                 timesteps: int | None) -> torch.Tensor:
    """One node's output from its inputs."""
    return EXECUTORS[type(op)](op, inputs, _context(token_ids, timesteps))


def node_current(op, inputs: dict[str, torch.Tensor], token_ids: torch.Tensor,
                 timesteps: int | None) -> torch.Tensor:
    """The input current of a neuron-bearing node, before its neurons fire."""
    return CURRENTS[type(op)](op, inputs, _context(token_ids, timesteps))


@dataclass
class RunResult:
    """What a run of the graph produced: logits, spike statistics and hidden states."""
    logits: torch.Tensor
    spike_rate: dict[str, float]
    spike_count: dict[str, float]
    hidden: dict[int, torch.Tensor]
    timesteps: int | None
    wall_seconds: float
    values: dict[str, torch.Tensor] = field(default_factory=dict)


def run(spiking: SpikingGraph, token_ids: torch.Tensor, timesteps: int | None,
        keep_values: bool = False, *, ops: dict | None = None, spike: SpikeFunction | None = None,
        recompute: bool = False) -> RunResult:
    """Execute the whole graph on token ids [B, S].

    `hidden[b]` is the residual stream after block b (the output of its last Add),
    the twin of the ANN's block output. Spike counts are |s| summed over batch,
    sequence, time and neurons (rate mode reports rates only).
    Fine-tuning passes `ops` (nodes replaced by trainable twins) and a
    surrogate-gradient `spike`; only then does the run track gradients.
    `recompute` (training only) keeps just each node's output for the backward pass and runs
    the node again there (torch's activation checkpointing): a population's T steps of membrane
    and surrogate state are most of a training step's memory, and this trades them for a second
    forward pass with identical gradients.
    """
    if timesteps is not None and timesteps <= 0:
        raise ValueError(f"timesteps must be > 0, got {timesteps}")
    with torch.set_grad_enabled(spike is not None):
        return _run(spiking, token_ids, timesteps, keep_values, ops or {}, spike or spike_levels,
                    recompute and spike is not None)


def _run(spiking, token_ids, timesteps, keep_values, ops, spike, recompute) -> RunResult:
    started = time.perf_counter()
    values: dict[str, torch.Tensor] = {}
    rate, count, hidden = {}, {}, {}
    ctx = _context(token_ids, timesteps, spike)
    graph = spiking.graph
    block_of_output = {name: b for b, name in enumerate(spiking.meta["block_outputs"])}
    for name in spiking.order():
        op = ops.get(name, graph.nodes[name]["op"])
        inputs = {port: values[source] for port, source in spiking.inputs(name).items()}
        execute = EXECUTORS[type(op)]
        out = checkpoint(execute, op, inputs, ctx, use_reentrant=False) if recompute else execute(op, inputs, ctx)
        values[name] = out
        if out_kind(op) != "graded":
            magnitude = out.detach().abs()
            rate[name] = float(magnitude.mean())
            count[name] = float(magnitude.sum()) if timesteps is not None else float("nan")
        if name in block_of_output:
            hidden[block_of_output[name]] = decode_output(op, out)
    logits = values[spiking.meta["logits_node"]]
    return RunResult(logits, rate, count, hidden, timesteps, time.perf_counter() - started,
                     values if keep_values else {})
