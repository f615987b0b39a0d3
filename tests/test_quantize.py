"""Quantiser: every on-chip number on the target's grid, idempotent, close to the float graph."""
from __future__ import annotations

import math

import networkx as nx
import pytest
import torch

from nxcompile.compiler.graph import Dense, NeuronModel, SpikingGraph
from nxcompile.compiler.quantize import layer_format, quantisation_error, quantize
from nxcompile.compiler.targets import TARGETS
from nxcompile.sim.reference import fire, run

LOIHI2 = TARGETS["loihi2"]


@pytest.fixture(scope="module")
def quantised(tiny_graph):
    return quantize(tiny_graph, LOIHI2)


def test_every_on_chip_number_is_on_the_targets_grid(quantised):
    layers = quantised.quantization.layers
    assert len(layers) > 20
    for name, fmt in layers.items():
        op = quantised.op(name)
        neuron = getattr(op, "neuron", None)
        if neuron is None:                       # a graded readout: the grid in float units
            continue
        theta = neuron.threshold
        assert torch.equal(theta, theta.round()) and theta.min() >= 1
        assert theta.max() < 2 ** (LOIHI2.threshold_bits + 6)
        assert neuron.leak * 2 ** LOIHI2.decay_bits == round(neuron.leak * 2 ** LOIHI2.decay_bits)
        for weight in [getattr(op, f) for f in ("weight", "scale_a", "scale_b", "gain") if hasattr(op, f)]:
            mantissa = weight / 2 ** fmt.weight_exp
            assert torch.equal(mantissa, mantissa.round()), name
            assert mantissa.abs().max() <= 127, name
        bias_mantissa = op.bias / 2 ** fmt.bias_exp if hasattr(op, "bias") else torch.zeros(1)
        assert torch.equal(bias_mantissa, bias_mantissa.round()) and bias_mantissa.abs().max() <= 4095, name


def test_quantising_twice_changes_nothing(quantised):
    again = quantize(quantised, LOIHI2)
    for name in quantised.quantization.layers:
        a, b = quantised.op(name), again.op(name)
        for field in ("weight", "bias", "scale_a", "scale_b", "gain"):
            if hasattr(a, field):
                assert torch.equal(getattr(a, field), getattr(b, field)), (name, field)
        if getattr(a, "neuron", None) is not None:
            assert torch.equal(a.neuron.threshold, b.neuron.threshold)
            assert torch.equal(a.neuron.spike_value, b.neuron.spike_value)


def quantised_alone(op):
    """`op` quantised for Loihi 2 as the only node of a graph."""
    graph = SpikingGraph(nx.DiGraph(), {})
    graph.add("d", op)
    return quantize(graph, LOIHI2).op("d")


def test_weights_already_on_the_grid_give_identical_spikes():
    """Scaling a population's weights, bias and threshold together changes no spike
    (checked here with the executor, independently of the quantiser)."""
    torch.manual_seed(0)
    unit = 2.0 ** 9
    weight = torch.randint(-127, 128, (24, 40)).float() * 64 / unit   # exactly representable
    bias = torch.randint(-500, 500, (24,)).float() / unit
    op = Dense(weight, bias, NeuronModel(threshold=torch.full((24,), 3000.0 / unit)))
    q = quantised_alone(op)
    assert torch.equal(q.weight / 2.0 ** layer_format([weight], op.neuron.threshold, bias, LOIHI2).unit_log2,
                       weight)
    spikes_in = (torch.rand(2, 5, 8, 40) < 0.3).float()
    float_spikes = fire(op.neuron, spikes_in @ weight.T + bias, 8)
    fixed_spikes = fire(q.neuron, spikes_in @ q.weight.T + q.bias, 8)
    assert torch.equal(float_spikes, fixed_spikes)


def test_quantised_model_stays_close_to_the_float_one(tiny_graph, quantised):
    from nxcompile.models.corpus import evaluation_text
    from nxcompile.models.zoo import shipped_tokenizer
    ids = torch.tensor(shipped_tokenizer()(evaluation_text(None)[:2000])["input_ids"][:64])[None]
    rows = quantisation_error(tiny_graph, quantised, ids, 8)
    first = rows[0]
    assert first.output_cosine > 0.99 and first.mantissa_bits_used == 8
    assert all(row.weight_error < 0.05 for row in rows)
    assert all(math.isnan(r.spikes_equal) for r in rows if "c_proj" in r.name)
    logits = [run(graph, ids, 8).logits.flatten() for graph in (tiny_graph, quantised)]
    cosine = float(torch.nn.functional.cosine_similarity(*logits, dim=0))
    assert cosine > 0.95
    assert rows[-1].name == "lm_head (logits)" and rows[-1].output_cosine == pytest.approx(cosine, abs=1e-5)


def test_quantised_graph_round_trips_through_disk(tmp_path, quantised):
    from nxcompile.compiler.graph import load_graph, save_graph

    save_graph(quantised, tmp_path / "q.safetensors")
    loaded = load_graph(tmp_path / "q.safetensors")
    assert loaded.quantization == quantised.quantization
    name = next(iter(quantised.quantization.layers))
    assert torch.equal(loaded.op(name).neuron.spike_value, quantised.op(name).neuron.spike_value)


def test_graded_qkv_ssa_thresholds_fit_their_bits_by_a_smaller_scale():
    """8-bit graded Q, K, V count up to 255**3 per coincidence: the quantiser shrinks the SSA's unit (its
    scale a power of two below 2**6, a rounding shift on chip) instead of clamping thresholds."""
    from nxcompile.compiler.convert import ConversionOptions, convert
    from tests.test_convert_reference import small_gpt2, token_batch

    graph = quantize(convert(small_gpt2(), ConversionOptions(qkv_neuron="graded"), token_batch(2, 32, 200)), LOIHI2)
    ssa = graph.op("h0.attn.ssa")
    assert ssa.scale < 2 ** 6 and math.log2(ssa.scale) == round(math.log2(ssa.scale))
    assert float(ssa.neuron.threshold.max()) < 2 ** (LOIHI2.threshold_bits + 6) - 1     # not clamped


def test_a_bias_too_large_for_its_bits_costs_weight_bits_not_the_bias():
    """A population reading 8-bit graded spikes has weights ~255x smaller than its bias (a GELU hinge's
    breakpoint): at full weight mantissas the bias would need more than 13 + 7 bits and be clipped.
    The quantised bias must stay the float bias (to its grid step), and the spikes follow."""
    torch.manual_seed(1)
    weight = torch.randn(16, 32) * 1e-3
    bias = torch.full((16,), 2.75)
    op = Dense(weight, bias, NeuronModel(threshold=torch.full((16,), 0.01), payload_max=255))
    q = quantised_alone(op)
    unit = 2.0 ** layer_format([weight], op.neuron.threshold, bias, LOIHI2).unit_log2
    assert torch.allclose(q.bias / unit, bias, rtol=1e-3)
    payloads = torch.randint(0, 256, (2, 5, 8, 32)).float()
    float_rate = fire(op.neuron, payloads @ weight.T + bias, 8).mean()
    fixed_rate = fire(q.neuron, payloads @ q.weight.T + q.bias, 8).mean()
    assert fixed_rate == pytest.approx(float(float_rate), rel=0.02)
