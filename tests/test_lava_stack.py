"""The real Lava stack on this Python: the compatibility fixes, Lava's fixed-point
simulator, lava-dl slayer training and export, and netx reproducing Intel's
published outputs exactly."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import nxcompile  # noqa: F401  (installs the fixes before Lava is imported)
from nxcompile import lava_compat
from lava.lib.dl import netx, slayer
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.proc import io
from lava.proc.lif.process import LIF


def fixed_point_config() -> Loihi2SimCfg:
    return Loihi2SimCfg(select_tag="fixed_pt")


def test_only_the_start_method_fix_applies_on_python_310(monkeypatch):
    monkeypatch.setattr(sys, "version_info", (3, 10, 14))
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if not isinstance(f, lava_compat._LavaFinder)])
    for name in (lava_compat.MULTIPROCESSING, lava_compat.VAR_MODEL):
        monkeypatch.delitem(sys.modules, name)             # as before Lava's first import
    lava_compat.install()
    finder = next(f for f in sys.meta_path if isinstance(f, lava_compat._LavaFinder))
    assert set(finder.patches) == {lava_compat.MULTIPROCESSING}


def test_lava_imports_after_multiprocessing_was_used():
    """tqdm's lock (any model loading) fixes multiprocessing's start method before Lava's runtime module
    asks for 'fork': a fresh interpreter that uses multiprocessing first still imports Lava."""
    import subprocess

    code = ("import multiprocessing; multiprocessing.RLock(); import nxcompile; "
            "from lava.magma.core.process.process import AbstractProcess; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-400:]


def test_slayer_object_detection_is_the_empty_stand_in():
    module = sys.modules[lava_compat.OBJECT_DETECTION]
    assert not [name for name in vars(module) if not name.startswith("__")]


def test_byte_encoder_is_hashable():
    from lava.magma.compiler.var_model import ByteEncoder

    assert hash(ByteEncoder()) == hash(ByteEncoder())


def bias_driven_if_spikes(bias: np.ndarray, bias_exp: int, vth: int, steps: int) -> np.ndarray:
    """Loihi's integrate-and-fire with no leak, written out independently of Lava:
    v += bias * 2**bias_exp each step; spike when v > vth * 2**6, then v = 0."""
    v = np.zeros_like(bias, dtype=np.int64)
    spikes = np.zeros(bias.shape + (steps,), dtype=np.int64)
    for t in range(steps):
        v += bias.astype(np.int64) << bias_exp
        spikes[:, t] = v > (vth << 6)
        v[spikes[:, t] == 1] = 0
    return spikes


def test_lif_network_runs_bit_exact_in_fixed_point():
    steps, bias, vth = 40, np.array([1, 3, 7, 20, 100]), 10
    neurons = LIF(shape=bias.shape, du=0, dv=0, vth=vth, bias_mant=bias, bias_exp=6)
    sink = io.sink.RingBuffer(shape=bias.shape, buffer=steps)
    neurons.s_out.connect(sink.a_in)
    neurons.run(condition=RunSteps(num_steps=steps), run_cfg=fixed_point_config())
    spikes = sink.data.get()
    neurons.stop()
    np.testing.assert_array_equal(spikes, bias_driven_if_spikes(bias, 6, vth, steps))
    assert spikes.sum() > 0


def test_slayer_trains_a_small_block_and_exports_for_netx(tmp_path):
    torch.manual_seed(0)
    neuron = dict(threshold=1.0, current_decay=0.5, voltage_decay=0.1, requires_grad=False)
    blocks = torch.nn.ModuleList([slayer.block.cuba.Dense(neuron, 20, 16, weight_norm=False),
                                  slayer.block.cuba.Dense(neuron, 16, 4, weight_norm=False)])
    inputs = (torch.rand(8, 20, 30) < 0.3).float()
    target_rate = torch.full((8, 4, 1), 0.2)
    optimizer = torch.optim.Adam(blocks.parameters(), lr=0.01)

    def loss_value() -> torch.Tensor:
        x = inputs
        for block in blocks:
            x = block(x)
        return ((x.mean(dim=-1, keepdim=True) - target_rate) ** 2).mean()

    first = loss_value().item()
    for _ in range(30):
        optimizer.zero_grad()
        loss = loss_value()
        loss.backward()
        optimizer.step()
    assert loss_value().item() < 0.5 * first

    import h5py

    path = tmp_path / "trained.net"
    with h5py.File(path, "w") as handle:
        layers = handle.create_group("layer")
        for i, block in enumerate(blocks):
            block.export_hdf5(layers.create_group(f"{i}"))
    net = netx.hdf5.Network(net_config=str(path))
    assert [layer.shape for layer in net.layers] == [(16,), (4,)]


def run_netx(net: netx.hdf5.Network, source_data: np.ndarray, steps: int,
             resets: dict[int, int] | None = None) -> np.ndarray:
    source = io.source.RingBuffer(data=source_data)
    sink = io.sink.RingBuffer(shape=net.out_layer.out.shape, buffer=steps)
    source.s_out.connect(net.inp)
    net.out.connect(sink.a_in)
    for layer_index, offset in (resets or {}).items():
        for state in (net.layers[layer_index].neuron.u, net.layers[layer_index].neuron.v):
            io.reset.Reset(interval=17, offset=offset).connect_var(state)
    net.run(condition=RunSteps(num_steps=steps), run_cfg=fixed_point_config())
    output = sink.data.get()
    net.stop()
    return output


@pytest.mark.slow
def test_netx_tinynet_reproduces_intels_output(shared_netx):
    """lava-dl's test_tinynet, fed the input layer's recorded spikes (input.npy).

    As in lava-dl's test: Lava runs one step ahead of the recorded input
    (input.npy[..., 1:]), each layer's state is reset on the 17-step sample
    clock with its layer index as phase, and output[..., 2:17] must equal
    output.npy[..., 1:]. The input layer is skipped because its recorded
    spikes are fed directly (its bias image is not published with the file).
    """
    folder = shared_netx / "tinynet"
    spikes_in = np.load(folder / "input.npy")[0].transpose([2, 1, 0, 3])[..., 1:]
    expected = np.load(folder / "output.npy")[0].transpose([2, 1, 0, 3])[..., 1:]
    steps = 20
    source = np.zeros(spikes_in.shape[:-1] + (steps,))
    source[..., :spikes_in.shape[-1]] = spikes_in
    net = netx.hdf5.Network(net_config=str(folder / "network.net"), skip_layers=1)
    output = run_netx(net, source, steps, resets={0: 0, 1: 1})
    assert expected.sum() > 0
    np.testing.assert_array_equal(output[..., 2:17], expected)


@pytest.mark.slow
def test_netx_pilotnet_sdnn_reproduces_intels_output(shared_netx):
    folder = shared_netx / "pilotnet_sdnn"
    net = netx.hdf5.Network(net_config=str(folder / "network.net"))
    steps = len(net.layers)
    source = io.source.RingBuffer(data=np.load(folder / "input.npy"))
    sink = io.sink.RingBuffer(shape=net.out_layer.shape, buffer=steps)
    source.s_out.connect(net.in_layer.neuron.a_in)
    net.out_layer.out.connect(sink.a_in)
    net.run(condition=RunSteps(num_steps=steps), run_cfg=fixed_point_config())
    output = sink.data.get()
    net.stop()
    expected = np.load(folder / "output.npy")
    assert np.abs(expected).sum() > 0
    np.testing.assert_array_equal(output, expected)
