"""The spiking graph (IR): a networkx DiGraph of typed ops, shapes and message kinds on edges.

Every op is a small dataclass whose docstring is its defining equation (NIR style).
Time semantics, shared by every executor (see docs/time-semantics.md): each token
is processed in a window of T time steps; every spiking population starts the
window with v = v_init * threshold and integrates over the window; graded
messages carry one value per token. Nodes marked `host` run on the host CPU.

Edges carry `port` (which input of the op), `shape` (per token) and `kind`:
`graded` (a value per token, a Loihi 2 graded spike; every message of the graded
method is one), `binary` (0/1 spikes per
step), `ternary` (-1/0/+1 spikes per step, a 2-bit graded spike) or
`graded-spikeN` (an N-bit integer payload per step).
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from nxcompile.errors import UsageError
from nxcompile.files import write_atomically

FORMAT_VERSION = 1
# The graded messages of the residual stream (and of every graded value the quantiser sizes no
# payload for): Loihi 2's 24-bit graded spike ([Lava] lif/models.py: 24-bit s_out) with 10
# fraction bits, resolution 1/1024 and range +-8192.
GRADED_BITS = 24
GRADED_FRACTION_BITS = 10


@dataclass
class NeuronModel:
    """Integrate-and-fire family with reset by subtraction, per step t of a token's window:

        v[t] = (1 - leak) * v[t-1] + I[t]
        s[t] = clamp(floor(v[t] / threshold), 0, payload_max)        (unsigned)
               clamp(trunc(v[t] / threshold), -payload_max, payload_max)   (signed)
        v[t] = v[t] - s[t] * threshold
        v[-1] = v_init * threshold        (state reset at every token's start)

    payload_max = 1 is a binary (or, signed, ternary) spike: s = 1 when v >= threshold.
    payload_max > 1 is a graded spike carrying an integer payload (Loihi 2).
    leak = 0 is IF; leak > 0 is LIF: lava-dl's CUBA neuron with voltage_decay = leak
    and current_decay = 1 (no synaptic current carried between steps).
    A spike stands for `spike_value` (the threshold, unless the quantiser moved
    the dynamics to integer units and kept the float value in `value`); the
    population's value per step decodes as spike_value * s[t] + offset (offset
    is nonzero only where an encoder shifted a signed value into the range of
    binary spikes).
    """
    threshold: torch.Tensor
    leak: float = 0.0
    signed: bool = False
    v_init: float = 0.5
    offset: torch.Tensor = field(default_factory=lambda: torch.zeros(1))
    payload_max: int = 1
    value: torch.Tensor = field(default_factory=lambda: torch.empty(0))

    def __post_init__(self):
        self.threshold = torch.as_tensor(self.threshold, dtype=torch.float32).reshape(-1)
        self.offset = torch.as_tensor(self.offset, dtype=torch.float32).reshape(-1)
        self.value = torch.as_tensor(self.value, dtype=torch.float32).reshape(-1)
        if not 0.0 <= self.leak < 1.0:
            raise ValueError(f"leak must be in [0, 1), got {self.leak}")
        if self.payload_max < 1:
            raise ValueError(f"payload_max must be >= 1, got {self.payload_max}")

    @property
    def spike_value(self) -> torch.Tensor:
        """What one spike stands for downstream, per neuron or for all."""
        return self.value if self.value.numel() else self.threshold

    @property
    def kind(self) -> str:
        if self.payload_max > 1:
            return f"graded-spike{self.payload_bits}"
        return "ternary" if self.signed else "binary"

    @property
    def payload_bits(self) -> int:
        """Bits of a spike's payload, sign included."""
        return self.payload_max.bit_length() + int(self.signed)


@dataclass
class Embed:
    """x_i = wte[token_i] + wpe[i]   (host: a table lookup, no synapses)."""
    wte: torch.Tensor
    wpe: torch.Tensor

    @property
    def out_features(self) -> int:
        return self.wte.shape[1]


@dataclass
class LayerNorm:
    """y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias   on graded values.

    A spike-train input is first decoded over the window: x = mean_t(s) * input_scale
    + input_offset (empty scale: the input is graded). `out_range` is the largest |y|
    seen on calibration text where the graded method sizes the output's payload from
    it (0: the residual stream's format)."""
    weight: torch.Tensor
    bias: torch.Tensor
    eps: float = 1e-5
    input_scale: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    input_offset: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    out_range: float = 0.0

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]


@dataclass
class Encode:
    """Graded value -> spikes: I[t] = gain * x + bias for every t of the window, into `neuron`
    (`features` neurons; gain, bias and threshold are one per neuron or one for all)."""
    features: int
    neuron: NeuronModel
    gain: torch.Tensor = field(default_factory=lambda: torch.ones(1))
    bias: torch.Tensor = field(default_factory=lambda: torch.zeros(1))

    @property
    def out_features(self) -> int:
        return self.features


@dataclass
class Dense:
    """I[t] = weight @ s_in[t] + bias; output spikes = neuron(I), or, with no neuron
    (a readout), the graded value mean_t I[t]. Input spikes arrive as +-1: the
    value a spike stands for is already folded into `weight`."""
    weight: torch.Tensor
    bias: torch.Tensor
    neuron: NeuronModel | None = None

    def __post_init__(self):
        if self.weight.dim() != 2 or self.bias.shape != (self.weight.shape[0],):
            raise ValueError(f"dense weight {tuple(self.weight.shape)} / bias "
                             f"{tuple(self.bias.shape)} do not agree")
        if self.neuron is not None and self.neuron.threshold.numel() not in (1, self.weight.shape[0]):
            raise ValueError("neuron thresholds must be one per layer or one per output")

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]


@dataclass
class SSA:
    """Spiking self-attention, per head and per step t (Q, K, V binary spikes):

        I_i[t] = scale * sum_{j <= i} (Q_i[t] . K_j[t]) V_j[t]      (no softmax)
        output = neuron(I)

    With `position_norm`, I_i[t] is divided by i + 1, the number of keys query i
    attends to (a per-position constant, applied on chip as a threshold of
    theta * (i + 1)), so the sum becomes a mean and its scale no longer grows
    along the sequence. Keys and values of past tokens stay in synaptic memory
    (the KV cache, at most `kv_capacity` tokens)."""
    n_head: int
    head_dim: int
    scale: float
    neuron: NeuronModel
    causal: bool = True
    kv_capacity: int = 1024
    position_norm: bool = False

    def __post_init__(self):
        if not self.causal:      # a field of format 1; every executor runs GPT-2's causal attention
            raise ValueError("SSA must be causal: the reference, its fixed point and Lava attend to earlier "
                             "tokens only")

    @property
    def out_features(self) -> int:
        return self.n_head * self.head_dim


@dataclass
class Add:
    """The residual connection. On graded values: y = a + b. With a neuron (a
    spiking residual stream): I[t] = scale_a * a[t] + scale_b * b[t] + bias, into
    `neuron`, where a graded input counts as the same value at every step."""
    features: int
    neuron: NeuronModel | None = None
    scale_a: torch.Tensor = field(default_factory=lambda: torch.ones(1))
    scale_b: torch.Tensor = field(default_factory=lambda: torch.ones(1))
    bias: torch.Tensor = field(default_factory=lambda: torch.zeros(1))

    @property
    def out_features(self) -> int:
        return self.features


@dataclass
class GradedDense:
    """y = act(weight @ x + bias), once per token on graded values (the graded method):
    x crosses the synapses as one graded spike per input, the neuron adds the bias,
    applies `activation` (`identity`, or the model's GELU) and sends y as one graded
    spike. `out_range` is the largest |y| seen on calibration text (the quantiser sizes
    the payload from it)."""
    weight: torch.Tensor
    bias: torch.Tensor
    activation: str = "identity"
    out_range: float = 0.0

    def __post_init__(self):
        if self.weight.dim() != 2 or self.bias.shape != (self.weight.shape[0],):
            raise ValueError(f"graded dense weight {tuple(self.weight.shape)} / bias "
                             f"{tuple(self.bias.shape)} do not agree")

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]


@dataclass
class Attention:
    """Causal softmax attention on graded values, per head h (the graded method):

        y_i = sum_{j <= i} softmax_j(scale * q_i . k_j) v_j

    Keys and values of past tokens stay in synaptic memory (the KV cache, at most
    `kv_capacity` tokens), written as tokens arrive. `out_range`: the largest |y| on
    calibration text. `kv_grid`: ((bits, fraction bits) of the keys, of the values) the
    payloads a float run rounds them to before caching, as the chip's cache holds them
    (quantisation-aware training sets it; None elsewhere: the quantiser owns the formats)."""
    n_head: int
    head_dim: int
    scale: float
    kv_capacity: int = 1024
    out_range: float = 0.0
    kv_grid: tuple[tuple[int, int], tuple[int, int]] | None = None

    @property
    def out_features(self) -> int:
        return self.n_head * self.head_dim


OP_TYPES = {cls.__name__: cls for cls in (Embed, LayerNorm, Encode, Dense, SSA, Add, GradedDense, Attention)}


def out_kind(op) -> str:
    """The message kind an op emits."""
    neuron = getattr(op, "neuron", None)
    return neuron.kind if neuron is not None else "graded"


@dataclass(frozen=True)
class PopulationFormat:
    """How a population (or a readout) stores its numbers on chip: weights m * 2**weight_exp in
    state units, 2**unit_log2 state units per float unit, biases mb * 2**bias_exp, thresholds
    at most threshold_max (compiler.quantize says how each is chosen)."""
    weight_exp: int
    unit_log2: int
    bias_exp: int
    mantissa_bits_used: int
    threshold_max: int


@dataclass(frozen=True)
class MessageFormat:
    """A graded message: a signed payload of `bits` bits standing for payload / 2**frac."""
    bits: int
    frac: int


RESIDUAL_FORMAT = MessageFormat(GRADED_BITS, GRADED_FRACTION_BITS)


def limit_of(bits: int) -> int:
    """The largest magnitude of a signed `bits`-bit payload (or mantissa): symmetric, so that
    negating a message never saturates it."""
    return 2 ** (bits - 1) - 1


@dataclass(frozen=True)
class AccumulatorFormat(MessageFormat):
    """A GradedDense's message, and how it accumulates: input payloads of in_bits / in_frac,
    weights m * 2**weight_exp, the sum shifted right by acc_shift to acc_frac fraction bits."""
    in_bits: int
    in_frac: int
    weight_exp: int
    acc_shift: int
    acc_frac: int
    mantissa_bits_used: int


@dataclass(frozen=True)
class GradedPrecision:
    """The graded method's bit widths, sign included (its study changes one at a time).
    `exact` lists integer kernels computed exactly in float64 instead: exp, gelu, norm.
    Per layer, narrower weights (`layer_weight_bits`) and pruned synapses (`layer_sparsity`: the
    fraction of each neuron's synapses set to zero, chosen by `pruning`); a cut layer's weights
    rounded by `rounding` (see ROUNDINGS)."""
    weight_bits: int = 8
    kv_bits: int = 8
    activation_bits: int = 16
    exact: tuple[str, ...] = ()
    layer_weight_bits: tuple[tuple[str, int], ...] = ()   # (node, bits): layers narrower than weight_bits
    layer_sparsity: tuple[tuple[str, float], ...] = ()    # (node, fraction pruned): pruned layers
    pruning: str = "magnitude"                            # a synapse's importance: see PRUNINGS
    rounding: str = "nearest"

    def __post_init__(self):
        object.__setattr__(self, "exact", tuple(self.exact))
        object.__setattr__(self, "layer_weight_bits", tuple((str(n), int(b)) for n, b in self.layer_weight_bits))
        object.__setattr__(self, "layer_sparsity", tuple((str(n), float(f)) for n, f in self.layer_sparsity))
        if not all(2 <= b <= 16 for b in [self.weight_bits, *dict(self.layer_weight_bits).values()]):
            raise ValueError("weight mantissas are 2 to 16 bits wide, sign included")
        if not all(0.0 <= f < 1.0 for f in dict(self.layer_sparsity).values()):
            raise ValueError("a layer's pruned fraction is at least 0 and below 1")
        if self.pruning not in PRUNINGS:
            raise ValueError(f"pruning is one of {', '.join(PRUNINGS)}, not {self.pruning!r}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"rounding is one of {', '.join(ROUNDINGS)}, not {self.rounding!r}")

    def weight_bits_of(self, name: str) -> int:
        """The signed mantissa width of node `name`'s weights."""
        return dict(self.layer_weight_bits).get(name, self.weight_bits)

    def sparsity_of(self, name: str) -> float:
        """The fraction of each of node `name`'s neurons' synapses pruned (0: dense)."""
        return dict(self.layer_sparsity).get(name, 0.0)


# How the pruned synapses of a neuron are chosen: the least |w| ("magnitude"), or the least
# |w| * ||x|| over calibration text, x the synapse's input (Wanda: Sun et al., ICLR 2024).
PRUNINGS = ("magnitude", "wanda")
# How a narrowed or pruned layer's weights meet their grid: each to its nearest mantissa, or one
# input at a time with the error spread over the rest on calibration text (GPTQ: Frantar et al.,
# ICLR 2023). Layers at 8 bits dense always round to nearest.
ROUNDINGS = ("nearest", "gptq")


def _layer_format(data: dict):
    """A format read back from a file, its type told by its fields."""
    kind = AccumulatorFormat if "acc_shift" in data else MessageFormat if "bits" in data else PopulationFormat
    return kind(**data)


@dataclass(frozen=True)
class Quantization:
    """What the quantiser chose for a graph: the target, each on-chip node's format, and the graded
    method's precision. Typed here; plain data only in files (`as_data`, `from_data`)."""
    target: str
    layers: dict = field(default_factory=dict)          # node -> PopulationFormat | MessageFormat | ...
    precision: GradedPrecision | None = None

    def as_data(self) -> dict:
        data = {"target": self.target, "layers": {n: dataclasses.asdict(f) for n, f in self.layers.items()}}
        if self.precision is not None:
            data["precision"] = dataclasses.asdict(self.precision)
        return data

    @staticmethod
    def from_data(data: dict) -> "Quantization":
        precision = data.get("precision")
        return Quantization(data["target"], {n: _layer_format(f) for n, f in data["layers"].items()},
                            GradedPrecision(**precision) if precision is not None else None)


@dataclass(frozen=True)
class Role:
    """What a node is in the transformer: its branch (`embed`, `attention`, `mlp`, `head`) and its
    part of it (`norm`, `encode`, `q`, `k`, `v`, `op`, `output`, `add`, `hidden`, `table`, `readout`).
    Energy and fine-tuning choose nodes by role, never by name."""
    branch: str
    part: str


# The converter's node names say each node's role: h{block}.attn.q, h{block}.ln_2, embed, ...
# (files of format 1 store no roles, so loaders read them off the names the same way).
_BLOCK_NAMES = {("attention", "norm"): "ln_1", ("mlp", "norm"): "ln_2"}
_BRANCH_PREFIX = {"attention": "attn", "mlp": "mlp"}
_PART_NAMES = {"hidden": "c_fc", "output": "c_proj"}
_TOP_NAMES = {Role("embed", "table"): "embed", Role("embed", "encode"): "embed.encode",
              Role("head", "norm"): "ln_f", Role("head", "readout"): "lm_head"}
_ATTENTION_OPS = ("ssa", "softmax")
UNKNOWN_ROLE = Role("other", "other")


def role_of_name(name: str) -> Role:
    """The role a converter's node name says (UNKNOWN_ROLE for a name the converter never writes)."""
    top = {v: k for k, v in _TOP_NAMES.items()}
    if name in top:
        return top[name]
    head, _, rest = name.partition(".")
    if not (head[:1] == "h" and head[1:].isdigit()):
        return UNKNOWN_ROLE
    norms = {v: Role(*k) for k, v in _BLOCK_NAMES.items()}
    if rest in norms:
        return norms[rest]
    prefix, _, part = rest.partition(".")
    branch = {v: k for k, v in _BRANCH_PREFIX.items()}.get(prefix)
    if branch is None or not part:
        return UNKNOWN_ROLE
    if branch == "attention" and part in _ATTENTION_OPS:
        return Role(branch, "op")
    return Role(branch, {v: k for k, v in _PART_NAMES.items()}.get(part, part))


@dataclass
class SpikingGraph:
    """The IR plus what produced it (model name, method, options) and, once quantised, the
    formats its numbers are stored in."""
    graph: nx.DiGraph
    meta: dict = field(default_factory=dict)
    quantization: Quantization | None = None

    def add(self, name: str, op, inputs: dict[str, str] | None = None, host: bool = False,
            block: int | None = None, role: Role | None = None) -> str:
        self.graph.add_node(name, op=op, host=host, block=block, role=role or role_of_name(name))
        for port, source in (inputs or {}).items():
            self.connect(source, name, port)
        return name

    def connect(self, source: str, target: str, port: str) -> None:
        """An edge from an existing node, labelled with what it carries."""
        source_op = self.graph.nodes[source]["op"]
        self.graph.add_edge(source, target, port=port, shape=(source_op.out_features,), kind=out_kind(source_op))

    def op(self, name: str):
        return self.graph.nodes[name]["op"]

    def role(self, name: str) -> Role:
        return self.graph.nodes[name]["role"]

    def inputs(self, name: str) -> dict[str, str]:
        return {data["port"]: source for source, _, data in self.graph.in_edges(name, data=True)}

    def order(self) -> list[str]:
        return list(nx.lexicographical_topological_sort(self.graph))

    def spiking_nodes(self) -> list[str]:
        return [n for n in self.order() if out_kind(self.op(n)) != "graded"]

    def weight_grid(self) -> GradedPrecision:
        """The per-layer weight widths and pruning this graph was fitted or fine-tuned for (meta
        "weight_grid", written by `nxcompile fit --save-graph` and `finetune`), else 8 bits dense."""
        grid = self.meta.get("weight_grid")
        return GradedPrecision(**grid) if grid is not None else GradedPrecision()

    def with_weight_grid(self, precision: GradedPrecision) -> "SpikingGraph":
        """The graph recording `precision`'s widths and pruned fractions as the grid its weights are
        for (the quantiser's default), reached by magnitude pruning and nearest rounding: the rule
        fine-tuning trains through, and one that finds again weights already on the grid (however
        they got there: Wanda, GPTQ), since their zeros are the least |w| and their values on it."""
        grid = dataclasses.replace(precision, pruning="magnitude", rounding="nearest")
        self.meta["weight_grid"] = json.loads(json.dumps(dataclasses.asdict(grid)))
        return self

    def copy(self) -> "SpikingGraph":
        """A deep copy (ops, metadata and formats)."""
        return copy.deepcopy(self)

    def message_format(self, name: str) -> MessageFormat:
        """The format of the graded message node `name` sends: the quantiser's, else (host values,
        the rate-coded methods' graded messages) the residual stream's."""
        fmt = self.quantization.layers.get(name) if self.quantization is not None else None
        return fmt if isinstance(fmt, MessageFormat) else RESIDUAL_FORMAT

    def file_meta(self) -> dict:
        """The metadata as files store it: the quantisation record as plain data under its key."""
        if self.quantization is None:
            return self.meta
        return {**self.meta, "quantization": self.quantization.as_data()}

    @staticmethod
    def from_file_meta(meta: dict) -> "SpikingGraph":
        meta = dict(meta)
        quantization = meta.pop("quantization", None)
        return SpikingGraph(nx.DiGraph(), meta, Quantization.from_data(quantization) if quantization else None)


def _input_widths(op) -> dict[str, int]:
    """The width each input port of an op expects."""
    if isinstance(op, (Dense, GradedDense)):
        return {"x": op.weight.shape[1]}
    if isinstance(op, Encode):
        return {"x": op.features}
    if isinstance(op, (SSA, Attention)):
        return {port: op.out_features for port in "qkv"}
    if isinstance(op, Add):
        return {"a": op.features, "b": op.features}
    if isinstance(op, LayerNorm):
        return {"x": op.weight.shape[0]}
    return {}


def _per_neuron_sizes(op) -> dict[str, int]:
    """Tensors that hold one value per output neuron, or one for all."""
    neuron = getattr(op, "neuron", None)
    sizes = {"threshold": neuron.threshold.numel()} if neuron is not None else {}
    if isinstance(op, (Encode, Add)):
        sizes.update(bias=op.bias.numel())
    if isinstance(op, Encode):
        sizes.update(gain=op.gain.numel())
    if isinstance(op, LayerNorm):
        sizes.update(bias=op.bias.numel())
    if isinstance(op, GradedDense):
        sizes.update(bias=op.bias.numel())
    if isinstance(op, Embed):
        sizes.update(wpe=op.wpe.shape[1])
    return sizes


def inconsistencies(spiking: "SpikingGraph") -> list[str]:
    """What does not fit in a graph read from a file: ports fed by layers of another width,
    missing or unknown ports, per-neuron tensors of the wrong size, non-finite numbers, cycles."""
    problems = []
    if not nx.is_directed_acyclic_graph(spiking.graph):
        return ["the layers' inputs form a cycle"]
    for name in spiking.graph.nodes:
        op = spiking.op(name)
        expected, inputs = _input_widths(op), spiking.inputs(name)
        if set(inputs) != set(expected):
            problems.append(f"{name} has inputs {sorted(inputs)}, a {type(op).__name__} takes {sorted(expected)}")
            continue
        for port, source in inputs.items():
            width = spiking.op(source).out_features
            if width != expected[port]:
                problems.append(f"{name}.{port} expects {expected[port]} values, {source} sends {width}")
        for field_name, size in _per_neuron_sizes(op).items():
            if size not in (1, op.out_features):
                problems.append(f"{name}.{field_name} has {size} values for {op.out_features} neurons")
        tensors: dict[str, torch.Tensor] = {}
        flatten_op(name, op, tensors)
        problems += [f"{key} holds non-finite numbers" for key, t in tensors.items()
                     if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    return problems


def flatten_op(prefix: str, op, tensors: dict[str, torch.Tensor]) -> dict:
    """Op fields as JSON, with tensors moved into `tensors` under prefixed keys
    (one walk of an op's fields for every file format that stores ops)."""
    fields = {}
    for f in dataclasses.fields(op):
        value = getattr(op, f.name)
        if isinstance(value, torch.Tensor):
            tensors[f"{prefix}.{f.name}"] = value.detach().contiguous().cpu()
            fields[f.name] = {"tensor": f"{prefix}.{f.name}"}
        elif isinstance(value, NeuronModel):
            fields[f.name] = {"neuron": flatten_op(f"{prefix}.{f.name}", value, tensors)}
        else:
            fields[f.name] = value
    return fields


def unflatten_op(cls, fields: dict, tensors: dict[str, torch.Tensor]):
    kwargs = {}
    for name, value in fields.items():
        if isinstance(value, dict) and "tensor" in value:
            kwargs[name] = tensors[value["tensor"]]
        elif isinstance(value, dict) and "neuron" in value:
            kwargs[name] = unflatten_op(NeuronModel, value["neuron"], tensors)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def save_graph(spiking: SpikingGraph, path: Path) -> None:
    """One safetensors file: tensors as tensors, structure as JSON in its metadata.
    Written to a temporary name and renamed, so a reader never sees half a file."""
    tensors: dict[str, torch.Tensor] = {}
    nodes = [{"name": n, "type": type(d["op"]).__name__, "host": d["host"], "block": d["block"],
              "fields": flatten_op(f"n{i}", d["op"], tensors)}
             for i, (n, d) in enumerate((n, spiking.graph.nodes[n]) for n in spiking.order())]
    edges = [{"source": s, "target": t, "port": d["port"]}
             for s, t, d in sorted(spiking.graph.edges(data=True))]
    structure = {"format": "nxcompile-spiking-graph", "version": FORMAT_VERSION,
                 "nodes": nodes, "edges": edges, "meta": spiking.file_meta()}
    write_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata={"structure": json.dumps(structure)}),
                     "choose a writable path with free space", errors=(OSError, SafetensorError))


def load_graph(path: Path) -> SpikingGraph:
    try:
        with safe_open(str(path), framework="pt") as handle:
            structure = json.loads((handle.metadata() or {})["structure"])
        tensors = load_file(str(path))
    except (OSError, KeyError, ValueError, SafetensorError) as exc:
        raise UsageError(f"{path} is not a spiking graph saved by nxcompile ({exc})") from exc
    if structure.get("format") != "nxcompile-spiking-graph":
        raise UsageError(f"{path} is not a spiking graph saved by nxcompile")
    try:
        spiking = SpikingGraph.from_file_meta(structure["meta"])
        for node in structure["nodes"]:
            op = unflatten_op(OP_TYPES[node["type"]], node["fields"], tensors)
            spiking.add(node["name"], op, host=node["host"], block=node["block"])
        for edge in structure["edges"]:
            spiking.connect(edge["source"], edge["target"], edge["port"])
        problems = inconsistencies(spiking)
    except (KeyError, ValueError, TypeError, AttributeError, IndexError, RuntimeError) as exc:
        raise UsageError(f"{path} is a damaged spiking graph ({type(exc).__name__}: {exc}); write it again") from None
    if problems:
        raise UsageError(f"{path} is an inconsistent spiking graph: {problems[0]}; write it again")
    return spiking
