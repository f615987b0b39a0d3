"""Every network lava-dl writes, nxcompile reads: random networks built from lava-dl's own slayer blocks
(CUBA and sigma-delta; dense, recurrent dense and conv layers, flatten, 1 to 300 neurons per layer, with
and without delays) and exported with their own export_hdf5. Each one netx builds, nxcompile reads,
places validly on Loihi 2 (both packings) and runs through `nxcompile run`, sending what nxcompile's
reader says its output layer sends; what netx cannot build, nxcompile refuses in one line.

CI runs NETWORKS cases; NXCOMPILE_FUZZ=long runs ten times as many (`-m slow`, README)."""
from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import nxcompile  # noqa: F401  (Lava's Python 3.11 fixes)
import nxcompile.backends.lava_sim  # noqa: F401  (Lava's runtime before any tqdm lock)
from lava.lib.dl import netx, slayer
from nxcompile.cli import main
from nxcompile.compiler.layers import network_from_netx
from nxcompile.compiler.partition import PACKINGS, place
from nxcompile.compiler.targets import TARGETS

NETWORKS = 200 if os.environ.get("NXCOMPILE_FUZZ") == "long" else 20
STEPS = 6
NEURONS = {"cuba": dict(threshold=1.0, current_decay=0.25, voltage_decay=0.05),
           "sigma_delta": dict(threshold=0.05, activation=torch.nn.functional.relu)}


def _blocks(data, family: str) -> tuple[list, tuple[int, ...], int]:
    """Random slayer blocks, the input's shape (without time) and netx's skip_layers (1: an input block
    that only gives the conv stack its shape)."""
    kind = getattr(slayer.block, family)
    params = NEURONS[family]
    scale = data.draw(st.sampled_from([1, 2, 4]))
    blocks, skip = [], 0
    if data.draw(st.booleans(), label="conv"):
        shape = tuple(data.draw(st.integers(1, 3 if i == 0 else 8)) for i in range(3))   # C, H, W
        blocks.append(kind.Input(params))
        (channels, height, width), skip = shape, 1
        for _ in range(data.draw(st.integers(1, 2))):
            out, padding, stride = data.draw(st.integers(1, 6)), data.draw(st.integers(0, 1)), data.draw(st.integers(1, 2))
            kernel = data.draw(st.integers(1, min(3, height + 2 * padding, width + 2 * padding)))
            blocks.append(kind.Conv(params, channels, out, kernel, stride=stride, padding=padding, weight_scale=scale))
            channels = out
            height, width = ((size + 2 * padding - kernel) // stride + 1 for size in (height, width))
        blocks.append(kind.Flatten())
        width = None          # known after a forward pass
    else:
        shape = (data.draw(st.integers(1, 300)),)
        width = shape[0]
    for i in range(data.draw(st.integers(1, 3))):
        out = data.draw(st.integers(1, 300))
        recurrent = family == "cuba" and data.draw(st.booleans(), label="recurrent")
        delay = data.draw(st.booleans(), label="delay") and not recurrent
        blocks.append((width, out, recurrent, delay))
        width = out
    return blocks, shape, skip


def build(data, folder) -> tuple[str, tuple[int, ...], int]:
    """Draws a network, runs it once in slayer (which sets every block's shape) and exports it."""
    family = data.draw(st.sampled_from(sorted(NEURONS)))
    kind, params = getattr(slayer.block, family), NEURONS[family]
    plan, shape, skip = _blocks(data, family)
    torch.manual_seed(data.draw(st.integers(0, 2 ** 16)))
    x = (torch.rand(1, *shape, STEPS) < 0.5).float()
    blocks = []
    with torch.no_grad():            # slayer's forward trips autograd's view checks on this torch
        for block in plan:
            if isinstance(block, tuple):
                width, out, recurrent, delay = block
                width = width or int(np.prod(x.shape[1:-1]))
                block = kind.Recurrent(params, width, out, weight_scale=4) if recurrent else \
                    kind.Dense(params, width, out, weight_scale=4, delay=delay)
            x = block(x)
            blocks.append(block)
    path = str(folder / f"{family}.net")
    with h5py.File(path, "w") as handle:
        layers = handle.create_group("layer")
        for i, block in enumerate(blocks):
            block.export_hdf5(layers.create_group(str(i)))
    return path, shape, skip


@pytest.mark.slow
def test_every_network_netx_builds_nxcompile_reads_places_and_runs(tmp_path_factory, capsys):
    """Each drawn network: netx builds it or nxcompile refuses it in one line; nxcompile's own reader,
    placing it validly with both packings, agrees with what netx's run sends (the output layer's
    neurons, every step). Counted: most draws build."""
    tried = {"built": 0, "refused": 0}

    @settings(max_examples=NETWORKS, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              phases=(Phase.generate,))     # each case runs Lava: no shrinking
    @given(data=st.data())
    def one_network(data):
        folder = tmp_path_factory.mktemp("netx")
        path, shape, skip = build(data, folder)
        try:
            netx.hdf5.Network(net_config=path, skip_layers=skip)
        except Exception:                                  # noqa: BLE001  (whatever netx raises)
            assert main(["partition", path, "--skip-layers", str(skip)]) == 2
            assert len(capsys.readouterr().err.strip().splitlines()) == 1
            tried["refused"] += 1
            return
        network = network_from_netx(path, skip)
        for packing in PACKINGS:
            place(network, TARGETS["loihi2"], packing)
        assert main(["inspect", path]) == 0
        rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16)))
        spikes = (rng.integers(-64, 64, shape[::-1] + (STEPS,)) if "sigma_delta" in path
                  else rng.random(shape[::-1] + (STEPS,)) < 0.5)
        np.save(folder / "in.npy", spikes)
        assert main(["run", path, "--input", str(folder / "in.npy"), "--skip-layers", str(skip),
                     "-o", str(folder / "out.npy")]) == 0
        sent = np.load(folder / "out.npy")
        assert int(np.prod(sent.shape[:-1])) == network.layers[-1].neurons and sent.shape[-1] == STEPS
        capsys.readouterr()
        tried["built"] += 1

    one_network()
    assert tried["built"] + tried["refused"] == NETWORKS and tried["built"] > NETWORKS // 2, tried


def _two_layer_file(path, second: dict) -> None:
    """A netx file: a CUBA dense layer 4 -> 3, then `second` (datasets by name)."""
    with h5py.File(path, "w") as handle:
        layers = handle.create_group("layer")
        first = layers.create_group("0")
        first.create_dataset("type", (1,), "S10", [b"dense"])
        first.create_dataset("shape", data=np.array([3]))
        first.create_dataset("weight", data=np.arange(12, dtype=np.float32).reshape(3, 4) - 6)
        for key, value in dict(type=b"CUBA", iDecay=1024, vDecay=128, vThMant=80, refDelay=1, wgtExp=0).items():
            first.create_dataset(f"neuron/{key}", data=value)
        group = layers.create_group("1")
        for key, value in second.items():
            group.create_dataset(key, data=value)


@pytest.mark.parametrize("kind", ["pool", "average", "concat", "dense_comp"])
def test_a_layer_netx_cannot_build_is_one_line_in_every_command(kind, tmp_path, capsys):
    path = tmp_path / f"{kind}.net"
    _two_layer_file(path, {"type": np.array([kind.encode()], dtype="S10"), "shape": np.array([3])})
    np.save(tmp_path / "in.npy", np.zeros((4, 2), dtype=bool))
    for argv in (["inspect", str(path)], ["partition", str(path)],
                 ["run", str(path), "--input", str(tmp_path / "in.npy"), "--steps", "2"],
                 ["energy", str(path), "--input", str(tmp_path / "in.npy")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert kind in err and "netx" in err and len(err.splitlines()) == 1, argv


def test_complex_weights_in_a_dense_layer_read_as_netx_builds_them(tmp_path):
    """netx builds a `dense` layer with weight/real and weight/imag as a ComplexDense: both matrices' synapses."""
    path = tmp_path / "complex.net"
    _two_layer_file(path, {"type": np.array([b"dense"], dtype="S10"), "shape": np.array([2]),
                           "weight/real": np.ones((2, 3), np.float32), "weight/imag": np.ones((2, 3), np.float32),
                           "neuron/type": b"RF", "neuron/vThMant": 10, "neuron/period": 8, "neuron/decay": 0.1})
    network = network_from_netx(path)
    assert network.layers[-1].params["in_features"] == 6 and network.layers[-1].message_bits == 1
    place(network, TARGETS["loihi2"])
