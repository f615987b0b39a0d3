"""Per-layer weight widths and pruning, for the graded method and the rate-coded NeurTransformer:
through the quantiser, the `.net` file, the core model and Lava; and `nxcompile fit`, whose choice
always validates, and whose impossible budgets are one line."""
from __future__ import annotations

import pytest
import torch

from nxcompile.compiler.convert import ConversionOptions, resolve_graph
from nxcompile.compiler.graph import GradedPrecision, load_graph, save_graph
from nxcompile.compiler.quantize import quantize
from nxcompile.compiler.targets import TARGETS
from nxcompile.models.zoo import load_model
from tests.test_cli import assert_one_line_error, cli

NARROW = (("h0.attn.q", 3), ("h1.mlp.c_fc", 2), ("h3.mlp.c_proj", 5))
PRUNED = (("h0.attn.q", 0.75), ("h2.mlp.c_fc", 0.9), ("h3.attn.c_proj", 0.6))
KV_BITS = 5                     # the `pruned` graph's KV cache (8 by default): an odd width


@pytest.fixture(scope="module")
def tiny():
    return load_model("gpt2-tiny")


@pytest.fixture(scope="module")
def graded(tiny):
    return resolve_graph(tiny, ConversionOptions(method="graded", timesteps=1), 128, shipped=False)


@pytest.fixture(scope="module")
def narrowed(graded):
    return quantize(graded, TARGETS["loihi2-sim"], GradedPrecision(layer_weight_bits=NARROW))


@pytest.fixture(scope="module")
def rate_coded(tiny):
    """gpt2-tiny's shipped fine-tuned NeurTransformer graph (T = 8), as the pipeline takes it."""
    return resolve_graph(tiny, ConversionOptions(), 128)


@pytest.fixture(scope="module")
def rate_coded_cut(rate_coded):
    return quantize(rate_coded, TARGETS["loihi2-sim"], GradedPrecision(layer_weight_bits=NARROW, layer_sparsity=PRUNED))


@pytest.fixture(scope="module")
def calibration(tiny):
    from nxcompile.models.corpus import load_corpus, token_windows

    return token_windows(tiny.tokenizer, load_corpus().train, 64, 128)


@pytest.fixture(scope="module")
def pruned(graded, calibration):
    from nxcompile.compiler.fit import input_grams

    precision = GradedPrecision(layer_weight_bits=NARROW, layer_sparsity=PRUNED, pruning="wanda", rounding="gptq",
                                kv_bits=KV_BITS)
    return quantize(graded, TARGETS["loihi2-sim"], precision, input_grams(graded, calibration))


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


def test_pruning_zeroes_each_neurons_least_important_synapses(graded, pruned, calibration):
    from nxcompile.compiler.fit import input_grams
    from nxcompile.compiler.quantize import pruned as prune
    from nxcompile.errors import UsageError

    for name, fraction in PRUNED:
        weight, dense = pruned.op(name).weight, graded.op(name).weight
        kept = weight != 0
        assert (kept.sum(1) <= round((1 - fraction) * weight.shape[1])).all()       # per neuron, the same fan-in
        assert not (kept & (dense == 0)).any()
    # Wanda's choice is the least |w| * ||x||: a synapse kept outranks, per neuron, every one dropped
    name, fraction = PRUNED[1]
    norm = input_grams(graded, calibration)[name].diagonal().sqrt().float()
    w = graded.op(name).weight
    score, kept = w.abs() * norm, prune(w, fraction, norm) != 0
    assert (score.masked_fill(~kept, float("inf")).min(1).values >= score.masked_fill(kept, 0).max(1).values).all()
    assert not torch.equal(kept, prune(w, fraction) != 0)              # magnitude alone chooses differently
    with pytest.raises(UsageError, match="Wanda pruning of h0.attn.q needs its input's Gram matrix"):
        quantize(graded, TARGETS["loihi2-sim"], GradedPrecision(layer_sparsity=PRUNED, pruning="wanda"))
    with pytest.raises(ValueError, match="below 1"):
        GradedPrecision(layer_sparsity=(("h0.attn.q", 1.0),))


def test_a_pruned_layer_travels_through_the_net_file_and_takes_fewer_words(graded, pruned, tiny, tmp_path):
    from nxcompile.compiler.export import export_net, load_net
    from nxcompile.compiler.layers import network_from_graph
    from nxcompile.compiler.partition import place, synapse_words
    from nxcompile.compiler.validate import validate

    target = TARGETS["loihi2-sim"]
    placement = place(network_from_graph(pruned), target, "tight")
    path = tmp_path / "pruned.net"
    export_net(pruned, path, placement, tiny.tokenizer)
    loaded, loaded_placement = load_net(path)
    assert loaded.quantization.precision == pruned.quantization.precision
    for name, _ in PRUNED:
        assert torch.equal(loaded.op(name).weight, pruned.op(name).weight)
    layers = {layer.name: layer for layer in network_from_graph(loaded).layers}
    density = layers["h2.mlp.c_fc"].params["density"]
    assert 0.05 < density <= 13 / 128 and layers["h2.attn.q"].params["density"] > 0.9
    # a sparse synapse: 8 bits + 8 + a 12-bit index; at 10 % kept, 2.8 bits a synapse against the dense 16
    assert synapse_words(512, 8, target, 0.1) == 30 and synapse_words(512, 8, target) == 164   # 52 * 28 bits
    assert synapse_words(512, 8, target, 0.6) == 164                      # where sparse costs more, dense
    dense = place(network_from_graph(quantize(graded, target, GradedPrecision(layer_weight_bits=NARROW))), target,
                  "tight")
    assert placement.cores_used < dense.cores_used
    assert validate(network_from_graph(loaded), loaded_placement, target) == []     # checked independently


def test_a_narrow_kv_cache_travels_through_the_net_file_and_takes_fewer_words(graded, pruned, tiny, tmp_path):
    """Keys and values cached at KV_BITS: their payloads on that grid, the width read back from the
    file, and each head's cached token its 2 x 32 x KV_BITS bits in 64-bit words (5, against 8 at 8 bits)."""
    from nxcompile.compiler.export import export_net, load_net
    from nxcompile.compiler.layers import network_from_graph
    from nxcompile.compiler.partition import place

    for port in "kv":
        assert pruned.quantization.layers[f"h1.attn.{port}"].bits == KV_BITS
    path = tmp_path / "kv.net"
    target = TARGETS["loihi2-sim"]
    export_net(pruned, path, place(network_from_graph(pruned), target, "tight"), tiny.tokenizer)
    loaded, _ = load_net(path)
    assert loaded.quantization.precision.kv_bits == KV_BITS

    def cache_words(spiking):
        placement = place(network_from_graph(spiking), target, "tight")
        return sum(b.synapse_words for b in placement.blocks if b.layer == "h1.attn.softmax")

    heads, capacity = graded.op("h1.attn.softmax").n_head, graded.op("h1.attn.softmax").kv_capacity
    assert cache_words(loaded) == heads * capacity * 5
    assert cache_words(quantize(graded, target)) == heads * capacity * 8


@pytest.mark.slow
def test_lava_runs_narrowed_and_pruned_layers_bit_exact(tiny, pruned):
    from tests.test_graded import PROMPT
    from tests.test_lava_backend import _assert_twins

    _assert_twins(pruned, tiny.tokenizer(PROMPT)["input_ids"][:8], 1, generated=2)      # pruned: Lava's Sparse


def test_a_rate_coded_layer_is_cut_on_its_populations_grid_and_travels_through_the_net_file(
        rate_coded, rate_coded_cut, tiny, tmp_path):
    """NeurTransformer's Dense layers (spiking populations and graded readouts) narrowed and pruned
    by magnitude: each weight a mantissa of the layer's width times 2**weight_exp, each neuron's
    least |w| zero, the rest of the graph as quantised uncut; the cut reaches the .net file, the
    core model prices it and the validator accepts its placement."""
    from nxcompile.compiler.export import export_net, load_net
    from nxcompile.compiler.layers import network_from_graph
    from nxcompile.compiler.partition import place
    from nxcompile.compiler.validate import validate
    from nxcompile.errors import UsageError
    from nxcompile.sim.fixed_point import limit_of

    target = TARGETS["loihi2-sim"]
    uncut = quantize(rate_coded, target)
    for name, bits in NARROW:           # a population's weights in state units, a readout's in float units
        fmt, op = rate_coded_cut.quantization.layers[name], rate_coded_cut.op(name)
        mantissas = op.weight * 2.0 ** ((fmt.unit_log2 if op.neuron is None else 0) - fmt.weight_exp)
        assert torch.equal(mantissas, mantissas.round()) and mantissas.abs().max() <= limit_of(bits), name
    for name, fraction in PRUNED:
        weight = rate_coded_cut.op(name).weight
        assert int((weight == 0).sum(1).min()) >= round(fraction * weight.shape[1]), name
        assert not ((weight != 0) & (rate_coded.op(name).weight == 0)).any(), name
        kept = weight != 0                 # the largest |w| of each neuron survive
        w = rate_coded.op(name).weight.abs()
        assert (w.masked_fill(~kept, float("inf")).min(1).values >= w.masked_fill(kept, 0).max(1).values).all()
    assert torch.equal(rate_coded_cut.op("h2.attn.k").weight, uncut.op("h2.attn.k").weight)    # others uncut
    assert uncut.quantization.precision is None                       # an uncut file is what it always was
    path = tmp_path / "cut.net"
    placement = place(network_from_graph(rate_coded_cut), target, "tight")
    export_net(rate_coded_cut, path, placement, tiny.tokenizer)
    loaded, loaded_placement = load_net(path)
    assert loaded.quantization.precision == rate_coded_cut.quantization.precision
    layers = {layer.name: layer for layer in network_from_graph(loaded).layers}
    assert layers["h1.mlp.c_fc"].params["weight_bits"] <= 2 and layers["h2.mlp.c_fc"].params["density"] <= 13 / 128
    assert placement.cores_used < place(network_from_graph(uncut), target, "tight").cores_used
    assert validate(network_from_graph(loaded), loaded_placement, target) == []     # checked independently
    with pytest.raises(UsageError, match="pruned by magnitude and rounded to nearest"):
        quantize(rate_coded, target, GradedPrecision(layer_sparsity=PRUNED, pruning="wanda"))


@pytest.mark.slow
def test_lava_runs_a_cut_rate_coded_network_bit_exact(tiny, rate_coded_cut):
    from tests.test_graded import PROMPT
    from tests.test_lava_backend import _assert_twins

    _assert_twins(rate_coded_cut, tiny.tokenizer(PROMPT)["input_ids"][:8], 8, generated=2)


def test_rate_coded_fine_tuning_trains_on_the_cut_grid(tiny, rate_coded, calibration, tmp_path):
    """NeurTransformer fine-tuned at 4 bits with 75 % pruned: the saved graph records the grid, each
    trained layer's weights are on it (each neuron's pruned synapses zero; the quantiser changes
    nothing) and differ from where training started."""
    from nxcompile.compiler.fit import cut_layers, uniform_grid
    from nxcompile.compiler.quantize import on_grid
    from nxcompile.models.finetune import FinetuneOptions, finetune

    target = TARGETS["loihi2-sim"]
    grid = uniform_grid(rate_coded, 4, 0.75)
    cut = rate_coded.copy().with_weight_grid(grid)
    options = FinetuneOptions(steps=2, batch_size=1, context=32, timesteps=8, scope="all")
    trainable, _ = finetune(tiny.model, cut, calibration, target, options)
    save_graph(trainable.deployable(), tmp_path / "cut.safetensors")
    tuned = load_graph(tmp_path / "cut.safetensors")
    assert tuned.weight_grid() == grid
    for name in cut_layers(tuned):
        weight = tuned.op(name).weight
        assert not torch.equal(weight, rate_coded.op(name).weight), name
        assert int((weight == 0).sum(1).min()) >= round(0.75 * weight.shape[1]), name
        assert torch.equal(on_grid(tuned.op(name), target, 4, 0.75).weight, weight), name


def test_fit_chooses_the_first_frontier_point_under_the_budget_and_writes_a_valid_net(tmp_path, capsys):
    from nxcompile.compiler.export import load_net
    from nxcompile.compiler.layers import network_from_graph
    from nxcompile.compiler.targets import get_target
    from nxcompile.compiler.validate import validate

    out = tmp_path / "fit.net"
    code, printed, err = cli(capsys, "fit", "gpt2-tiny", "--cores", "22", "--packing", "tight",
                             "--calibration-tokens", "128", "--eval-tokens", "256", "-o", str(out),
                             "--plot", str(tmp_path / "fit.png"), "--save-graph", str(tmp_path / "fit.safetensors"))
    assert code == 0, err
    rows = [row.split("|")[1:-1] for row in printed.splitlines() if row.startswith("| ") and "at " in row]
    path = [row for row in rows if not row[0].strip().startswith("uniform:")]
    cores = [int(row[3].replace(",", "")) for row in path]
    predicted = [float(row[1]) for row in path]
    assert predicted == sorted(predicted) and cores[0] > 22 and cores[-1] <= cores[0]   # the path narrows as it goes
    uniform = {row[0].strip().removeprefix("uniform: ").removesuffix(" (chosen)") for row in rows} - \
        {row[0].strip().removesuffix(" (chosen)") for row in path}
    alike = {f"24 at {bits} bits" + (f", 24 pruned {pruned} %" if pruned else "")
             for bits in (8, 6, 4, 3, 2) for pruned in (0, 60, 75, 90)}
    assert uniform <= alike and len(uniform) >= 18 and len(rows) - len(path) == len(uniform)   # each alike once
    fitting = [row for row in rows if int(row[3].replace(",", "")) <= 22]
    chosen = next(row for row in rows if "(chosen)" in row[0])     # what loses least on the calibration text
    assert float(chosen[2]) == min(float(row[2]) for row in fitting)
    assert f"{chosen[3].strip()} cores on 1 chip(s)" in next(line for line in printed.splitlines()
                                                              if line.startswith("chosen"))
    graph, placement = load_net(out)
    assert placement.cores_used <= 22 and graph.quantization.precision.layer_weight_bits
    assert validate(network_from_graph(graph), placement, get_target("loihi2")) == []   # checked independently
    assert (tmp_path / "fit.png").read_bytes()[:4] == b"\x89PNG"
    saved = load_graph(tmp_path / "fit.safetensors")           # the cut graph quantises to the .net's weights
    again = quantize(saved, get_target("loihi2"))
    assert saved.weight_grid().layer_weight_bits == graph.quantization.precision.layer_weight_bits
    for name in graph.quantization.layers:
        if hasattr(graph.op(name), "weight"):
            assert torch.equal(again.op(name).weight, graph.op(name).weight), name


def test_a_rate_coded_networks_noise_floor_is_counted_once(graded, rate_coded):
    """Every cut of a spiking population moves later spike times, so each single-layer KL carries a
    floor that does not add up over layers: the prediction takes each layer's KL above its least
    measured one and the largest floor once; the graded method's KLs add as measured."""
    from nxcompile.compiler.fit import cut_layers, noise_floors, predicted_total

    def measured(graph):
        return {(name, bits, fraction): 0.01 * (i + 1) + 0.1 * (8 - bits) + fraction
                for i, name in enumerate(cut_layers(graph)) for bits, fraction in ((6, 0.0), (4, 0.0), (8, 0.75))}

    kls = measured(rate_coded)
    floors = noise_floors(rate_coded, kls)
    layers = cut_layers(rate_coded)
    assert floors == {name: pytest.approx(kls[(name, 6, 0.0)]) for name in layers}
    assert predicted_total(kls, floors, {name: (6, 0.0) for name in layers}) == pytest.approx(0.01 * len(layers) + 0.2)
    assert predicted_total(kls, floors, {name: (4, 0.0) for name in layers}) == pytest.approx(
        0.01 * len(layers) + 0.2 + 0.2 * len(layers))
    assert predicted_total(kls, floors, {name: (8, 0.0) for name in layers}) == 0.0
    kls = measured(graded)
    assert noise_floors(graded, kls) == {}
    assert predicted_total(kls, {}, {name: (4, 0.75) for name in cut_layers(graded)}) == pytest.approx(
        sum(kls[(name, 4, 0.0)] + kls[(name, 8, 0.75)] for name in cut_layers(graded)))


def test_fit_cuts_neurtransformer_layers_to_a_budget(tmp_path, capsys):
    """The rate-coded method's frontier (pruned by magnitude, rounded to nearest by default) and a
    choice under the budget whose placement validates."""
    from nxcompile.compiler.export import load_net
    from nxcompile.compiler.layers import network_from_graph
    from nxcompile.compiler.targets import get_target
    from nxcompile.compiler.validate import validate

    out = tmp_path / "fit.net"
    code, printed, err = cli(capsys, "fit", "gpt2-tiny", "--method", "neurtransformer", "--cores", "90",
                             "--calibration-tokens", "32", "--eval-tokens", "0", "-o", str(out))
    assert code == 0, err
    assert "chosen for 90 cores of loihi2" in printed
    graph, placement = load_net(out)
    precision = graph.quantization.precision
    assert placement.cores_used <= 90 < 116 and (precision.layer_weight_bits or precision.layer_sparsity)
    assert precision.pruning == "magnitude" and precision.rounding == "nearest"
    assert validate(network_from_graph(graph), placement, get_target("loihi2")) == []


def test_on_random_weights_the_fit_walks_the_uniform_configurations_widest_synapse_first(capsys):
    from nxcompile.compiler.fit import synapse_bits

    code, printed, err = cli(capsys, "fit", "random:gpt2-tiny", "--cores", "20", "--packing", "tight")
    assert code == 0, err
    assert "sensitivity is not measurable" in err
    rows = [row.split("|")[1:-1] for row in printed.splitlines() if row.startswith("| 24 at")]
    cuts = [(int(row[0].split(" at ")[1].split()[0]), int(row[0].split("pruned ")[1].split()[0]) / 100
             if "pruned" in row[0] else 0.0) for row in rows]
    assert len(cuts) == 20 and all("not measurable" in row[1] for row in rows)
    assert [synapse_bits(c) for c in cuts] == sorted((synapse_bits(c) for c in cuts), reverse=True)
    first = next(row for row in rows if int(row[3]) <= 20)            # the first that fits is the choice
    assert "(chosen)" in first[0]
    assert f"chosen for 20 cores of loihi2: {first[0].strip().removesuffix(' (chosen)')}, {first[3].strip()} cores" \
        in printed


def test_the_fit_takes_the_pruned_fractions_and_kv_cache_asked_for(capsys):
    """`--sparsities` are the fractions a layer may take (dense besides), `--kv-bits` the cache every
    configuration is placed with: 3-bit keys and values leave more of the same budget to weights."""
    def uniform_rows(*flags: str) -> dict[str, int]:
        code, printed, err = cli(capsys, "fit", "random:gpt2-tiny", "--cores", "20", "--packing", "tight", *flags)
        assert code == 0, err
        rows = [row.split("|")[1:-1] for row in printed.splitlines() if row.startswith("| 24 at")]
        return {row[0].strip().removesuffix(" (chosen)"): int(row[3]) for row in rows}

    asked = uniform_rows("--sparsities", "0.5,0.8")
    assert set(asked) == {f"24 at {b} bits" + (f", 24 pruned {p} %" if p else "") for b in (8, 6, 4, 3, 2)
                          for p in (0, 50, 80)}
    narrow_cache = uniform_rows("--sparsities", "0.5,0.8", "--kv-bits", "3")
    assert all(narrow_cache[name] <= cores for name, cores in asked.items())
    assert narrow_cache["24 at 8 bits"] < asked["24 at 8 bits"]


def test_a_budget_nothing_reaches_is_one_line_with_the_best_reached(capsys):
    code, _, err = cli(capsys, "fit", "gpt2-tiny", "--cores", "1", "--packing", "tight",
                       "--calibration-tokens", "128", "--eval-tokens", "0")
    assert_one_line_error(code, err, 2, "nothing on the frontier fits 1 cores", "needs", "pruning")
    code, _, err = cli(capsys, "fit", "gpt2-tiny", "--method", "neurtransformer", "--pruning", "wanda",
                       "--eval-tokens", "0")
    assert_one_line_error(code, err, 2, "pruned by magnitude", "--pruning magnitude")
    code, _, err = cli(capsys, "fit", "gpt2-tiny", "--calibration-tokens", "1", "--eval-tokens", "0")
    assert_one_line_error(code, err, 2, "at least 2", "--calibration-tokens")
    with pytest.raises(SystemExit) as exit_:
        cli(capsys, "fit", "gpt2-tiny", "--cores", "0")
    assert exit_.value.code == 2 and "must be >= 1" in capsys.readouterr().err


def test_a_pruned_layers_payloads_cross_only_its_kept_synapses(pruned, tiny):
    from nxcompile.sim import fixed_point
    from nxcompile.sim.energy import count

    ids = tiny.tokenizer("To be, or not to be")["input_ids"]
    values = fixed_point.run(pruned, torch.tensor([ids]), 1, keep_values=True).values
    rows = {row.name: row for row in count(pruned, values, 1)}
    for name in ("h2.mlp.c_fc", "h2.attn.q"):          # pruned 90 %, and dense
        weight = pruned.op(name).weight
        arriving = torch.as_tensor(values[pruned.inputs(name)["x"]] != 0).double()[0]     # [S, N_in]
        crossed = arriving @ ((weight != 0).double().sum(0) if name == "h2.mlp.c_fc"
                              else torch.full((weight.shape[1],), float(weight.shape[0]), dtype=torch.float64))
        assert rows[name].macs == pytest.approx(float(crossed.mean()))
    assert rows["h2.mlp.c_fc"].macs < 0.15 * rows["h2.mlp.c_fc"].ann_macs


def test_gptq_rounding_moves_a_layers_output_less_than_nearest_rounding(graded, calibration):
    from nxcompile.compiler.fit import input_grams
    from nxcompile.compiler.quantize import gptq_mantissas, pruned as prune
    from nxcompile.errors import UsageError

    grams = input_grams(graded, calibration)
    for name, bits, fraction in (("h1.mlp.c_fc", 3, 0.0), ("h2.attn.c_proj", 4, 0.75)):
        w = prune(graded.op(name).weight, fraction).double()
        gram = grams[name]
        nearest = quantize(graded, TARGETS["loihi2-sim"], GradedPrecision(
            layer_weight_bits=((name, bits),), layer_sparsity=((name, fraction),))).op(name).weight.double()
        mantissas, k = gptq_mantissas(w.float(), bits, gram)
        assert torch.equal(mantissas, mantissas.round()) and mantissas.abs().max() <= 2 ** (bits - 1) - 1
        assert not ((mantissas != 0) & (w == 0)).any()                     # pruned synapses stay pruned

        def output_error(q):                      # ||X (W - Q)^T||^2 on the calibration inputs, from X^T X
            d = w - q
            return float(torch.einsum("oi,ij,oj->", d, gram, d))
        assert output_error(mantissas.double() * 2.0 ** -k) < 0.8 * output_error(nearest)
    with pytest.raises(UsageError, match="GPTQ rounding of h0.attn.q needs"):
        quantize(graded, TARGETS["loihi2-sim"], GradedPrecision(layer_weight_bits=(("h0.attn.q", 3),), rounding="gptq"))


def test_fine_tuning_on_a_cut_grid_recovers_and_every_layer_stays_on_it(tiny, graded, calibration, tmp_path):
    """Quantisation-aware training of the graded method at 4 bits with 75 % of each neuron's synapses
    pruned: the loss is the cut network's, the saved graph is on that grid (each neuron's pruned
    synapses zero, every weight a 4-bit mantissa of its layer's exponent, so the quantiser changes
    nothing) and records it, and a few steps win back part of what the one-shot cut lost."""
    from nxcompile.compiler.fit import cut_layers, uniform_grid
    from nxcompile.compiler.quantize import _exponent
    from nxcompile.models.corpus import load_corpus, token_windows
    from nxcompile.models.finetune import FinetuneOptions, finetune
    from nxcompile.sim import fixed_point
    from nxcompile.sim.evaluate import evaluate
    from nxcompile.sim.fixed_point import limit_of

    grid = uniform_grid(graded, 4, 0.75)
    cut = graded.copy().with_weight_grid(grid)
    options = FinetuneOptions(steps=12, learning_rate=1e-3, batch_size=2, context=64, timesteps=1, scope="all")
    trainable, _ = finetune(tiny.model, cut, calibration, TARGETS["loihi2-sim"], options)
    save_graph(trainable.deployable(), tmp_path / "cut.safetensors")
    tuned = load_graph(tmp_path / "cut.safetensors")
    assert tuned.weight_grid() == grid
    again = quantize(tuned, TARGETS["loihi2-sim"])
    for name in cut_layers(tuned):
        weight = tuned.op(name).weight
        assert not torch.equal(weight, graded.op(name).weight), name
        assert int((weight == 0).sum(1).min()) >= round(0.75 * weight.shape[1]), name
        mantissas = weight * 2.0 ** _exponent(weight, 4)
        assert torch.equal(mantissas, mantissas.round()) and mantissas.abs().max() <= limit_of(4), name
        assert torch.equal(again.op(name).weight, weight), name
    held_out = token_windows(tiny.tokenizer, load_corpus().held_out, 64, 256)
    score = lambda g: evaluate(tiny.model, quantize(g, TARGETS["loihi2-sim"]), held_out, 1,   # noqa: E731
                               simulate=fixed_point.run)
    assert score(tuned).snn_perplexity < 0.9 * score(cut).snn_perplexity


def test_finetune_grid_flags_are_checked_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(capsys, "finetune", "gpt2-tiny", "--method", "graded", "--weight-bits", "9")
    assert exit_.value.code == 2 and "at most 8 bits" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli(capsys, "finetune", "gpt2-tiny", "--method", "graded", "--sparsity", "1")
    assert exit_.value.code == 2 and "below 1" in capsys.readouterr().err


def test_kv_bits_is_the_graded_methods_and_recorded_in_the_grid(capsys, tmp_path):
    """`finetune --kv-bits` records the width in the trained graph's grid (what deploys it); asked of
    a rate-coded method, whose keys and values are spikes, it is one line."""
    out = tmp_path / "kv.safetensors"
    code, _, err = cli(capsys, "finetune", "gpt2-tiny", "--method", "graded", "--kv-bits", "4", "--steps", "1",
                       "--batch-size", "1", "--train-context", "16", "--eval-tokens", "0", "-o", str(out))
    assert code == 0, err
    assert load_graph(out).weight_grid() == GradedPrecision(kv_bits=4)
    code, _, err = cli(capsys, "fit", "gpt2-tiny", "--method", "neurtransformer", "--kv-bits", "4")
    assert_one_line_error(code, err, 2, "--kv-bits sets the graded method's KV cache")


def test_training_sees_a_narrow_kv_caches_rounding(tiny, graded, calibration):
    """At 3-bit keys and values the float run training takes rounds them as the chip's cache holds
    them (the quantiser's own payload formats), so its logits are the fixed-point network's much more
    nearly than the float run's without that rounding; at the default 8 bits training runs as before,
    and the graph it returns keeps its attention as it was."""
    import dataclasses

    from nxcompile.models.finetune import TrainableGraph, kv_cache_grids
    from nxcompile.sim import fixed_point, reference

    target = TARGETS["loihi2-sim"]
    assert kv_cache_grids(graded, target) == {}
    cut = graded.copy().with_weight_grid(GradedPrecision(kv_bits=3))
    grids = kv_cache_grids(cut, target)
    formats = quantize(cut, target).quantization.layers
    assert grids["h2.attn.softmax"].kv_grid == ((3, formats["h2.attn.k"].frac), (3, formats["h2.attn.v"].frac))
    ids = calibration[:1, :48]
    fixed = fixed_point.run(quantize(cut, target), ids, 1).logits
    rounded = reference.run(cut, ids, 1, ops=grids).logits
    unrounded = reference.run(cut, ids, 1).logits
    assert (rounded - fixed).abs().mean() < 0.5 * (unrounded - fixed).abs().mean()
    trainable = TrainableGraph(cut, [], target)
    assert all(trainable.grid_ops()[n] == op for n, op in grids.items())
    assert all(trainable.deployable().op(n).kv_grid is None for n in grids)
