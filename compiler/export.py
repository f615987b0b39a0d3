"""Export: a quantised spiking graph (and its placement) -> one lava-dl `.net` HDF5 file, and back.

Layout (DESIGN.md "The `.net` file"):
  layer/<i>            one group per node, in topological order, as netx numbers them.
    type               netx's `dense` for a Dense layer of binary CUBA-like neurons (plus
                       `weight`, `bias`, `shape` and `neuron/{type, iDecay, vDecay, vThMant,
                       refDelay, wgtExp}` exactly where netx reads them); an extension type
                       (`embed`, `layernorm`, `encode`, `readout`, `ssa`, `add`, `dense_vth`
                       for binary neurons with a threshold each, and the graded method's
                       `graded_dense`, `attention`) otherwise.
    nx_fields, nx/     the op's own fields as JSON (`graph.flatten_op`, as the graph file
                       stores them) and its tensors as datasets: what nxcompile reads back
                       (netx ignores it).
    nx_name, nx_inputs (JSON port -> source node: the DAG), nx_host, nx_block
  simulation/{Ts, tSample}   netx's fields; tSample = T, the steps per token.
  nxcompile            attributes format and version; datasets `meta` (model, method,
                       options, quantisation formats) and `placement`, as JSON, and
                       `tokenizer` (the model's tokenizer.json; empty when none was given).

Tensors are written as float32 (integers on the fixed-point grid stay exact) and
HDF5 object times are off, so the same graph gives byte-identical files. Written
to a temporary name and renamed: never half a file. Reading is data only.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import torch

from nxcompile.compiler.graph import (SSA, Add, Attention, Dense, Embed, Encode, GradedDense, LayerNorm, SpikingGraph,
                                      flatten_op, inconsistencies, unflatten_op)
from nxcompile.compiler.layers import netx_value
from nxcompile.compiler.partition import Placement
from nxcompile.errors import UsageError
from nxcompile.files import write_atomically
from nxcompile.sim.fixed_point import DECAY_UNITS

FORMAT = "nxcompile-net"
VERSION = 1
EXTENSION_TYPES = {Embed: "embed", LayerNorm: "layernorm", Encode: "encode", SSA: "ssa", Add: "add",
                   GradedDense: "graded_dense", Attention: "attention"}
TYPE_OPS = {"dense": Dense, "dense_vth": Dense, "readout": Dense,
            **{name: cls for cls, name in EXTENSION_TYPES.items()}}


class NetFileError(UsageError):
    """A `.net` file that nxcompile cannot read as its own."""


def layer_type(op) -> str:
    """netx's `dense` where netx can build the layer: binary neurons sharing one threshold (netx's
    CUBA has one `vThMant` per layer). `dense_vth` for binary neurons with a threshold each, which
    netx would build with a wrong threshold; an extension type otherwise."""
    if isinstance(op, Dense):
        if op.neuron is None or op.neuron.kind != "binary":
            return "readout"
        return "dense" if op.neuron.threshold.numel() == 1 else "dense_vth"
    return EXTENSION_TYPES[type(op)]


def _dataset(group: h5py.Group, name: str, value) -> None:
    group.create_dataset(name, data=value, track_times=False)


def _write_op(group: h5py.Group, op) -> None:
    """The op's fields as JSON and its tensors as datasets, as the graph file stores them."""
    tensors: dict[str, torch.Tensor] = {}
    _dataset(group, "nx_fields", json.dumps(flatten_op("op", op, tensors), sort_keys=True))
    stored = group.create_group("nx", track_order=True)
    for key, tensor in tensors.items():
        _dataset(stored, key, tensor.cpu().numpy().astype(np.float32))


def _write_netx_dense(group: h5py.Group, op: Dense) -> None:
    """The fields lava-dl netx's `create_dense` reads, in its units."""
    _dataset(group, "weight", op.weight.detach().cpu().numpy().astype(np.float32))
    _dataset(group, "bias", op.bias.detach().cpu().numpy().astype(np.float32))
    _dataset(group, "shape", np.array([op.out_features], dtype=np.int64))
    neuron = group.create_group("neuron", track_order=True)
    _dataset(neuron, "type", "CUBA")
    _dataset(neuron, "iDecay", np.int64(DECAY_UNITS))             # no current carried between steps
    _dataset(neuron, "vDecay", np.int64(round(op.neuron.leak * DECAY_UNITS)))
    _dataset(neuron, "vThMant", np.int64(round(float(op.neuron.threshold))))
    _dataset(neuron, "refDelay", np.int64(1))
    _dataset(neuron, "wgtExp", np.int64(0))


def _write(handle: h5py.File, spiking: SpikingGraph, placement: Placement | None, tokenizer: str) -> None:
    layers = handle.create_group("layer", track_order=True)
    for i, name in enumerate(spiking.order()):
        node = spiking.graph.nodes[name]
        op = node["op"]
        group = layers.create_group(str(i), track_order=True)
        kind = layer_type(op)
        _dataset(group, "type", np.array([kind.encode()], dtype="S12"))
        if kind == "dense":
            _write_netx_dense(group, op)
        _write_op(group, op)
        _dataset(group, "nx_name", name)
        _dataset(group, "nx_inputs", json.dumps(spiking.inputs(name), sort_keys=True))
        _dataset(group, "nx_host", bool(node["host"]))
        _dataset(group, "nx_block", -1 if node["block"] is None else int(node["block"]))
    simulation = handle.create_group("simulation", track_order=True)
    _dataset(simulation, "Ts", np.int64(1))
    _dataset(simulation, "tSample", np.int64(spiking.meta.get("options", {}).get("timesteps", 1)))
    root = handle.create_group("nxcompile", track_order=True)
    root.attrs["format"] = FORMAT
    root.attrs["version"] = VERSION
    # Datasets, not attributes: HDF5 caps an attribute at 64 KiB and a placement can be megabytes.
    _dataset(root, "meta", json.dumps(spiking.file_meta(), sort_keys=True))
    _dataset(root, "placement", json.dumps(placement.as_data(), sort_keys=True) if placement is not None else "")
    _dataset(root, "tokenizer", tokenizer)


def export_net(spiking: SpikingGraph, path: Path, placement: Placement | None = None, tokenizer=None) -> None:
    """Write the graph (and its placement) to `path`, atomically. A fast
    Hugging Face `tokenizer` is stored as its tokenizer.json, so the file alone runs text."""
    text = tokenizer.backend_tokenizer.to_str() if tokenizer is not None else ""

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w", track_order=True) as handle:
            _write(handle, spiking, placement, text)

    write_atomically(path, write, "choose a writable path with free space", errors=(OSError, ValueError))


def _read_op(group: h5py.Group, cls):
    tensors = {key: torch.from_numpy(np.array(item[()], dtype=np.float32)) for key, item in group["nx"].items()}
    return unflatten_op(cls, json.loads(netx_value(group, "nx_fields")), tensors)


# What h5py, json, numpy, torch and the ops' own checks raise on a damaged file (found by
# tests/test_net_fuzz.py): every one becomes a NetFileError.
READ_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError, IndexError, OverflowError)


def load_net(path: Path) -> tuple[SpikingGraph, Placement | None]:
    """The graph and placement an nxcompile `.net` file holds; one clear error otherwise."""
    try:
        with h5py.File(path, "r") as handle:
            spiking, placement = _read(handle, path)
        problems = inconsistencies(spiking)
    except NetFileError:
        raise
    except READ_ERRORS as exc:
        raise NetFileError(f"{path} is not a readable nxcompile .net file ({type(exc).__name__}: {exc}); "
                           f"export it again") from None
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise NetFileError(f"{path} is inconsistent: {problems[0]}{more}; export it again")
    return spiking, placement


def _read(handle: h5py.File, path: Path) -> tuple[SpikingGraph, Placement | None]:
    root = handle.get("nxcompile")
    if root is None or root.attrs.get("format") != FORMAT:
        raise NetFileError(f"{path} is a .net file but not one nxcompile wrote (no nxcompile group); "
                           f"`nxcompile partition` and `nxcompile inspect` read foreign netx files")
    if int(root.attrs["version"]) > VERSION:
        raise NetFileError(f"{path} was written by a newer nxcompile (format {root.attrs['version']})")
    meta, placement = json.loads(netx_value(root, "meta")), netx_value(root, "placement")
    spiking = SpikingGraph.from_file_meta(meta)
    layers = handle["layer"]
    edges = []
    for i in range(len(layers)):
        group = layers[str(i)]
        kind = netx_value(group, "type")
        if kind not in TYPE_OPS:
            raise NetFileError(f"{path}: layer {i} has unknown type {kind!r}")
        name = netx_value(group, "nx_name")
        block = int(group["nx_block"][()])
        spiking.add(name, _read_op(group, TYPE_OPS[kind]), host=bool(group["nx_host"][()]),
                    block=None if block < 0 else block)
        edges += [(source, name, port) for port, source in json.loads(netx_value(group, "nx_inputs")).items()]
    for source, target, port in edges:
        if source not in spiking.graph:
            raise NetFileError(f"{path}: layer {target} reads {source!r}, which the file does not hold")
        spiking.connect(source, target, port)
    return spiking, (Placement.from_data(json.loads(placement)) if placement else None)

def load_tokenizer(path: Path):
    """The tokenizer stored in an nxcompile `.net` file (a transformers fast tokenizer)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    try:
        with h5py.File(path, "r") as handle:
            text = netx_value(handle["nxcompile"], "tokenizer", "")
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise NetFileError(f"{path} is not a readable nxcompile .net file ({exc}); export it again") from None
    if not text:
        raise NetFileError(f"{path} was exported without a tokenizer; export it again with `nxcompile export`")
    try:
        tokenizer = Tokenizer.from_str(text)
    except Exception as exc:   # the tokenizers library raises plain Exceptions on bad JSON
        raise NetFileError(f"{path} holds a damaged tokenizer ({exc}); export it again") from None
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def is_nxcompile_net(path: Path) -> bool:
    """Whether an HDF5 `.net` file is one nxcompile wrote (else a foreign lava-dl netx network)."""
    try:
        with h5py.File(path, "r") as handle:
            return "nxcompile" in handle
    except OSError as exc:
        raise UsageError(f"{path} is not an HDF5 .net file ({exc}); give a file written by lava-dl or "
                         f"`nxcompile export`") from None


def _neuron_text(op) -> str:
    neuron = getattr(op, "neuron", None)
    if neuron is None:
        return "graded value"
    theta = neuron.threshold
    return (f"{neuron.kind}, theta {float(theta.min()):g}..{float(theta.max()):g}, leak {neuron.leak:g}, "
            f"reset by subtraction")


def describe_net(path: Path) -> list[str]:
    """An nxcompile `.net` file's layers, types, shapes, neurons and placement, a line each."""
    spiking, placement = load_net(path)
    meta = spiking.meta
    quantised = spiking.quantization.target if spiking.quantization is not None else "nothing (float)"
    lines = [f"{path}: nxcompile .net, model {meta.get('model')}, method {meta['options']['method']}, "
             f"T = {meta['options']['timesteps']}, quantised for {quantised}",
             f"{'#':>3} {'layer':22} {'type':10} {'out':>6} {'where':6} {'inputs':40} neurons"]
    for i, name in enumerate(spiking.order()):
        node = spiking.graph.nodes[name]
        inputs = ", ".join(f"{port}={source}" for port, source in sorted(spiking.inputs(name).items()))
        lines.append(f"{i:>3} {name:22} {layer_type(node['op']):10} {node['op'].out_features:>6} "
                     f"{'host' if node['host'] else 'chip':6} {inputs:40} {_neuron_text(node['op'])}")
    if placement is None:
        return lines + ["placement: none stored"]
    return lines + [f"placement: {placement.cores_used} cores on {placement.chips_used} chip(s) of "
                    f"{placement.target}, lower bound {placement.lower_bound_cores}, {len(placement.blocks)} "
                    f"blocks; host layers {', '.join(placement.host_layers)}"]
