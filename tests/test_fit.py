"""Per-layer weight widths: through the quantiser, the `.net` file, the core model and Lava; and
`nxcompile fit`, whose choice always validates, and whose impossible budgets are one line."""
from __future__ import annotations

import pytest
import torch

from nxcompile.compiler.convert import ConversionOptions, resolve_graph
from nxcompile.compiler.graph import GradedPrecision
from nxcompile.compiler.quantize import quantize
from nxcompile.compiler.targets import TARGETS
from nxcompile.models.zoo import load_model
from tests.test_cli import assert_one_line_error, cli

NARROW = (("h0.attn.q", 3), ("h1.mlp.c_fc", 2), ("h3.mlp.c_proj", 5))


@pytest.fixture(scope="module")
def tiny():
    return load_model("gpt2-tiny")


@pytest.fixture(scope="module")
def graded(tiny):
    return resolve_graph(tiny, ConversionOptions(method="graded", timesteps=1), 128, shipped=False)


@pytest.fixture(scope="module")
def narrowed(graded):
    return quantize(graded, TARGETS["loihi2-sim"], GradedPrecision(layer_weight_bits=NARROW))


def test_a_layers_width_bounds_its_mantissas_and_travels_through_the_net_file(narrowed, tiny, tmp_path):
    from nxcompile.compiler.export import export_net, load_net
    from nxcompile.compiler.layers import network_from_graph
    from nxcompile.compiler.partition import place

    for name, bits in NARROW:
        weight, fmt = narrowed.op(name).weight, narrowed.quantization.layers[name]
        mantissas = weight * 2.0 ** -fmt.weight_exp                    # weight = m * 2**weight_exp
        assert torch.equal(mantissas, mantissas.round()) and mantissas.abs().max() <= 2 ** (bits - 1) - 1
    wide = narrowed.quantization.layers["h2.attn.q"]
    assert (narrowed.op("h2.attn.q").weight * 2.0 ** -wide.weight_exp).abs().max() > 2 ** 4   # others keep 8 bits
    path = tmp_path / "narrow.net"
    export_net(narrowed, path, place(network_from_graph(narrowed), TARGETS["loihi2-sim"]), tiny.tokenizer)
    loaded, _ = load_net(path)
    assert loaded.quantization.precision == narrowed.quantization.precision
    assert dict(loaded.quantization.precision.layer_weight_bits) == dict(NARROW)
    layers = {layer.name: layer for layer in network_from_graph(loaded).layers}
    for name, bits in NARROW:             # the core model prices each synapse at its layer's bits
        assert layers[name].params["weight_bits"] <= bits


def test_narrower_layers_take_fewer_synapse_words(graded, narrowed):
    from nxcompile.compiler.layers import network_from_graph
    from nxcompile.compiler.partition import place

    target = TARGETS["loihi2-sim"]
    wide = place(network_from_graph(quantize(graded, target)), target, "tight")
    narrow = place(network_from_graph(narrowed), target, "tight")
    assert narrow.cores_used <= wide.cores_used
    everywhere = quantize(graded, target, GradedPrecision(weight_bits=2))
    assert place(network_from_graph(everywhere), target, "tight").cores_used < wide.cores_used


@pytest.mark.slow
def test_lava_runs_narrowed_layers_bit_exact(tiny, narrowed):
    from tests.test_graded import PROMPT
    from tests.test_lava_backend import _assert_twins

    _assert_twins(narrowed, tiny.tokenizer(PROMPT)["input_ids"][:8], 1, generated=2)


def test_fit_chooses_the_first_frontier_point_under_the_budget_and_writes_a_valid_net(tmp_path, capsys):
    from nxcompile.compiler.export import load_net
    from nxcompile.compiler.layers import network_from_graph
    from nxcompile.compiler.targets import get_target
    from nxcompile.compiler.validate import validate

    out = tmp_path / "fit.net"
    code, printed, err = cli(capsys, "fit", "gpt2-tiny", "--cores", "22", "--packing", "tight",
                             "--calibration-tokens", "128", "--eval-tokens", "256", "-o", str(out),
                             "--plot", str(tmp_path / "fit.png"))
    assert code == 0, err
    rows = [line for line in printed.splitlines() if line.startswith("| ") and "at " in line]
    cores = [int(row.split("|")[3].replace(",", "")) for row in rows]
    kls = [float(row.split("|")[2]) for row in rows]
    assert kls == sorted(kls) and cores[0] > 22 and cores[-1] <= cores[0]       # the path narrows as it goes
    chosen = next(c for c in cores if c <= 22)
    assert f"{chosen} cores on 1 chip(s)" in printed.splitlines()[-2]
    graph, placement = load_net(out)
    assert placement.cores_used <= 22 and graph.quantization.precision.layer_weight_bits
    assert validate(network_from_graph(graph), placement, get_target("loihi2")) == []   # checked independently
    assert (tmp_path / "fit.png").read_bytes()[:4] == b"\x89PNG"


def test_a_budget_nothing_reaches_is_one_line_with_the_best_reached(capsys):
    code, _, err = cli(capsys, "fit", "gpt2-tiny", "--cores", "3", "--packing", "tight",
                       "--calibration-tokens", "128", "--eval-tokens", "0")
    assert_one_line_error(code, err, 2, "nothing on the frontier fits 3 cores", "needs", "sparsity")
    code, _, err = cli(capsys, "fit", "gpt2-tiny", "--method", "neurtransformer", "--eval-tokens", "0")
    assert_one_line_error(code, err, 2, "graded method")
    code, _, err = cli(capsys, "fit", "gpt2-tiny", "--calibration-tokens", "1", "--eval-tokens", "0")
    assert_one_line_error(code, err, 2, "at least 2", "--calibration-tokens")
    with pytest.raises(SystemExit) as exit_:
        cli(capsys, "fit", "gpt2-tiny", "--cores", "0")
    assert exit_.value.code == 2 and "must be >= 1" in capsys.readouterr().err
