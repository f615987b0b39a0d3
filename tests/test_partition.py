"""Partitioner and validator: property tests over random layers and limits, hand-made
violations, Intel's netx networks and the shipped GPT-2."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nxcompile.compiler.layers import LayerSpec, Network, network_from_graph, network_from_netx
from nxcompile.compiler.partition import (PACKINGS, CoreFlows, DoesNotFit, messages_per_neuron, place,
                                          refine_chips)
from nxcompile.compiler.targets import LOIHI2, TARGETS
from nxcompile.compiler.validate import validate
from nxcompile.errors import NxError


def small_target(neurons=64, words=512, axons=48, cores_per_chip=4, chips=None):
    """Loihi 2's rules with small limits; 8-bit weights packed 8 to a 64-bit word (easy hand counts)."""
    return dataclasses.replace(LOIHI2, name="test", neurons_per_core=neurons, synapse_words_per_core=words,
                               synapse_word_bits=64, synapse_overhead_bits=0, input_axons_per_core=axons,
                               cores_per_chip=cores_per_chip, chips=chips)


def chain(widths: list[int], heads: int = 0) -> Network:
    """host input -> dense -> ... (optionally an attention layer and a residual add)."""
    layers = [LayerSpec("in", "elementwise", widths[0], (), {"ports": 0}, host=True)]
    for i, width in enumerate(widths[1:]):
        layers.append(LayerSpec(f"d{i}", "dense", width, (layers[-1].name,),
                                {"in_features": layers[-1].neurons}))
    if heads:
        width = layers[-1].neurons
        head_dim = max(1, width // heads)
        q = LayerSpec("q", "dense", heads * head_dim, (layers[-1].name,), {"in_features": width})
        layers += [q, dataclasses.replace(q, name="k"), dataclasses.replace(q, name="v")]
        layers.append(LayerSpec("ssa", "attention", heads * head_dim, ("q", "k", "v"),
                                {"n_head": heads, "head_dim": head_dim, "kv_capacity": 6, "timesteps": 2,
                                 "kv_bits": 1}))
        layers.append(LayerSpec("add", "elementwise", heads * head_dim, ("ssa", "q"), {"ports": 2}))
    return Network(layers, source="random chain", timesteps=2)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(widths=st.lists(st.integers(1, 300), min_size=2, max_size=5),
       heads=st.integers(0, 3),
       neurons=st.integers(16, 256), words=st.integers(64, 1 << 11),
       axons=st.integers(16, 512), cores_per_chip=st.integers(1, 16), packing=st.sampled_from(PACKINGS))
def test_validator_accepts_every_placement_the_partitioner_emits(widths, heads, neurons, words, axons,
                                                                cores_per_chip, packing):
    network = chain(widths, heads)
    target = small_target(neurons, words, axons, cores_per_chip)
    try:
        placement = place(network, target, packing)
    except DoesNotFit as exc:
        # Only allowed when a single output unit cannot fit a core at all.
        assert "even its smallest piece" in str(exc)
        return
    assert placement.cores_used >= placement.lower_bound_cores
    assert placement.traffic["inter_chip"] <= placement.traffic["inter_chip_before_refinement"] + 1e-6
    read = sum((hi - lo) * messages_per_neuron(network, source)
               for b in placement.blocks for source, lo, hi in b.inputs)
    traced = sum(placement.traffic[k] for k in ("inter_core", "within_core", "host_to_chip"))
    assert traced == pytest.approx(read)          # every message a block reads is traced to one sender


def _valid():
    network = chain([40, 100, 60, 30])
    target = small_target(neurons=50, words=150, axons=64, cores_per_chip=3)
    return network, place(network, target), target


def test_the_fixture_placement_splits_by_input_and_output():
    _, placement, _ = _valid()
    assert placement.accumulators == {"d1": 2}            # fan-in 100 > 64 axons
    assert any(b.role == "accumulator" for b in placement.blocks)
    assert placement.chips_used > 1


def test_validator_rejects_an_overfull_core():
    network, placement, target = _valid()
    placement.blocks = [dataclasses.replace(b, core=0, chip=0) for b in placement.blocks]
    problems = validate(network, placement, target)
    assert any("core 0:" in p and "neurons" in p for p in problems)
    assert any("synapse words" in p for p in problems)


def test_validator_rejects_missing_and_duplicated_neurons():
    network, placement, target = _valid()
    dropped = dataclasses.replace(placement, blocks=placement.blocks[1:])
    assert any("computed 0 times" in p for p in validate(network, dropped, target))
    doubled = dataclasses.replace(placement, blocks=placement.blocks + placement.blocks[:1])
    assert any("computed 2 times" in p for p in validate(network, doubled, target))


def test_validator_rejects_a_missing_accumulator():
    network, placement, target = _valid()
    no_acc = dataclasses.replace(placement, blocks=[b for b in placement.blocks if b.role != "accumulator"])
    assert any("d1" in p and "acc" in p for p in validate(network, no_acc, target))


def test_validator_rejects_host_layers_on_cores_and_too_many_chips_or_cores_per_chip():
    network, placement, target = _valid()
    on_core = dataclasses.replace(placement, blocks=placement.blocks + [
        dataclasses.replace(placement.blocks[0], layer="in")])
    assert any("host layer" in p for p in validate(network, on_core, target))
    assert any("chips used" in p for p in validate(network, placement, dataclasses.replace(target, chips=1)))
    crowded = dataclasses.replace(placement, blocks=[dataclasses.replace(b, chip=0) for b in placement.blocks])
    assert any("chip 0:" in p and "cores, limit" in p for p in validate(network, crowded, target))


def test_validator_rejects_an_under_declared_input_range():
    """The validator recomputes what a block reads; it does not trust the block's own list."""
    network = chain([100, 40])          # fan-in 100 over 64 axons: split in two by input
    target = small_target(neurons=200, words=1 << 17, axons=64)
    placement = place(network, target)
    cheat = [dataclasses.replace(b, role="neurons", parts=1, part=0, inputs=(("in", 0, 10),))
             for b in placement.blocks if b.role == "partial" and b.part == 0]
    problems = validate(network, dataclasses.replace(placement, blocks=cheat), target)
    assert any("input axons" in p for p in problems)


@pytest.mark.parametrize("packing", PACKINGS)
def test_lower_bound_of_one_dense_layer_matches_hand_count(packing):
    network = chain([100, 300])
    target = small_target(neurons=1000, words=625, axons=4096)
    placement = place(network, target, packing)
    # each of the 100 input axons reaches 300 neurons: ceil(300 * 8 / 64) = 38 words
    assert placement.lower_bound_cores == math.ceil(100 * 38 / 625)


def test_intel_packing_multiplies_cores_by_the_ratio_of_need_to_limit():
    """As Intel's compiler split PilotNet's 2,560 -> 100 layer (1 -> 6 -> 12 cores): 300 neurons over
    100 axons need 3,800 words, 6.08 cores' worth: 7 cores of 43 neurons need 600 words each (fits)."""
    placement = place(chain([100, 300]), small_target(neurons=1000, words=625, axons=4096), "intel")
    assert placement.cores_used == 7 and {b.stop - b.start for b in placement.blocks} == {43, 42}
    tight = place(chain([100, 300]), small_target(neurons=1000, words=625, axons=4096), "tight")
    assert tight.cores_used == 7 and max(b.stop - b.start for b in tight.blocks) == 48     # 6 words x 100 axons


def test_partitioning_is_deterministic():
    network = chain([64, 200, 90], heads=2)
    target = small_target(neurons=70, words=375, axons=200)
    for packing in PACKINGS:
        assert place(network, target, packing).blocks == place(network, target, packing).blocks


def test_too_small_a_target_names_layer_and_a_target_that_fits():
    network = chain([1000, 1000])  # 1,000 axons x ceil(1,000 x 16 / 50) = 320,000 Loihi 2 words
    eight_cores = dataclasses.replace(TARGETS["loihi2"], name="eight-cores", cores_per_chip=8)
    with pytest.raises(DoesNotFit, match=r"needs 53 cores .* eight-cores has 8 cores .* "
                                         r"left over is d0\); loihi2 would fit"):
        place(network, eight_cores)
    with pytest.raises(DoesNotFit, match=r"layer d0: even its smallest piece needs"):
        place(chain([10, 10]), dataclasses.replace(small_target(neurons=1, words=1, axons=1),
                                                       synapse_overhead_bits=60))   # one synapse: 2 words


@pytest.mark.parametrize("name", ["tinynet", "pilotnet_sdnn", "oxford"])
def test_intel_networks_partition_and_validate_on_loihi2(shared_netx, name):
    network = network_from_netx(shared_netx / name / "network.net")
    assert place(network, TARGETS["loihi2"]).chips_used == 1


def test_graded_pilotnet_is_never_placed_on_binary_loihi1(shared_netx):
    network = network_from_netx(shared_netx / "pilotnet_sdnn" / "network.net")
    with pytest.raises(NxError, match="invalid: .* binary spikes only"):
        place(network, TARGETS["loihi1"])


def test_netx_reader_reads_conv_geometry(shared_netx):
    network = network_from_netx(shared_netx / "pilotnet_sdnn" / "network.net")
    conv = network.layer("layer3:conv")
    assert conv.params["in_shape"] == (36, 7, 24) and conv.params["out_shape"] == (64, 4, 22)
    assert network.layer("layer0:input").kind == "input" and not network.layer("layer0:input").host
    assert conv.params["stride"] == (2, 1) and conv.params["padding"] == (1, 0)
    assert network.layer("layer6:dense").params["in_features"] == 2560


def test_shipped_gpt2_places_on_one_loihi2_chip(tiny_graph):
    network = network_from_graph(tiny_graph)
    for packing in PACKINGS:
        placement = place(network, TARGETS["loihi2"], packing)
        assert placement.host_layers == ["embed", "ln_f", "lm_head"] and placement.chips_used == 1
    assert placement.cores_used <= 1.1 * placement.lower_bound_cores          # tight packing
    attention = network.layer("h0.attn.ssa")
    assert attention.kind == "attention" and attention.params["timesteps"] == 8


def test_chip_refinement_regroups_cores_that_talk():
    # Cores 0<->1 and 2<->3 exchange 10 messages each, 0->2 one; placed 0,2 | 1,3
    # all heavy traffic crosses chips. Regrouped, only the light 0->2 flow does.
    flows = CoreFlows(np.array([[0, 1], [1, 0], [2, 3], [3, 2], [0, 2]]),
                      np.array([10.0, 10.0, 10.0, 10.0, 1.0]), 0.0, 0.0)
    chips = refine_chips(flows, np.array([0, 1, 0, 1]))
    assert chips[0] == chips[1] and chips[2] == chips[3] and chips[0] != chips[2]
    assert sorted(np.bincount(chips).tolist()) == [2, 2]          # core counts per chip kept


def test_chip_refinement_cuts_gpt2_traffic_across_chips(tiny_graph):
    network = network_from_graph(tiny_graph)
    placement = place(network, small_target(neurons=256, words=1 << 14, axons=512, cores_per_chip=8))
    assert placement.chips_used > 2
    assert placement.traffic["inter_chip"] < placement.traffic["inter_chip_before_refinement"]
