"""Energy counts on hand-built graphs whose spikes and fan-outs are known, priced by hand."""
from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

from nxcompile.compiler.graph import SSA, Attention, Dense, Embed, Encode, GradedDense, NeuronModel, SpikingGraph
from nxcompile.sim.energy import ENERGY_MODELS, NEURON_OPS, count, total


def _graph() -> SpikingGraph:
    """embed (host, 4 values) -> encode (4 ternary) -> q, k, v (Dense 4 -> 4, binary) -> ssa (1 head of 4)
    -> readout (Dense 4 -> 3)."""
    g = SpikingGraph(nx.DiGraph(), {"options": {"method": "neurtransformer", "gelu": "relu"}})
    g.add("embed", Embed(torch.zeros(10, 4), torch.zeros(8, 4)), host=True)
    g.add("enc", Encode(4, NeuronModel(torch.ones(1), signed=True)), {"x": "embed"}, block=0)
    for name in "qkv":
        g.add(name, Dense(torch.ones(4, 4), torch.zeros(4), NeuronModel(torch.ones(1))), {"x": "enc"}, block=0)
    g.add("ssa", SSA(1, 4, 1.0, NeuronModel(torch.ones(1))), {"q": "q", "k": "k", "v": "v"}, block=0)
    g.add("out", Dense(torch.ones(3, 4), torch.zeros(3)), {"x": "ssa"}, block=0)
    return g


def _values() -> dict:
    """2 tokens, T = 2 steps; spikes placed by hand (batch 1)."""
    embed = np.zeros((1, 2, 4))
    embed[0, 0] = [1.0, 0.0, 2.0, 3.0]      # token 0: three nonzero graded values; token 1: four
    embed[0, 1] = [1.0, 1.0, 1.0, 1.0]
    enc = np.zeros((1, 2, 2, 4))
    enc[0, 0, 0, :3] = [1, -1, 1]          # token 0: 3 events at step 0
    enc[0, 1, 1, 0] = 5                    # token 1: one event (a spike, whatever it carries)
    q, k, v = (np.zeros((1, 2, 2, 4)) for _ in range(3))
    q[0, 1, 0, :2] = 1                     # token 1, step 0: q = 1100
    k[0, 0, 0, :] = [1, 1, 0, 0]           # token 0, step 0: k = 1100 -> q1.k0 = 2
    k[0, 1, 0, :] = [0, 1, 0, 0]           # token 1, step 0: k = 0100 -> q1.k1 = 1
    v[0, 0, 0, :] = [1, 0, 1, 0]           # v0 has 2 spikes, v1 has 3
    v[0, 1, 0, :] = [1, 1, 1, 0]
    ssa = np.zeros((1, 2, 2, 4))
    ssa[0, 1, 0, 3] = 1
    return {"embed": embed, "enc": enc, "q": q, "k": k, "v": v, "ssa": ssa, "out": np.zeros((1, 2, 3))}


def test_counts_match_spikes_times_fan_out():
    rows = {r.name: r for r in count(_graph(), _values(), timesteps=2)}
    assert "embed" not in rows                                   # host work is not on chip
    assert rows["enc"].macs == (3 + 4) / 2 and rows["enc"].accumulates == 0   # graded values: MACs, nonzero ones
    assert rows["q"].accumulates == (3 + 1) / 2 * 4 and rows["q"].macs == 0   # ternary events x fan-out 4
    # token 0: q0 = 0 -> nothing; token 1: q1.k0 = 2 and q1.k1 = 1 coincidences, both scores nonzero,
    # so v0's 2 and v1's 3 spikes accumulate: 3 + 5 = 8 ops; mean over 2 tokens
    assert rows["ssa"].accumulates == 8 / 2
    assert rows["out"].accumulates == 1 / 2 * 3                  # one SSA spike, fan-out 3
    assert rows["q"].neuron_updates == 4 * 2 and rows["out"].neuron_updates == 3 * 2
    # a binary IF step: integrate, compare, subtract, plus the bias: 4 adds; ternary 5; a readout adds each
    # step, then rounds its mean (5 adds, 1 division) once per token
    assert (rows["q"].neuron_adds, rows["q"].neuron_mults) == (4 * 2 * 4, 0)
    assert (rows["enc"].neuron_adds, rows["ssa"].neuron_adds) == (4 * 2 * 5, 4 * 2 * 4)
    assert (rows["out"].neuron_adds, rows["out"].neuron_mults) == (3 * (2 + 5), 3)
    assert rows["enc"].messages == (3 + 1) / 2
    assert rows["q"].ann_macs == 16 and rows["enc"].ann_macs == 0
    assert rows["ssa"].ann_macs == (2 * 1 * 4 + 2 * 2 * 4) / 2   # Q.K and A.V over 1, then 2 positions
    assert rows["ssa"].spike_rate == pytest.approx(1 / 16)


def test_prices_are_counts_times_the_models_figures():
    rows = count(_graph(), _values(), timesteps=2)
    for model in ENERGY_MODELS.values():
        summary = total(rows, model)
        accumulates = 3 * 8 + 4 + 1.5                              # q, k, v; SSA; the readout
        macs = 3.5
        adds = 40 + 3 * 32 + 32 + 21
        mults = 3
        messages = 2 + sum(float((np.abs(_values()[n]) > 0).sum()) / 2 for n in ("q", "k", "v", "ssa"))
        macs_ann = 3 * 16 + 12 + 12
        assert summary.snn_pj == pytest.approx(accumulates * model.accumulate_pj + macs * model.mac_pj
                                               + adds * model.add_pj + mults * model.mult_pj
                                               + messages * model.message_pj)
        assert summary.ann_pj == pytest.approx(macs_ann * model.ann_mac_pj)
        assert summary.reduction == pytest.approx(1 - summary.snn_pj / summary.ann_pj)
        assert model.source


def test_graded_events_are_priced_as_multiply_accumulates():
    """The graded method on a hand-built graph: every nonzero payload crossing a synapse is a MAC, the
    softmax attention's Q.K and A.V are 2 (i + 1) d MACs, and its neurons are priced by their operations."""
    g = SpikingGraph(nx.DiGraph(), {"options": {"method": "graded"}})
    g.add("embed", Embed(torch.zeros(10, 4), torch.zeros(8, 4)), host=True)
    g.add("fc", GradedDense(torch.ones(3, 4), torch.zeros(3), "gelu_new"), {"x": "embed"}, block=0)
    for name in "qkv":
        g.add(name, GradedDense(torch.ones(4, 3), torch.zeros(4)), {"x": "fc"}, block=0)
    g.add("att", Attention(2, 2, 0.7), {"q": "q", "k": "k", "v": "v"}, block=0)
    fc = np.array([[[0, 5, 7], [1, 0, 0]]])                      # token 0: 2 nonzero payloads, token 1: 1
    values = {"embed": np.array([[[1.0, 0.0, 0.0, 2.0], [3.0, 1.0, 1.0, 1.0]]]), "fc": fc,
              "q": np.ones((1, 2, 4)), "k": np.ones((1, 2, 4)), "v": np.ones((1, 2, 4)), "att": np.ones((1, 2, 4))}
    rows = {r.name: r for r in count(g, values, timesteps=1)}
    assert rows["fc"].macs == (2 + 4) / 2 * 3 and rows["fc"].accumulates == 0
    assert rows["q"].macs == (2 + 1) / 2 * 4
    assert rows["att"].macs == (2 * 1 * 4 + 2 * 2 * 4) / 2 and rows["att"].ann_macs == rows["att"].macs
    gelu, dense = NEURON_OPS["gelu"], NEURON_OPS["graded-dense"]
    assert (rows["fc"].neuron_adds, rows["fc"].neuron_mults) == (3 * (gelu[0] + dense[0]), 3 * (gelu[1] + dense[1]))
    pair, query, feature = NEURON_OPS["attention-pair"], NEURON_OPS["attention-query"], NEURON_OPS["attention-feature"]
    assert rows["att"].neuron_adds == 2 * (1.5 * pair[0] + query[0]) + 4 * feature[0]   # 1.5 keys per query on average
    for model in ENERGY_MODELS.values():
        assert rows["fc"].snn_pj(model) == pytest.approx(9 * model.mac_pj + 3 * (gelu[0] + dense[0]) * model.add_pj
                                                         + 3 * (gelu[1] + dense[1]) * model.mult_pj
                                                         + 1.5 * model.message_pj)


@pytest.fixture(scope="module")
def tiny_net(tiny_graph, tmp_path_factory):
    from nxcompile.compiler.export import export_net
    from nxcompile.compiler.quantize import quantize
    from nxcompile.compiler.targets import TARGETS
    from nxcompile.models.zoo import load_model

    path = tmp_path_factory.mktemp("energy") / "tiny.net"
    export_net(quantize(tiny_graph, TARGETS["loihi2-sim"]), path, None, load_model("gpt2-tiny").tokenizer)
    return path


def test_token_energy_scopes_attention_by_role_and_the_command_writes_the_plots(tiny_net, tmp_path, capsys):
    from nxcompile.cli import main
    from nxcompile.compiler.export import load_net, load_tokenizer
    from nxcompile.sim.energy import ATTENTION_OP, token_energy

    graph, _ = load_net(tiny_net)
    report = token_energy(graph, load_tokenizer(tiny_net), 16)
    scopes = report.scopes()
    attention_blocks = [s for s in scopes if s.startswith("attention blocks")][0]
    by_name = {r.name: r for r in report.rows}
    expected = sum(by_name[f"h{b}.attn.{part}"].snn_pj(ENERGY_MODELS["45nm"])
                   for b in range(4) for part in ("encode", "q", "k", "v", "ssa", "c_proj", "add"))
    assert scopes[attention_blocks]["45nm"].snn_pj == pytest.approx(expected)
    assert scopes[ATTENTION_OP]["45nm"].snn_pj == pytest.approx(
        sum(by_name[f"h{b}.attn.ssa"].snn_pj(ENERGY_MODELS["45nm"]) for b in range(4)))
    assert report.performance.chips == 1 and len(report.performance.decode_steps) > 8
    assert main(["energy", str(tiny_net), "--tokens", "16", "--plot-dir", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    for needle in ("h0.attn.ssa", "vs ANN attention", "every on-chip layer", "Horowitz", "Davies"):
        assert needle in out
    for name in ("energy_per_layer.png", "spike_rate_per_layer.png", "ann_vs_snn.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("source, message", [("missing.net", "missing.net"), ("gpt2-huge", "unknown model")])
def test_energy_of_a_bad_source_is_one_line(source, message, capsys):
    from nxcompile.cli import main

    assert main(["energy", source]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("size_in, size_out, kernel, stride, padding, dilation",
                         [(24, 22, 3, 1, 0, 1), (7, 4, 3, 2, 1, 1), (200, 99, 3, 2, 0, 1), (9, 5, 3, 2, 2, 2)])
def test_conv_fan_out_counts_the_kernels_covering_each_input(size_in, size_out, kernel, stride, padding, dilation):
    from nxcompile.sim.energy import _taps

    brute = np.zeros(size_in, dtype=int)
    for out in range(size_out):
        for k in range(kernel):
            position = out * stride - padding + k * dilation
            if 0 <= position < size_in:
                brute[position] += 1
    assert _taps(size_in, size_out, kernel, stride, padding, dilation).tolist() == brute.tolist()
