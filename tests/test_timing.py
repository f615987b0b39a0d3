"""The Loihi 2 time model: hand-counted steps, the barrier, prefill and decode of a real graph against its
hardware schedule, and `nxcompile perf` (on Intel's measured PilotNet, see tests/test_calibration.py)."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from nxcompile.sim.timing import (LOIHI1, LOIHI2, TIME_MODELS, CoreWork, graph_activity, graph_performance,
                                  step_time)


def _work(synops, updates, sends, packets, layers, chips=None) -> CoreWork:
    cores = len(synops)
    return CoreWork(np.array(synops, float), np.array(updates, float), np.array(sends, float),
                    np.array(packets, float), [set(names) for names in layers],
                    np.array(chips if chips is not None else [0] * cores))


def test_a_step_is_its_busiest_cores_work_plus_the_barrier_by_hand():
    work = _work([1000, 10], [100, 10], [50, 0], [[0, 20, 0], [0, 0, 0]], [["a"], ["b"]])
    step = step_time(work, LOIHI1)
    # core 0: 1000 x 3.5 + 100 x 8.4 + 50 x 2.1 = 4,445 ns of compute, 20 packets to other tiles x 5.3 = 106 ns;
    # two cores on one tile: the barrier of one tile, 113 ns
    assert step.core == 0 and step.binding == "compute" and step.layers == ("a",)
    assert step.compute_s == pytest.approx(4445e-9) and step.network_s == pytest.approx(106e-9)
    assert step.seconds == pytest.approx((4445 + 106 + 113) * 1e-9)
    only_b = step_time(work, LOIHI1, np.array([False, True]))
    assert only_b.core == 1 and only_b.seconds == pytest.approx((10 * 3.5 + 10 * 8.4 + 113) * 1e-9)
    idle = step_time(work, LOIHI1, np.array([False, False]))
    assert idle.binding == "barrier" and idle.seconds == pytest.approx(113e-9)


def test_loihi2_times_are_loihi1s_with_intels_stated_speed_ups():
    assert LOIHI2.update_ns == LOIHI1.update_ns / 2 and LOIHI2.send_ns == LOIHI1.send_ns / 10
    assert LOIHI2.synop_ns == LOIHI1.synop_ns and list(TIME_MODELS)[0] == "loihi2-fitted"


def test_the_barrier_grows_with_the_tiles_and_the_chips():
    assert LOIHI1.barrier(1, 1) == pytest.approx(113) and LOIHI1.barrier(32, 1) == pytest.approx(465)
    spans = [LOIHI1.barrier(tiles, 1) for tiles in (1, 2, 4, 8, 16, 32)] + [LOIHI1.barrier(0, c) for c in (2, 8, 81)]
    assert spans == sorted(spans) and spans[-1] > 465


@pytest.fixture(scope="module")
def placed_graded(tiny):
    from nxcompile.compiler.convert import ConversionOptions, convert
    from nxcompile.compiler.layers import network_from_graph
    from nxcompile.compiler.partition import place
    from nxcompile.compiler.quantize import quantize
    from nxcompile.compiler.targets import TARGETS
    from nxcompile.models.corpus import calibration_windows
    from nxcompile.sim.energy import counted_rows

    graph = quantize(convert(tiny.model, ConversionOptions(method="graded", timesteps=1),
                             calibration_windows(tiny.tokenizer, 128), "gpt2-tiny"), TARGETS["loihi2"])
    rows, _ = counted_rows(graph, tiny.tokenizer, 16)
    return graph, place(network_from_graph(graph), TARGETS["loihi2"]), rows


@pytest.fixture(scope="module")
def tiny():
    from nxcompile.models.zoo import load_model

    return load_model("gpt2-tiny")


def test_prefill_and_decode_follow_the_hardware_schedule(placed_graded):
    """Decode walks the hop = 1 schedule's steps, each as long as the cores working in it; prefill
    pipelines a token every interval with every core working."""
    from nxcompile.sim import fixed_point as fx
    from nxcompile.sim.schedule import schedule

    graph, placement, rows = placed_graded
    perf = graph_performance(graph, placement, rows, TIME_MODELS["loihi2-fitted"])
    plan = schedule(graph, fx.integer_program(graph), 1, hop=1)
    assert len(perf.decode_steps) == plan.period and perf.interval == plan.interval == 1
    busy, active, _ = graph_activity(graph)
    assert set().union(*active) == set(fx.integer_program(graph)) and set(busy.values()) == {1}
    assert all(step.seconds <= perf.steady.seconds + 1e-15 for step in perf.decode_steps)
    assert perf.prefill_seconds(16) == pytest.approx(perf.decode_seconds + 15 * perf.steady.seconds)
    assert perf.prefill_seconds(16) / 16 < perf.decode_seconds / 4          # pipelining pays
    assert perf.chips == 1 and perf.steady.layers


def test_the_perf_command_prints_both_phases_beside_the_ann_and_refuses_bad_input(capsys):
    from nxcompile.cli import main

    assert main(["perf", "gpt2-tiny", "--method", "graded", "--tokens", "8", "--prompt-tokens", "64",
                 "--ann-decode-tokens", "4"]) == 0
    out = capsys.readouterr().out
    for needle in ("prefill", "decode", "tokens/s", "TTFT", "binds", "ANN measured", "no energy counter"):
        assert needle in out
    assert main(["perf", "gpt2-tiny", "--prompt-tokens", "5000"]) == 2
    assert "exceeds the model's context" in capsys.readouterr().err
    assert main(["perf", "nowhere.net"]) == 2
    err = capsys.readouterr().err.strip()
    assert "nowhere.net" in err and len(err.splitlines()) == 1
    device = "cuda" if not torch.cuda.is_available() else "tpu"
    assert main(["perf", "gpt2-tiny", "--device", device]) == 2
    err = capsys.readouterr().err.strip()
    assert "--device" in err and len(err.splitlines()) == 1 and "Traceback" not in err


class _SteppedCounter:
    """An energy counter like NVML's: each run adds `mj_per_run`, but the reading moves only every `every` runs."""

    def __init__(self, mj_per_run: float, every: int):
        self.mj_per_run, self.every, self.runs = mj_per_run, every, 0

    def run(self) -> None:
        self.runs += 1
        time.sleep(1e-3)

    def read(self) -> float:
        return (self.runs // self.every) * self.every * self.mj_per_run


def test_the_anns_energy_per_run_spans_a_window_of_runs_not_one_run():
    from nxcompile.models.ann_speed import _mj_per_run

    one = _SteppedCounter(3.0, every=10)
    assert _mj_per_run(one.run, one.read, window_s=0) == 0.0       # one run between two readings: no step seen
    many = _SteppedCounter(3.0, every=10)
    estimate = _mj_per_run(many.run, many.read, window_s=0.3)
    assert many.runs >= 100                                        # the window held many runs ...
    assert abs(estimate - 3.0) <= 3.0 * 10 / many.runs             # ... so one step's error is spread over them
