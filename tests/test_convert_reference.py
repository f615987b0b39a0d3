"""Converter and reference simulator against ground truth: the ANN's own feed-forward
blocks, an independent loop implementation of SSA and of the IF neuron, every zoo shape."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from nxcompile.compiler.convert import GELU_HINGES, ConversionOptions, convert, gelu_hinges
from nxcompile.compiler.graph import SSA, NeuronModel, load_graph, save_graph
from nxcompile.errors import UsageError
from nxcompile.models.zoo import ZOO
from nxcompile.sim import reference


def small_gpt2(seed: int = 0, **overrides) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    fields = dict(vocab_size=200, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                  bos_token_id=0, eos_token_id=0)
    fields.update(overrides)
    return GPT2LMHeadModel(GPT2Config(**fields)).eval()


def token_batch(batch: int, length: int, vocab: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def converted():
    model = small_gpt2()
    graph = convert(model, ConversionOptions(), token_batch(4, 48, 200))
    return model, graph


@pytest.fixture(scope="module")
def tiny_converted():
    """The shipped, trained gpt2-tiny: real pre-activation ranges, unlike a random model."""
    from nxcompile.models.corpus import load_corpus
    from nxcompile.models.zoo import load_model
    from nxcompile.models.perplexity import windows

    loaded = load_model("gpt2-tiny")
    corpus = load_corpus()
    context = loaded.config.n_positions
    calibration = windows(torch.tensor(loaded.tokenizer(corpus.train[:60_000])["input_ids"]), context)[:4]
    held_out = torch.tensor(loaded.tokenizer(corpus.held_out[:20_000])["input_ids"])[None, :64]
    return loaded.model, convert(loaded.model, ConversionOptions(), calibration), held_out


def ffn_relative_error(model, graph, ids, timesteps) -> float:
    """SNN feed-forward readout of block 0 against the ANN's MLP on the same input."""
    run = reference.run(graph, ids, timesteps, keep_values=True)
    with torch.no_grad():
        ann = model.transformer.h[0].mlp(run.values["h0.ln_2"])
    snn = run.values["h0.mlp.c_proj"]
    return float((snn - ann).norm() / ann.norm())


def test_ffn_error_shrinks_as_timesteps_grow_and_matches_the_ann(tiny_converted):
    model, graph, ids = tiny_converted
    steps = [1, 2, 4, 8, 16, 32, 64, 128]
    errors = [ffn_relative_error(model, graph, ids, t) for t in steps]
    for shorter, longer in zip(errors, errors[1:]):
        assert longer <= shorter * 1.05, errors
    assert errors[-1] < 0.05 * errors[0], errors
    assert errors[-1] < 0.06, errors
    limit = ffn_relative_error(model, graph, ids, None)
    assert abs(errors[-1] - limit) < 0.01, (errors[-1], limit)


def test_graded_spikes_reach_the_rate_limit_in_one_step(tiny_converted):
    """8-bit payloads quantise to threshold/255 in a single step: at T = 1 the
    graded FFN is already at its rate limit and beats binary spikes at T = 32."""
    from nxcompile.models.corpus import load_corpus
    from nxcompile.models.perplexity import windows
    from nxcompile.models.zoo import shipped_tokenizer

    model, binary_graph, ids = tiny_converted
    tokens = torch.tensor(shipped_tokenizer()(load_corpus().train[:60_000])["input_ids"])
    graded = convert(model, ConversionOptions(neuron="graded"), windows(tokens, 128)[:4])
    assert graded.op("h0.mlp.c_fc").neuron.kind == "graded-spike8"
    one_step = ffn_relative_error(model, graded, ids, 1)
    assert abs(one_step - ffn_relative_error(model, graded, ids, None)) < 0.01
    assert one_step < ffn_relative_error(model, binary_graph, ids, 32)


def test_gelu_hinges_fit_the_models_activation():
    from transformers.activations import ACT2FN

    breakpoints, coeffs = gelu_hinges("gelu_new", GELU_HINGES["hinge3"])
    x = torch.linspace(-4, 4, 801)
    approx = sum(a * torch.relu(x - b) for a, b in zip(coeffs, breakpoints))
    assert float((approx - ACT2FN["gelu_new"](x)).abs().max()) < 0.12
    relu_only = torch.relu(x)
    assert float((approx - ACT2FN["gelu_new"](x)).pow(2).mean()) < \
        0.25 * float((relu_only - ACT2FN["gelu_new"](x)).pow(2).mean())


def loop_ssa(q, k, v, n_head, scale, position_norm: bool = False) -> np.ndarray:
    """SSA written as its formula with explicit loops, independent of the executor
    (position_norm: query i's sum divided by its i + 1 keys)."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    b_size, s_len, t_len, d = q.shape
    hd = d // n_head
    out = np.zeros_like(q)
    for b in range(b_size):
        for t in range(t_len):
            for h in range(n_head):
                cols = slice(h * hd, (h + 1) * hd)
                for i in range(s_len):
                    for j in range(i + 1):
                        out[b, i, t, cols] += scale * (q[b, i, t, cols] @ k[b, j, t, cols]) * v[b, j, t, cols] \
                            / (i + 1 if position_norm else 1)
    return out


@pytest.mark.parametrize("position_norm", [False, True])
def test_ssa_matches_the_formula_on_random_spikes(position_norm):
    gen = torch.Generator().manual_seed(3)
    q, k, v = ((torch.rand(2, 6, 3, 8, generator=gen) < 0.4).float() for _ in range(3))
    op = SSA(n_head=2, head_dim=4, scale=0.25, neuron=NeuronModel(torch.tensor([1.0])), position_norm=position_norm)
    np.testing.assert_allclose(reference.ssa_current(op, q, k, v).numpy(),
                               loop_ssa(q, k, v, 2, 0.25, position_norm), rtol=0, atol=1e-5)


def test_position_normalised_ssa_in_fixed_point_is_the_float_one():
    """On chip the division by i + 1 is a threshold of theta (i + 1): the same spikes as dividing the
    current, on integer-valued inputs where both are exact."""
    from nxcompile.sim import fixed_point as fx

    gen = torch.Generator().manual_seed(4)
    q, k, v = ((torch.rand(1, 7, 4, 8, generator=gen) < 0.5).float() for _ in range(3))
    neuron = NeuronModel(torch.tensor([96.0]))
    op = SSA(n_head=2, head_dim=4, scale=64.0, neuron=neuron, position_norm=True)
    floating = reference.fire(neuron, reference.ssa_current(op, q, k, v), 4)
    int_op = fx.SpikingAttention(fx.IntNeuron(np.array([96]), np.array([48]), fx.DECAY_UNITS, False, 1),
                                 n_head=2, head_dim=4, score=fx.rescaling(64, fx.SCORE_LIMIT), kv_capacity=16,
                                 position_norm=True)
    fixed = int_op.execute({p: x.numpy().astype(np.int64) for p, x in zip("qkv", (q, k, v))}, 4)
    np.testing.assert_array_equal(fixed, floating.numpy())
    assert fixed.sum() > 0


@pytest.mark.parametrize("thresholds", ["head", "neuron"])
def test_finer_thresholds_change_no_value_when_nothing_clips(thresholds):
    """Calibrated at the 100th percentile nothing clips, so in the rate limit a layer's value does not
    depend on how many thresholds it has: the spike value each one stands for is folded into the next
    weights (per-head / per-neuron thresholds are shapes, not approximations)."""
    model = small_gpt2()
    ids = token_batch(2, 32, 200)
    per_layer = convert(model, ConversionOptions(calibration_percentile=100.0), ids)
    finer = convert(model, ConversionOptions(calibration_percentile=100.0, thresholds=thresholds), ids)
    assert finer.op("h0.attn.ssa").neuron.threshold.numel() == 64
    if thresholds == "neuron":
        assert finer.op("h0.mlp.c_fc").neuron.threshold.numel() == 3 * 256
    torch.testing.assert_close(reference.run(finer, ids, None).logits, reference.run(per_layer, ids, None).logits,
                               rtol=1e-4, atol=1e-4)


def loop_if(current: np.ndarray, threshold: float, v_init: float, leak: float, signed: bool,
            payload_max: int = 1):
    """The NeuronModel equations, one neuron and one step at a time: emit as many
    whole thresholds as the membrane holds (at most payload_max), keep the rest."""
    spikes = np.zeros_like(current)
    for index in np.ndindex(current.shape[:2] + current.shape[3:]):
        b, s, n = index
        v = v_init * threshold
        for t in range(current.shape[2]):
            v = v * (1 - leak) + current[b, s, t, n]
            spike = 0
            while spike < payload_max and v - spike * threshold >= threshold:
                spike += 1
            while signed and spike > -payload_max and v - spike * threshold <= -threshold:
                spike -= 1
            v -= spike * threshold
            spikes[b, s, t, n] = spike
    return spikes


@pytest.mark.parametrize("signed,leak,payload_max", [(False, 0.0, 1), (True, 0.0, 1), (False, 0.0625, 1),
                                                     (False, 0.0, 7), (True, 0.0, 3)])
def test_neuron_population_matches_a_loop_implementation(signed, leak, payload_max):
    current = torch.randn(2, 3, 12, 5, generator=torch.Generator().manual_seed(4)) * 4
    neuron = NeuronModel(torch.tensor([0.9]), leak=leak, signed=signed, payload_max=payload_max)
    np.testing.assert_array_equal(reference.fire(neuron, current, 12).numpy(),
                                  loop_if(current.numpy(), 0.9, 0.5, leak, signed, payload_max))


def test_rate_limit_is_what_long_spike_trains_converge_to():
    current = torch.rand(1, 2, 1, 50, generator=torch.Generator().manual_seed(5)) * 2 - 0.5
    neuron = NeuronModel(torch.tensor([1.0]))
    spikes = reference.fire(neuron, current.expand(-1, -1, 4096, -1), 4096)
    np.testing.assert_allclose(spikes.mean(dim=2, keepdim=True).numpy(),
                               reference.fire(neuron, current, None).numpy(), atol=1e-3)


@pytest.mark.parametrize("method", ["neurtransformer", "spikedecoder"])
def test_graph_round_trips_through_disk(method, tmp_path):
    extra = {"embedding": "binary"} if method == "spikedecoder" else {}
    graph = convert(small_gpt2(), ConversionOptions(method=method, **extra), token_batch(2, 24, 200))
    path = tmp_path / "graph.safetensors"
    save_graph(graph, path)
    loaded = load_graph(path)
    assert loaded.meta == graph.meta
    assert sorted(loaded.graph.edges(data=True)) == sorted(graph.graph.edges(data=True))
    for name in graph.order():
        a, b = graph.op(name), loaded.op(name)
        assert type(a) is type(b)
        for field, value in vars(a).items():
            other = getattr(b, field)
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, other), (name, field)
            elif isinstance(value, NeuronModel):
                for neuron_field, neuron_value in vars(value).items():
                    assert torch.equal(torch.as_tensor(neuron_value),
                                       torch.as_tensor(getattr(other, neuron_field))), (name, neuron_field)
            else:
                assert value == other, (name, field)
    ids = token_batch(1, 20, 200)
    assert torch.equal(reference.run(graph, ids, 4).logits, reference.run(loaded, ids, 4).logits)


def test_a_foreign_file_is_not_read_as_a_graph(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(UsageError, match="not a spiking graph"):
        load_graph(path)


def test_spiking_run_is_causal(converted):
    _, graph = converted
    ids = token_batch(1, 24, 200)
    changed = ids.clone()
    changed[0, 15:] = (changed[0, 15:] + 1) % 200
    a, b = reference.run(graph, ids, 4).logits, reference.run(graph, changed, 4).logits
    assert torch.equal(a[:, :15], b[:, :15]) and not torch.equal(a[:, 15:], b[:, 15:])


def test_host_nodes_follow_the_options():
    graph = convert(small_gpt2(), ConversionOptions(host=("embed", "norm", "final_norm", "lm_head")),
                    token_batch(1, 8, 200))
    host = {n for n in graph.order() if graph.graph.nodes[n]["host"]}
    assert host == {"embed", "ln_f", "lm_head", "h0.ln_1", "h0.ln_2", "h1.ln_1", "h1.ln_2"}
    on_chip_norm = convert(small_gpt2(), ConversionOptions(host=("embed", "lm_head")), token_batch(1, 8, 200))
    assert not on_chip_norm.graph.nodes["ln_f"]["host"]


@pytest.mark.parametrize("bad", [dict(timesteps=0), dict(neuron="hh"), dict(method="x"),
                                 dict(host=("ssa",)), dict(gelu="cubic"), dict(embedding="onehot"),
                                 dict(norm="batch"), dict(residual="dense")])
def test_bad_options_are_usage_errors(bad):
    with pytest.raises(UsageError):
        ConversionOptions(**bad)


@pytest.mark.parametrize("method, ignored", [("neurtransformer", dict(norm="static")),
                                             ("neurtransformer", dict(embedding="binary")),
                                             ("graded", dict(neuron="lif")), ("graded", dict(ssa_norm="sum"))])
def test_an_option_the_method_does_not_read_is_refused_not_ignored(method, ignored):
    from nxcompile.compiler.convert import METHODS

    flag = "--" + next(iter(ignored)).replace("_", "-")
    with pytest.raises(UsageError, match=f"{flag}: not an option of the {method} method"):
        ConversionOptions(method=method, timesteps=METHODS[method].fixed_timesteps or 8, **ignored)


def expected_shapes(config) -> dict[str, int]:
    d = config.n_embd
    return {"h0.attn.q": d, "h0.attn.ssa": d, "h0.mlp.c_fc": 3 * 4 * d, "h0.mlp.c_proj": d,
            "lm_head": config.vocab_size}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["neurtransformer", "spikedecoder"])
def test_full_depth_random_gpt2_small_converts_through_the_zoo(method):
    from nxcompile.models.zoo import load_model

    loaded = load_model("random:gpt2-small")
    ids = token_batch(1, 8, loaded.config.vocab_size)
    graph = convert(loaded.model, ConversionOptions(method=method), ids, loaded.name)
    assert len(graph.meta["block_outputs"]) == 12 and graph.meta["model"] == "random:gpt2-small"
    assert reference.run(graph, ids, 2).logits.shape == (1, 8, 50257)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ZOO if n != "gpt2-tiny"])
def test_converter_handles_every_zoo_width(name):
    """Every zoo size at its exact widths (d, heads, vocabulary, context); depth cut to
    2 blocks here to keep the suite fast, since blocks repeat the same shapes."""
    config = ZOO[name].config()
    config.n_layer = 2
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    graph = convert(model, ConversionOptions(), token_batch(1, 8, config.vocab_size))
    for node, features in expected_shapes(config).items():
        assert graph.op(node).out_features == features, node
    assert graph.op("h1.attn.ssa").n_head == config.n_head
    assert reference.run(graph, token_batch(1, 8, config.vocab_size), 2).logits.shape == \
        (1, 8, config.vocab_size)


def on_chip_message_kinds(graph) -> set[str]:
    """Kinds of the messages that leave a node that is not on the host."""
    return {data["kind"] for source, _, data in graph.graph.edges(data=True)
            if not graph.graph.nodes[source]["host"]}


def test_spikedecoder_with_static_norm_is_fully_spiking():
    graph = convert(small_gpt2(), ConversionOptions(method="spikedecoder", norm="static"),
                    token_batch(2, 24, 200))
    assert on_chip_message_kinds(graph) <= {"binary", "ternary"}
    assert all(graph.op(n).neuron is not None for n in graph.order() if n.endswith(".add"))
    neurtransformer = convert(small_gpt2(), ConversionOptions(), token_batch(2, 24, 200))
    assert "graded" in on_chip_message_kinds(neurtransformer)


def test_binary_embedding_spikes_decode_to_the_embedding():
    model = small_gpt2()
    ids = token_batch(2, 24, 200)
    graph = convert(model, ConversionOptions(method="spikedecoder", embedding="binary"), ids)
    run = reference.run(graph, ids, 256, keep_values=True)
    spikes = run.values["embed.encode"]
    assert set(spikes.unique().tolist()) <= {0.0, 1.0}
    decoded = reference.decode_output(graph.op("embed.encode"), spikes)
    embedding = run.values["embed"]
    assert float((decoded - embedding).abs().mean()) < 0.05 * float(embedding.abs().mean())


def test_spikedecoder_with_graded_residual_is_neurtransformer():
    """The graded-residual variant differs from neurtransformer in name only."""
    model, ids = small_gpt2(), token_batch(2, 24, 200)
    a = convert(model, ConversionOptions(method="spikedecoder", residual="graded"), ids)
    b = convert(model, ConversionOptions(), ids)
    assert torch.equal(reference.run(a, ids, 4).logits, reference.run(b, ids, 4).logits)


@pytest.mark.parametrize("embedding,norm", [("rate", "layernorm"), ("binary", "static"),
                                            ("graded", "none")])
def test_spikedecoder_spiking_residual_approaches_its_rate_limit(embedding, norm):
    model, ids = small_gpt2(), token_batch(2, 24, 200)
    graph = convert(model, ConversionOptions(method="spikedecoder", embedding=embedding, norm=norm), ids)
    limit = reference.run(graph, ids, None).logits

    def distance(steps: int) -> float:
        return float((reference.run(graph, ids, steps).logits - limit).norm() / limit.norm())

    assert distance(256) < 0.5 * distance(4)


def test_spike_encoding_does_not_change_the_rate_limit():
    """Binary and graded spikes are two codes for one network: in the rate limit
    every node decodes to the same values (SSA included, whose scale absorbs the
    payload range)."""
    model, ids = small_gpt2(), token_batch(2, 24, 200)
    binary = convert(model, ConversionOptions(), ids)
    graded = convert(model, ConversionOptions(neuron="graded"), ids)
    a, b = reference.run(binary, ids, None, keep_values=True), reference.run(graded, ids, None, keep_values=True)
    for name in binary.order():
        first = reference.decode_output(binary.op(name), a.values[name])
        second = reference.decode_output(graded.op(name), b.values[name])
        torch.testing.assert_close(second, first, rtol=1e-4, atol=1e-4, msg=name)
