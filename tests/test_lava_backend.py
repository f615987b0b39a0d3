"""The Lava backend: fixed-point kernels against hand-computed values, the schedule's invariants
recomputed here, the Lava run as the bit-exact twin of the reference's fixed-point mode, Intel's
networks through `nxcompile run`, and the CLI's clear lines on bad input."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import nxcompile  # noqa: F401  (Lava's Python 3.11 fixes)
from nxcompile.backends.lava_sim import LavaModel, process_groups, process_total
from nxcompile.cli import main
from nxcompile.compiler.convert import ConversionOptions, convert
from nxcompile.compiler.export import export_net, load_net, load_tokenizer
from nxcompile.compiler.graph import out_kind
from nxcompile.compiler.quantize import quantize
from nxcompile.compiler.targets import TARGETS
from nxcompile.errors import UsageError
from nxcompile.models.corpus import load_corpus
from nxcompile.models.zoo import load_model
from nxcompile.sim import energy
from nxcompile.sim import fixed_point as fx
from nxcompile.sim import reference
from nxcompile.sim.schedule import TokenClock, schedule

PROMPT = "HAMLET. To be, or not to be, that is the question: whether 'tis nobler"


@pytest.fixture(scope="module")
def tiny():
    return load_model("gpt2-tiny")


@pytest.fixture(scope="module")
def quantised(tiny_graph):
    return quantize(tiny_graph, TARGETS["loihi2-sim"])


@pytest.fixture(scope="module")
def net_file(quantised, tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("net") / "gpt2-tiny.net"
    export_net(quantised, path, None, tiny.tokenizer)
    return path


# ---- kernels, against values computed by hand ---------------------------------------------------

def test_integrate_and_fire_steps_by_hand():
    neuron = fx.IntNeuron(threshold=np.array([10]), v_init=np.array([5]), keep=fx.DECAY_UNITS, signed=False,
                          payload_max=1)
    v = neuron.reset((1,))
    sent = []
    for current in (3, 3, 30, -50, 4):        # v: 8, 11->1, 31->21 (one spike a step), -29, -25
        s, v = neuron.step(v, np.array([current]))
        sent.append((int(s[0]), int(v[0])))
    assert sent == [(0, 8), (1, 1), (1, 21), (0, -29), (0, -25)]


def test_signed_graded_neuron_and_leak_by_hand():
    neuron = fx.IntNeuron(threshold=np.array([4]), v_init=np.array([0]), keep=fx.DECAY_UNITS - 1024, signed=True,
                          payload_max=3)
    s, v = neuron.step(np.array([-8, 100, 6]), np.array([-9, 0, 1]))
    # leak keeps 3/4, truncated toward zero: -6, 75, 4; plus current: -15, 75, 5
    assert s.tolist() == [-3, 3, 1] and v.tolist() == [-3, 63, 1]


def test_isqrt_is_exact_on_large_integers():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.integers(0, 2**58, 2000), np.array([0, 1, 2**52 - 1, 2**52, (2**29 - 1) ** 2])])
    assert fx.isqrt(x).tolist() == [math.isqrt(int(v)) for v in x]


def test_integer_layer_norm_is_float_layer_norm_to_the_payload_resolution():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 3, (5, 64))
    weight, bias = rng.normal(1, 0.2, 64), rng.normal(0, 0.1, 64)
    op = fx.Norm(fx.to_payload(weight), fx.to_payload(bias), round(1e-5 * 2 ** (2 * fx.GRADED_FRACTION_BITS)),
                 None, None, fx.PAYLOAD_LIMIT)
    got = fx.from_payload(op.normalise(fx.to_payload(x)))
    expected = F.layer_norm(torch.tensor(x), (64,), torch.tensor(weight), torch.tensor(bias)).numpy()
    assert np.abs(got - expected).max() < 8 / 2 ** fx.GRADED_FRACTION_BITS


def test_readout_rounds_the_window_mean_half_up():
    op = fx.Readout(fx.Synapses(np.zeros((3, 1), dtype=np.int64)), np.zeros(3, dtype=np.int64), 2, frozenset("x"))
    # window sums 6, 5 and -5 over T = 4 at 4 state units per float unit: means 0.375, 0.3125, -0.3125
    got = op.payload(np.array([6, 5, -5]), 4)
    scale = 2 ** fx.GRADED_FRACTION_BITS
    assert got.tolist() == [math.floor(0.375 * scale + 0.5), math.floor(0.3125 * scale + 0.5),
                            math.floor(-0.3125 * scale + 0.5)]


def test_fixed_point_mode_refuses_a_float_graph(tiny_graph):
    with pytest.raises(UsageError, match="fixed-point grid"):
        fx.integer_program(tiny_graph)


def test_fixed_point_mode_stays_close_to_the_float_run_of_the_same_graph(quantised, tiny):
    ids = torch.tensor([tiny.tokenizer(load_corpus().held_out[:3000])["input_ids"][:64]])
    fixed = fx.run(quantised, ids, 8)
    floating = reference.run(quantised, ids, 8)
    assert F.cosine_similarity(fixed.logits.flatten(), floating.logits.flatten(), dim=0) > 0.97
    assert (fixed.logits.argmax(-1) == floating.logits.argmax(-1)).float().mean() > 0.6


# ---- the schedule, its invariants recomputed here ------------------------------------------------

def _check_schedule(spiking, timesteps, hop):
    """Every input of every node arrives before the node uses it, recomputed from the ops alone:
    a spike window's first spike one hop after its sender's window starts, a graded value one hop
    after its sender computed it (one more step through Lava's Dense into a GradedDense's neurons)."""
    program = fx.integer_program(spiking)
    plan = schedule(spiking, program, timesteps, hop)
    ready = {}
    for name in spiking.order():
        if name not in program:
            continue
        timing, op = plan.timings[name], program[name]
        for port, source in spiking.inputs(name).items():
            spikes = source in program and out_kind(spiking.op(source)) != "graded"
            arrive = (plan.timings[source].start if spikes else ready.get(source, 0)) + hop
            arrive += 1 if isinstance(op, fx.GradedLinear) else 0
            port_timing = timing.ports[port]
            assert port_timing.first == arrive and port_timing.spikes == spikes, name
            if spikes and not op.windowed:      # a graded node computes after the whole window arrived
                assert port_timing.delay == 0 and timing.start >= arrive + timesteps - 1, name
            else:                                # the window (or the computation) uses what arrived `delay` ago
                assert arrive + port_timing.delay == timing.start, name
        ready[name] = timing.start + (timesteps - 1 if op.windowed and not op.sends_spikes else 0)
    assert plan.period > max(ready.values())
    spiking_nodes = any(getattr(spiking.op(n), "neuron", None) is not None for n in program)
    assert plan.interval == (timesteps if spiking_nodes else 1)
    clock = TokenClock(16, plan.interval, plan.period)     # steps until token 16 (the first generated) enters
    assert clock.entry(16) == 15 * plan.interval + plan.period and clock.entry(20) == clock.entry(16) + 4 * plan.period
    return plan


@pytest.mark.parametrize("hop", [0, 1])
def test_schedule_of_every_method_respects_every_arrival(tiny_graph, tiny, hop):
    _check_schedule(quantize(tiny_graph, TARGETS["loihi2-sim"]), 8, hop)
    ids = torch.tensor(tiny.tokenizer(load_corpus().train[:4000])["input_ids"][:256]).reshape(2, 128)
    spikedecoder = convert(tiny.model, ConversionOptions(method="spikedecoder", timesteps=4), ids,
                           model_name="gpt2-tiny")
    plan = _check_schedule(quantize(spikedecoder, TARGETS["loihi2-sim"]), 4, hop)
    assert any(p.delay > 0 and p.spikes for t in plan.timings.values() for p in t.ports.values())   # delay lines
    graded = convert(tiny.model, ConversionOptions(method="graded", timesteps=1), ids, model_name="gpt2-tiny")
    assert _check_schedule(quantize(graded, TARGETS["loihi2-sim"]), 1, hop).interval == 1


def test_the_token_clock_places_prompt_tokens_every_interval_and_generated_ones_a_period_apart():
    clock = TokenClock(prompt=3, interval=2, period=5)
    assert [clock.entry(i) for i in range(5)] == [0, 2, 4, 9, 14]
    slots = [clock.slot(step) for step in range(-1, 16)]
    assert slots[:7] == [(-1, -1), (0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert slots[7:10] == [(-1, -1)] * 3                  # the last prompt token drains: nothing enters
    assert slots[10:] == [(3, 0), (3, 1), (3, 2), (3, 3), (3, 4), (4, 0), (4, 1)]


# ---- Lava itself ----------------------------------------------------------------------------------

def _comparable(rows) -> list[tuple]:
    """Counts as tuples, a graded output's nan spike rate as None (nan never equals itself)."""
    return [tuple(None if isinstance(v, float) and math.isnan(v) else v for v in dataclasses.astuple(r))
            for r in rows]


def _assert_twins(spiking, ids, timesteps, generated: int = 0, pipeline: bool = True, grouping: str = "block"):
    """Lava runs `ids` as a prompt (pipelined unless told not to) and then `generated` greedy tokens;
    every layer's messages and the logits equal the reference's fixed-point run of all of them."""
    with LavaModel(spiking, record=True, pipeline=pipeline, grouping=grouping) as model:
        new = model.generate_from(model.prefill(ids, generated, progress=False)[-1], generated + 1, progress=False)
        twin = fx.run(spiking, torch.tensor([model.token_ids]), timesteps, keep_values=True)
        assert model.compare(twin) == []
        assert model.token_ids == list(ids) + new[:-1]
        assert model.process_count == process_total(spiking, model.program, grouping)   # what memory is sized by
        interval = model.plan.interval if pipeline else model.plan.period
        assert model.steps_run == (len(ids) - 1) * interval + model.plan.period * (1 + generated)
        counted = energy.count(spiking, model.recorded_values(), timesteps)   # energy from Lava's own spikes
    assert _comparable(counted) == _comparable(energy.count(spiking, twin.values, timesteps))
    assert sum(np.count_nonzero(twin.values[name]) for name in model.program) > 0   # not silent networks
    return twin


@pytest.mark.slow
def test_lava_run_is_the_bit_exact_twin_of_the_fixed_point_reference(quantised, tiny):
    """gpt2-tiny at T = 8, a 16-token prompt pipelined (a token every T steps) and 4 generated, then
    4 + 2 token by token with a Lava process per node: every layer's spikes (and graded payloads)
    for every token, and the logits, equal the whole-sequence reference run."""
    ids = tiny.tokenizer(PROMPT)["input_ids"][:16]
    assert len(ids) == 16
    twin = _assert_twins(quantised, ids, 8, generated=4)
    assert sum(twin.spike_count[n] for n in twin.spike_count if quantised.role(n).part == "op") > 0   # SSA fired
    _assert_twins(quantised, ids[:4], 8, generated=2, pipeline=False, grouping="node")


def test_lava_processes_group_a_blocks_nodes_in_the_graphs_order(quantised):
    """By block: one process per transformer block, its nodes in topological order, every on-chip
    node in exactly one; by node: one each; an unknown grouping is one clear error."""
    program = fx.integer_program(quantised)
    groups = process_groups(quantised, program)
    assert list(groups) == [f"h{i}" for i in range(quantised.meta["n_layer"])]
    assert sorted(n for nodes in groups.values() for n in nodes) == sorted(program)
    order = quantised.order()
    for key, nodes in groups.items():
        assert nodes == [n for n in order if n in nodes]
        assert {quantised.graph.nodes[n]["block"] for n in nodes} == {int(key[1:])}
    assert process_groups(quantised, program, "node") == {n: [n] for n in order if n in program}
    with pytest.raises(UsageError, match="unknown process grouping"):
        process_groups(quantised, program, "chip")


@pytest.mark.slow
def test_spikedecoder_delay_lines_run_bit_exact_in_lava(tiny):
    """SpikeDecoder's spiking residual joins spikes of different depths (delay lines hold every token
    in flight) and norms a spike window: a 16-token prompt pipelined and 4 generated, at T = 2."""
    ids = torch.tensor(tiny.tokenizer(load_corpus().train[:4000])["input_ids"][:256]).reshape(2, 128)
    graph = quantize(convert(tiny.model, ConversionOptions(method="spikedecoder", timesteps=2), ids,
                             model_name="gpt2-tiny"), TARGETS["loihi2-sim"])
    _assert_twins(graph, tiny.tokenizer(PROMPT)["input_ids"][:16], 2, generated=4)


@pytest.mark.slow
def test_a_threshold_per_neuron_runs_bit_exact_in_lava(tiny):
    """`--thresholds neuron`: encoders, MLP hidden and SSA outputs with a threshold each, 4 tokens at T = 2."""
    ids = torch.tensor(tiny.tokenizer(load_corpus().train[:4000])["input_ids"][:256]).reshape(2, 128)
    graph = quantize(convert(tiny.model, ConversionOptions(thresholds="neuron", timesteps=2), ids,
                             model_name="gpt2-tiny"), TARGETS["loihi2-sim"])
    assert graph.op("h0.mlp.c_fc").neuron.threshold.unique().numel() > 1
    _assert_twins(graph, tiny.tokenizer(PROMPT)["input_ids"][:4], 2)


@pytest.mark.slow
def test_the_headline_runs_every_stage_into_lava(tmp_path, capsys):
    """`nxcompile gpt2-tiny --target loihi2-sim` (the shipped graph, here at T = 2): every stage, the Lava
    run checked against its twin, one summary, the .net file written."""
    out = tmp_path / "tiny.net"
    assert main(["gpt2-tiny", "--target", "loihi2-sim", "-T", "2", "--max-tokens", "128", "--prompt", "HAMLET.",
                 "--max-new-tokens", "1", "-o", str(out)]) == 0
    summary = capsys.readouterr().out
    for word in ("gpt2-tiny", "neurtransformer", "shipped fine-tuned graph", "loihi2-sim", "cores on 1 chip",
                 "perplexity", "cosine", "reference twin: identical spikes at every layer and logits", "steps/s",
                 "per token on chip", str(out)):
        assert word in summary
    graph, placement = load_net(out)
    assert graph.quantization.target == "loihi2-sim" and placement.cores_used > 0


@pytest.mark.slow
def test_cli_run_generates_and_checks_its_twin(net_file, capsys):
    assert main(["run", str(net_file), "--prompt", "HAMLET.", "--max-new-tokens", "2", "--check"]) == 0
    out = capsys.readouterr().out
    assert "identical spikes at every layer and identical logits" in out and "steps/s" in out
    assert load_tokenizer(net_file).decode(load_tokenizer(net_file)("HAMLET.")["input_ids"]) == "HAMLET."


@pytest.mark.slow
def test_intels_pilotnet_runs_through_nxcompile_run(shared_netx, tmp_path):
    folder = shared_netx / "pilotnet_sdnn"
    expected = np.load(folder / "output.npy")
    out = tmp_path / "out.npy"
    assert main(["run", str(folder / "network.net"), "--input", str(folder / "input.npy"),
                 "--steps", str(expected.shape[-1]), "-o", str(out)]) == 0
    assert np.abs(expected).sum() > 0
    np.testing.assert_array_equal(np.load(out), expected)


@pytest.mark.slow
def test_intels_tinynet_runs_through_nxcompile_run(shared_netx, tmp_path):
    """As lava-dl's own test: the input layer's recorded spikes (shifted one step) drive the
    network, which resets every 17-step sample; output[..., 2:17] equals output.npy[..., 1:]."""
    folder = shared_netx / "tinynet"
    spikes = np.load(folder / "input.npy")[0].transpose([2, 1, 0, 3])[..., 1:]
    expected = np.load(folder / "output.npy")[0].transpose([2, 1, 0, 3])[..., 1:]
    source = np.zeros(spikes.shape[:-1] + (20,))
    source[..., :spikes.shape[-1]] = spikes
    np.save(tmp_path / "in.npy", source)
    assert main(["run", str(folder / "network.net"), "--input", str(tmp_path / "in.npy"), "--steps", "20",
                 "--skip-layers", "1", "--reset-interval", "17", "--reset-offset", "1",
                 "-o", str(tmp_path / "out.npy")]) == 0
    assert expected.sum() > 0
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy")[..., 2:17], expected)


# ---- bad input: one line, exit 2 -------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--target", "loihi2", "--prompt", "x"], "lava-loihi"),
    ([], "--prompt"),
    (["--prompt", ""], "tokenizes to nothing"),
    (["--prompt", "to be " * 200], "context"),
])
def test_run_refuses_bad_input_in_one_line(net_file, capsys, argv, message):
    assert main(["run", str(net_file), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_run_of_a_foreign_file_needs_its_input(shared_netx, capsys, tmp_path):
    assert main(["run", str(shared_netx / "pilotnet_sdnn" / "network.net")]) == 2
    assert "--input" in capsys.readouterr().err
    np.save(tmp_path / "wrong.npy", np.zeros((3, 9)))
    assert main(["run", str(shared_netx / "pilotnet_sdnn" / "network.net"), "--input", str(tmp_path / "wrong.npy"),
                 "--steps", "9"]) == 2
    assert "expects" in capsys.readouterr().err
