"""Energy counts on hand-built graphs whose spikes and fan-outs are known, priced by hand."""
from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

from nxcompile.compiler.graph import SSA, Dense, Embed, Encode, NeuronModel, SpikingGraph
from nxcompile.sim.energy import ENERGY_MODELS, count, total


def _graph() -> SpikingGraph:
    """embed (host, 4 values) -> encode (4 ternary) -> q, k, v (Dense 4 -> 4, binary) -> ssa (1 head of 4)
    -> readout (Dense 4 -> 3)."""
    g = SpikingGraph(nx.DiGraph(), {"options": {"gelu": "relu"}})
    g.add("embed", Embed(torch.zeros(10, 4), torch.zeros(8, 4)), host=True)
    g.add("enc", Encode(4, NeuronModel(torch.ones(1), signed=True)), {"x": "embed"}, block=0)
    for name in "qkv":
        g.add(name, Dense(torch.ones(4, 4), torch.zeros(4), NeuronModel(torch.ones(1))), {"x": "enc"}, block=0)
    g.add("ssa", SSA(1, 4, 1.0, NeuronModel(torch.ones(1))), {"q": "q", "k": "k", "v": "v"}, block=0)
    g.add("out", Dense(torch.ones(3, 4), torch.zeros(3)), {"x": "ssa"}, block=0)
    return g


def _values() -> dict:
    """2 tokens, T = 2 steps; spikes placed by hand (batch 1)."""
    enc = np.zeros((1, 2, 2, 4))
    enc[0, 0, 0, :3] = [1, -1, 1]          # token 0: 3 events at step 0
    enc[0, 1, 1, 0] = 5                    # token 1: one graded spike of payload 5: one event
    q, k, v = (np.zeros((1, 2, 2, 4)) for _ in range(3))
    q[0, 1, 0, :2] = 1                     # token 1, step 0: q = 1100
    k[0, 0, 0, :] = [1, 1, 0, 0]           # token 0, step 0: k = 1100 -> q1.k0 = 2
    k[0, 1, 0, :] = [0, 1, 0, 0]           # token 1, step 0: k = 0100 -> q1.k1 = 1
    v[0, 0, 0, :] = [1, 0, 1, 0]           # v0 has 2 spikes, v1 has 3
    v[0, 1, 0, :] = [1, 1, 1, 0]
    ssa = np.zeros((1, 2, 2, 4))
    ssa[0, 1, 0, 3] = 1
    return {"embed": np.zeros((1, 2, 4)), "enc": enc, "q": q, "k": k, "v": v, "ssa": ssa,
            "out": np.zeros((1, 2, 3))}


def test_counts_match_spikes_times_fan_out():
    rows = {r.name: r for r in count(_graph(), _values(), timesteps=2)}
    assert "embed" not in rows                                   # host work is not on chip
    assert rows["enc"].synaptic_ops == 4                         # a graded input: one event per neuron
    assert rows["q"].synaptic_ops == (3 + 1) / 2 * 4             # events per token x fan-out 4
    # token 0: q0 = 0 -> nothing; token 1: q1.k0 = 2 and q1.k1 = 1 coincidences, both scores nonzero,
    # so v0's 2 and v1's 3 spikes accumulate: 3 + 5 = 8 ops; mean over 2 tokens
    assert rows["ssa"].synaptic_ops == 8 / 2
    assert rows["out"].synaptic_ops == 1 / 2 * 3                 # one SSA spike, fan-out 3
    assert rows["q"].neuron_updates == 4 * 2 and rows["out"].neuron_updates == 3 * 2
    assert rows["q"].ann_macs == 16 and rows["enc"].ann_macs == 0
    assert rows["ssa"].ann_macs == (2 * 1 * 4 + 2 * 2 * 4) / 2   # Q.K and A.V over 1, then 2 positions
    assert rows["ssa"].spike_rate == pytest.approx(1 / 16)


def test_prices_are_counts_times_the_models_figures():
    rows = count(_graph(), _values(), timesteps=2)
    for model in ENERGY_MODELS.values():
        summary = total(rows, model)
        synaptic = 4 + 3 * 8 + 4 + 1.5
        updates = 4 * 2 * 4 + 4 * 2 + 3 * 2
        macs = 3 * 16 + 12 + 12
        assert summary.snn_pj == pytest.approx(synaptic * model.synaptic_op_pj + updates * model.neuron_update_pj)
        assert summary.ann_pj == pytest.approx(macs * model.ann_mac_pj)
        assert summary.reduction == pytest.approx(1 - summary.snn_pj / summary.ann_pj)
        assert model.source


@pytest.fixture(scope="module")
def tiny_net(tiny_graph, tmp_path_factory):
    from nxcompile.compiler.export import export_net
    from nxcompile.compiler.quantize import quantize
    from nxcompile.compiler.targets import TARGETS
    from nxcompile.models.zoo import load_model

    path = tmp_path_factory.mktemp("energy") / "tiny.net"
    export_net(quantize(tiny_graph, TARGETS["loihi2-sim"]), path, None, load_model("gpt2-tiny").tokenizer)
    return path


def test_energy_command_prints_every_model_and_writes_the_plots(tiny_net, tmp_path, capsys):
    from nxcompile.cli import main

    assert main(["energy", str(tiny_net), "--tokens", "32", "--plot-dir", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    for needle in ("h0.attn.ssa", "SSA vs ANN attention", "every on-chip layer", "Horowitz", "Davies"):
        assert needle in out
    for name in ("energy_per_layer.png", "spike_rate_per_layer.png", "ann_vs_snn.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("source, message", [("missing.net", "missing.net"), ("gpt2-huge", "unknown model")])
def test_energy_of_a_bad_source_is_one_line(source, message, capsys):
    from nxcompile.cli import main

    assert main(["energy", source]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
