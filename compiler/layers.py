"""The hardware view of a network: what each layer asks of neuromorphic cores.

The partitioner and the validator both read this plain description and nothing
else of the network, so a SpikingGraph and a foreign lava-dl `.net` file are
partitioned by the same code. A layer's output neurons are numbered in one
fixed order (features; heads then head dims; conv column, row, channel), and
every input a block reads is a range of a source layer's neurons in that order.
(lava-dl stores conv tensors channel first; Lava's processes hold them as (W, H, C).)

Kinds and what one output neuron needs:
  dense        all `in_features` inputs, one synapse (weight) each
  elementwise  input i of each of `ports` sources (residual add, spike encoder)
  norm         input i, plus the layer's mean and variance, kept by two extra
               statistic neurons per block that read all `features` inputs
  attention    its head's slice of Q, K and V; the head's past keys and values
               (`kv_capacity` tokens x `timesteps` steps) are held in synaptic
               memory, which is what a head costs
  conv         a kernel window of every input channel; a core stores the kernels once
               (shared by every neuron it computes); numbered column, row, channel, as
               Lava flattens a conv layer's (W, H, C) output
  input        neurons driven by their bias or by the host: no synapses (netx's input layer)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import h5py
import numpy as np

from nxcompile.errors import UsageError

# Spike rate assumed where none was measured (spikes per neuron per step).
ESTIMATED_SPIKE_RATE = 0.1
KINDS = ("dense", "elementwise", "norm", "attention", "conv", "input")


@dataclass(frozen=True)
class LayerSpec:
    """One layer as the partitioner sees it. `params` holds the kind's sizes:
    dense: in_features; elementwise: ports; norm: features; attention: n_head,
    head_dim, kv_capacity, timesteps, kv_bits; conv: in_shape, out_shape (C, H, W),
    kernel, stride, padding, dilation (each (H, W)); input: out_shape where 3-D.
    dense and conv may give weight_bits (signed; else the target's); a pruned dense layer its
    density, the fraction of its synapses kept."""
    name: str
    kind: str
    neurons: int
    inputs: tuple[str, ...]
    params: dict = field(default_factory=dict)
    host: bool = False
    message_bits: int = 1            # 1: binary spikes; >1: graded payload bits
    messages_per_token: float = 1.0  # per output neuron
    rate_measured: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"layer {self.name}: unknown kind {self.kind!r}")
        if self.neurons <= 0:
            raise ValueError(f"layer {self.name}: needs at least one neuron")


@dataclass
class Network:
    """Layers in topological order, plus where they came from."""
    layers: list[LayerSpec]
    source: str
    timesteps: int = 1

    def layer(self, name: str) -> LayerSpec:
        return self._by_name[name]

    def get(self, name: str) -> LayerSpec | None:
        """The layer of that name, or None (a host pseudo-source, a partial sum)."""
        return self._by_name.get(name)

    def __post_init__(self):
        self._by_name = {layer.name: layer for layer in self.layers}

    def chip_layers(self) -> list[LayerSpec]:
        return [layer for layer in self.layers if not layer.host]

    def describe(self) -> list[str]:
        """The layers, a line each: kind, neurons and the bits of what they send."""
        lines = [f"{self.source}: lava-dl netx network (not written by nxcompile), T = {self.timesteps}",
                 f"{'#':>3} {'layer':14} {'kind':12} {'neurons':>8} {'message bits':>12}"]
        return lines + [f"{i:>3} {layer.name:14} {layer.kind:12} {layer.neurons:>8} {layer.message_bits:>12}"
                        for i, layer in enumerate(self.layers)]


def _message(spiking, name: str, rate: float | None, timesteps: int) -> tuple[int, float]:
    """(payload bits, messages per neuron per token) of what a node sends: a graded value once per
    token in its format (the residual stream's, unless the quantiser sized it), spikes T times at
    their rate."""
    neuron = getattr(spiking.op(name), "neuron", None)
    if neuron is None:
        return spiking.message_format(name).bits, 1.0
    return neuron.payload_bits, (ESTIMATED_SPIKE_RATE if rate is None else rate) * timesteps


def _graph_layer(spiking, name: str, rates: dict[str, float], timesteps: int) -> LayerSpec:
    from nxcompile.compiler.graph import SSA, Add, Attention, Dense, Embed, Encode, GradedDense, LayerNorm

    op = spiking.op(name)
    inputs = spiking.inputs(name)
    node = spiking.graph.nodes[name]
    sources = tuple(inputs[port] for port in sorted(inputs))
    bits, per_token = _message(spiking, name, rates.get(name), timesteps)
    formats = spiking.quantization.layers if spiking.quantization is not None else {}
    common = dict(name=name, neurons=op.out_features, host=bool(node["host"]), message_bits=bits,
                  messages_per_token=per_token, rate_measured=name in rates)
    if isinstance(op, Embed):  # on chip: a table in synaptic memory read by one-hot token and position
        return LayerSpec(kind="dense", inputs=(), params={"in_features": op.wte.shape[0] + op.wpe.shape[0]},
                         **common)
    if isinstance(op, (Dense, GradedDense)):
        params = {"in_features": op.weight.shape[1], "weight_bits": getattr(formats.get(name), "mantissa_bits_used", None)}
        if spiking.quantization is not None and not node["host"]:   # its zeros (pruned, or rounded at few
            params["density"] = float((op.weight != 0).double().mean())  # bits) need no synapse
        return LayerSpec(kind="dense", inputs=sources, params=params, **common)
    if isinstance(op, Attention):     # keys and values in the cache at their message's bits, one step per token
        kv_bits = max(kv_message_bits(spiking, inputs[p]) for p in ("k", "v"))
        return LayerSpec(kind="attention", inputs=(inputs["q"], inputs["k"], inputs["v"]),
                         params={"n_head": op.n_head, "head_dim": op.head_dim, "kv_capacity": op.kv_capacity,
                                 "timesteps": 1, "kv_bits": kv_bits}, **common)
    if isinstance(op, (Encode, Add)):
        return LayerSpec(kind="elementwise", inputs=sources, params={"ports": len(sources)}, **common)
    if isinstance(op, LayerNorm):
        return LayerSpec(kind="norm", inputs=sources, params={"features": op.out_features}, **common)
    if isinstance(op, SSA):
        kv_bits = max(spiking.op(inputs[p]).neuron.payload_bits for p in ("k", "v"))
        return LayerSpec(kind="attention", inputs=(inputs["q"], inputs["k"], inputs["v"]),
                         params={"n_head": op.n_head, "head_dim": op.head_dim,
                                 "kv_capacity": op.kv_capacity, "timesteps": timesteps,
                                 "kv_bits": kv_bits}, **common)
    raise ValueError(f"node {name}: no hardware description for op {type(op).__name__}")


def kv_message_bits(spiking, name: str) -> int:
    """The bits a key or value takes in the graded method's KV cache: its message's, sized by the
    quantiser; before quantisation, the bits the quantiser gives keys and values by default."""
    from nxcompile.compiler.graph import GradedPrecision, MessageFormat

    fmt = spiking.quantization.layers.get(name) if spiking.quantization is not None else None
    return fmt.bits if isinstance(fmt, MessageFormat) else GradedPrecision().kv_bits


def network_from_graph(spiking, spike_rates: dict[str, float] | None = None) -> Network:
    """The layers of a SpikingGraph; spike rates measured by a run where given, else estimated."""
    timesteps = int(spiking.meta.get("options", {}).get("timesteps") or 1)
    rates = dict(spike_rates or {})
    layers = [_graph_layer(spiking, name, rates, timesteps) for name in spiking.order()]
    return Network(layers, source=str(spiking.meta.get("model", "spiking graph")), timesteps=timesteps)


# --- lava-dl .net files ------------------------------------------------------

def netx_value(group, key, default=None):
    """A dataset of a netx group as a Python value (strings decoded), read as data only."""
    if key not in group:
        if default is None:
            raise KeyError(key)
        return default
    value = group[key][()]
    if isinstance(value, np.ndarray) and value.dtype.kind == "S" and value.size == 1:
        value = value.item()           # netx stores strings as one-element byte arrays
    return value.decode() if isinstance(value, bytes) else value


# Layer types lava-dl netx (0.6) names but cannot build: its _create raises NotImplementedError, or
# (dense_comp) calls a create_complex_dense it does not define; complex weights in a `dense` layer build.
NETX_UNBUILT = ("pool", "convT", "unpool", "average", "concat", "dense_comp")
# netx's default payload bits of a graded (sigma-delta) message; a CUBA layer's messageBits, if any.
NETX_SDNN_MESSAGE_BITS = 16


def _netx_message(group) -> tuple[int, float]:
    """(payload bits, messages per neuron per step) of a netx layer's neurons, as netx reads them:
    LOIHI/CUBA binary unless messageBits, SDNN graded (16 bits unless messageBits), RF binary; a
    dense layer without a neuron group gets netx's default CUBA."""
    if "neuron" not in group:
        return 1, ESTIMATED_SPIKE_RATE
    neuron = group["neuron"]
    kind = netx_value(neuron, "type")
    bits = int(netx_value(neuron, "messageBits", 0)) if "messageBits" in neuron else 0
    if kind in ("LOIHI", "CUBA") or "RF" in kind:
        return (bits if bits > 1 else 1), (1.0 if bits > 1 else ESTIMATED_SPIKE_RATE)
    if kind == "SDNN":
        return (bits or NETX_SDNN_MESSAGE_BITS), 1.0
    raise ValueError(f"neuron type {kind!r}, which lava-dl netx does not know")


def _weight_bits(weight: np.ndarray) -> int:
    """Signed weight bits as netx's optimize_weight_bits finds them (a sign bit for mixed signs)."""
    from lava.lib.dl.netx.utils import SYNAPSE_SIGN_MODE, optimize_weight_bits

    weight = np.asarray(weight, dtype=np.float64)
    if not np.any(weight):
        return 1
    _, bits, _, sign_mode = optimize_weight_bits(weight)
    return int(bits) + int(sign_mode == SYNAPSE_SIGN_MODE.MIXED)


def _pair(group, key) -> tuple[int, int]:
    value = np.atleast_1d(netx_value(group, key)).astype(int)
    return (int(value[0]), int(value[-1]))


def _shape(group) -> tuple[int, ...]:
    return tuple(int(v) for v in np.atleast_1d(netx_value(group, "shape")))


def _dense_weights(group, name: str) -> list[np.ndarray]:
    """A dense layer's weight matrices [out, in] as netx builds them: 1-D weights reshaped to the layer's
    neurons, a recurrent layer's weight_rec, a complex layer's real and imaginary parts."""
    out = math.prod(_shape(group))
    keys = ("weight/real", "weight/imag") if "weight/real" in group else ("weight",) + (
        ("weight_rec",) if "weight_rec" in group else ())
    weights = [np.asarray(group[k][()], dtype=np.float64) for k in keys]
    weights = [w.reshape(out, -1) if w.ndim == 1 else w for w in weights]
    if any(w.ndim != 2 or w.shape[0] != out for w in weights):
        raise ValueError(f"{name}: weights {[w.shape for w in weights]} do not match its {out} neurons")
    return weights


def _netx_layer(index: int, group, previous: LayerSpec | None, previous_shape, host: bool) -> tuple[LayerSpec | None, tuple]:
    kind = netx_value(group, "type")
    name = f"layer{index}:{kind}"
    inputs = (previous.name,) if previous is not None else ()
    if kind in NETX_UNBUILT:
        raise ValueError(f"layer {index} has type {kind!r}, which lava-dl netx cannot build either")
    if kind == "flatten":
        return None, (math.prod(previous_shape),)
    bits, per_token = _netx_message(group)
    common = dict(name=name, inputs=inputs, message_bits=bits, messages_per_token=per_token, host=host)
    if kind == "input":
        shape = _shape(group)
        if "neuron" not in group:         # netx takes only its shape: no layer
            return None, shape
        params = {"out_shape": shape} if len(shape) == 3 else {}
        return LayerSpec(kind="input", neurons=math.prod(shape), params=params, **common), shape
    if kind in ("dense", "dense_rec"):
        weights = _dense_weights(group, name)
        in_features = sum(w.shape[1] for w in weights)
        if kind == "dense_rec":          # a recurrent layer also reads its own neurons
            common["inputs"] = inputs + (name,)
        return LayerSpec(kind="dense", neurons=weights[0].shape[0],
                         params={"in_features": in_features, "weight_bits": max(map(_weight_bits, weights)),
                                 "delays": "delay" in group}, **common), (weights[0].shape[0],)
    if kind == "conv":
        out_shape = _shape(group)
        weight = np.asarray(group["weight"][()])
        in_shape = previous_shape if previous_shape and len(previous_shape) == 3 else None
        if in_shape is None or int(weight.shape[1]) * int(netx_value(group, "groups", 1)) != in_shape[0]:
            raise ValueError(f"{name}: conv input {previous_shape} does not match weight {weight.shape}")
        params = {"in_shape": tuple(in_shape), "out_shape": out_shape, "kernel": _pair(group, "kernelSize"),
                  "stride": _pair(group, "stride"), "padding": _pair(group, "padding"),
                  "dilation": _pair(group, "dilation"), "weight_bits": _weight_bits(weight)}
        return LayerSpec(kind="conv", neurons=math.prod(out_shape), params=params, **common), out_shape
    raise ValueError(f"layer {index} has type {kind!r}, which lava-dl netx does not know")


def network_from_netx(path: Path, skip_layers: int = 0) -> Network:
    """The layers of a lava-dl netx `.net` file (read as data only). As netx's `skip_layers`, the first
    `skip_layers` layers run on the host (their output is the network's input); an input layer with
    neurons is on chip otherwise, as netx builds it."""
    path = Path(path)
    layers: list[LayerSpec] = []
    try:
        with h5py.File(path, "r") as handle:
            group = handle["layer"]
            previous, shape = None, None
            for index in sorted(group.keys(), key=int):
                layer, shape = _netx_layer(int(index), group[index], previous, shape, int(index) < skip_layers)
                if layer is not None:
                    layers.append(layer)
                    previous = layer
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise UsageError(f"{path} is not a readable lava-dl .net network ({exc})") from exc
    if not layers:
        raise UsageError(f"{path} has no layers")
    if layers[0].inputs == () and not layers[0].host and layers[0].kind != "input":
        first = layers[0]          # no input layer: the first layer reads the host
        host_input = LayerSpec(name="host-input", kind="input", host=True,
                               neurons=first.params.get("in_features", 1), inputs=())
        layers[0] = replace(first, inputs=("host-input",) + first.inputs)
        layers.insert(0, host_input)
    return Network(layers, source=str(path))
