"""`.net` export: exact round trip, byte-identical files, netx reads the standard layers, clear errors."""
from __future__ import annotations

import dataclasses

import h5py
import networkx as nx
import numpy as np
import pytest
import torch

import nxcompile  # noqa: F401  (installs the Lava fixes before lava is imported)
from lava.lib.dl import netx
from nxcompile.compiler.convert import ConversionOptions, convert
from nxcompile.compiler.export import NetFileError, export_net, layer_type, load_net
from nxcompile.compiler.graph import Dense, NeuronModel, Role, SpikingGraph
from nxcompile.compiler.layers import netx_value, network_from_graph
from nxcompile.compiler.partition import place
from nxcompile.compiler.quantize import quantize
from nxcompile.compiler.targets import TARGETS
from tests.test_convert_reference import small_gpt2, token_batch


def assert_same_graph(a: SpikingGraph, b: SpikingGraph) -> None:
    assert a.order() == b.order() and a.meta == b.meta and a.quantization == b.quantization
    assert sorted(a.graph.edges(data="port")) == sorted(b.graph.edges(data="port"))
    for name in a.order():
        assert a.graph.nodes[name]["host"] == b.graph.nodes[name]["host"]
        assert a.role(name) == b.role(name)
        assert_same_fields(a.op(name), b.op(name), name)


def assert_same_fields(x, y, where: str) -> None:
    assert type(x) is type(y), where
    for f in dataclasses.fields(x):
        u, v = getattr(x, f.name), getattr(y, f.name)
        if isinstance(u, torch.Tensor):
            assert torch.equal(u, v), f"{where}.{f.name}"
        elif dataclasses.is_dataclass(u):
            assert_same_fields(u, v, f"{where}.{f.name}")
        else:
            assert u == v, f"{where}.{f.name}"


@pytest.fixture(scope="module")
def quantised_tiny(tiny_graph):
    return quantize(tiny_graph, TARGETS["loihi2"])


def test_quantised_gpt2_round_trips_exactly_with_its_placement(quantised_tiny, tmp_path):
    placement = place(network_from_graph(quantised_tiny), TARGETS["loihi2"])
    export_net(quantised_tiny, tmp_path / "m.net", placement)
    graph, read_placement = load_net(tmp_path / "m.net")
    assert_same_graph(quantised_tiny, graph)
    assert read_placement.as_data() == placement.as_data() and read_placement.blocks == placement.blocks
    assert graph.role("h0.attn.ssa") == Role("attention", "op") and graph.role("h1.mlp.c_fc") == Role("mlp", "hidden")


def test_same_graph_gives_byte_identical_files(quantised_tiny, tmp_path):
    export_net(quantised_tiny, tmp_path / "a.net")
    export_net(quantised_tiny, tmp_path / "b.net")
    assert (tmp_path / "a.net").read_bytes() == (tmp_path / "b.net").read_bytes()
    assert not list(tmp_path.glob("*.tmp*"))


def test_netx_builds_a_network_of_standard_layers_from_our_file(tmp_path):
    torch.manual_seed(0)
    spiking = SpikingGraph(nx.DiGraph(), {"options": {"timesteps": 4, "method": "test"}})
    w1 = torch.randint(-127, 128, (12, 8)).float()
    w2 = torch.randint(-127, 128, (5, 12)).float()
    spiking.add("d1", Dense(w1, torch.zeros(12), NeuronModel(threshold=torch.tensor([300.0]), leak=0.25)))
    spiking.add("d2", Dense(w2, torch.ones(5), NeuronModel(threshold=torch.tensor([200.0]))), {"x": "d1"})
    assert {layer_type(spiking.op(n)) for n in spiking.order()} == {"dense"}
    export_net(spiking, tmp_path / "standard.net")
    network = netx.hdf5.Network(net_config=str(tmp_path / "standard.net"))
    assert len(network) == 2
    assert network.layers[0].shape == (12,) and network.layers[1].shape == (5,)
    synapse = network.layers[1].synapse      # netx stores mantissa * 2**weight_exp
    np.testing.assert_array_equal(synapse.weights.get() * 2.0 ** synapse.proc_params["weight_exp"], w2.numpy())
    assert network.layers[0].neuron.vth.get() == 300 and network.layers[0].neuron.dv.get() == 1024


def test_a_layer_with_a_threshold_per_neuron_is_not_netx_dense(tmp_path):
    """netx's CUBA has one threshold per layer: a layer with one per neuron (`--thresholds neuron`)
    would be built by netx with a wrong one, so it is written as nxcompile's own type and read back
    exactly."""
    graph = quantize(convert(small_gpt2(), ConversionOptions(thresholds="neuron"), token_batch(2, 24, 200)),
                     TARGETS["loihi2"])
    export_net(graph, tmp_path / "m.net")
    with h5py.File(tmp_path / "m.net", "r") as handle:
        types = {netx_value(layer, "nx_name"): layer["type"][0] for layer in handle["layer"].values()}
    assert types["h0.mlp.c_fc"] == b"dense_vth" and graph.op("h0.mlp.c_fc").neuron.threshold.numel() > 1
    assert_same_graph(graph, load_net(tmp_path / "m.net")[0])


def test_a_foreign_netx_file_is_named_as_such(shared_netx):
    with pytest.raises(NetFileError, match="not one nxcompile wrote"):
        load_net(shared_netx / "tinynet" / "network.net")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "unknown type"])
def test_a_damaged_file_is_one_clear_error(quantised_tiny, tmp_path, damage):
    path = tmp_path / "m.net"
    export_net(quantised_tiny, path)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:5000])
    elif damage == "garbage":
        path.write_bytes(b"\x89HDF\r\n" + b"\0" * 100)
    else:
        with h5py.File(path, "r+") as handle:
            del handle["layer/3/type"]
            handle["layer/3"].create_dataset("type", data=np.array([b"teleport"], dtype="S10"))
    with pytest.raises(NetFileError):
        load_net(path)
