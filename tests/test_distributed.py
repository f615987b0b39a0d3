"""Fine-tuning and evaluation under torchrun (gloo on CPU): two ranks give what one process gives,
only rank 0 writes, and a rank that dies or a launch that is set up wrong ends in one line."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import REPO_ROOT
from tests.test_cli import assert_one_line_error, cli

FINETUNE = ["finetune", "gpt2-tiny", "--steps", "3", "--batch-size", "2", "--context", "32", "--scope", "all",
            "--eval-tokens", "256"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _torchrun(ranks: int, *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
                             "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "nxcompile",
                             *args], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), **popen)


@pytest.mark.slow
@pytest.mark.parametrize("sharding", [[], ["--fsdp"]], ids=["ddp", "fsdp"])
def test_two_gloo_ranks_fine_tune_and_score_as_one_process_does_and_only_rank_0_writes(sharding, tmp_path, capsys):
    """DDP (a whole copy of the trained state on each rank) and FSDP (each rank a shard of it) alike."""
    one, two = tmp_path / "one" / "g.safetensors", tmp_path / "two" / "g.safetensors"
    one.parent.mkdir()
    two.parent.mkdir()
    run = _torchrun(2, *FINETUNE, *sharding, "-o", str(two))
    out, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-3000:]
    assert cli(capsys, *FINETUNE, "-o", str(one))[0] == 0
    assert out.count("wrote ") == 1 and out.count("fine-tuned (all)") == 1        # rank 1 printed nothing
    assert sorted(p.name for p in two.parent.iterdir()) == sorted(p.name for p in one.parent.iterdir())
    state_one, state_two = (torch.load(f"{p}.train-state.pt", weights_only=True) for p in (one, two))
    # The first step: the same parameters on the same global batch, split over the ranks. After it the
    # two runs' gradients differ by float rounding (DDP sums the ranks' halves in another order than
    # one process's batch), which flips a few spikes and Adam's move of near-zero gradients (about
    # --lr, 1e-3, per step; measured here 2.6e-3 apart after 3 steps): so the later losses agree to
    # 1 %, and every parameter within two Adam moves a step.
    assert state_two["losses"][0] == pytest.approx(state_one["losses"][0], rel=1e-6)
    assert state_two["losses"] == pytest.approx(state_one["losses"], rel=1e-2)
    steps = len(state_one["losses"])
    for key, value in state_one["params"].items():
        torch.testing.assert_close(state_two["params"][key], value, rtol=0, atol=2 * 1e-3 * steps)
    record_one, record_two = (json.loads(p.with_suffix(".json").read_text()) for p in (one, two))
    assert record_two["ranks"] == 2 and record_one["ranks"] == 1
    # Each rank's share of the trained tensors, gradients and Adam's moments: whole under DDP, half under FSDP.
    share = record_two["trained_state_bytes_per_rank"] / record_one["trained_state_bytes_per_rank"]
    assert share == pytest.approx(0.5 if sharding else 1.0, abs=0.02)
    assert record_two["held_out"].keys() == record_one["held_out"].keys()     # scored as one process is (on
    # parameters that differ a little: test_eval_under_torchrun_gives_one_process_figures scores one graph)
    resumed = [*FINETUNE[:3], "4", *FINETUNE[4:-2], "--eval-tokens", "0", "--resume", "-o", str(two)]
    assert cli(capsys, *resumed)[0] == 0                         # two ranks' state, resumed by one process
                                                                # (unsharded: the state is saved whole)
    assert torch.load(f"{two}.train-state.pt", weights_only=True)["step"] == 4


@pytest.mark.slow
def test_eval_under_torchrun_gives_one_process_figures(capsys):
    args = ["eval", "gpt2-tiny", "--max-tokens", "512", "--context", "64"]
    run = _torchrun(2, *args)
    out, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-3000:]
    code, alone, _ = cli(capsys, *args)
    assert code == 0
    def figures(text: str) -> list[list[str]]:        # every column but the seconds each side took
        return [line.split()[:-2] for line in text.splitlines() if line.lstrip().startswith("8 ")]

    assert figures(alone) and figures(out) == figures(alone)


@pytest.mark.slow
def test_a_rank_that_dies_ends_the_others_in_seconds_with_one_line(tmp_path):
    run = _torchrun(2, "finetune", "gpt2-tiny", "--steps", "500", "--batch-size", "2", "--context", "32",
                    "--eval-tokens", "0", "-o", str(tmp_path / "g.safetensors"))
    seen = ""
    while "finetune:" not in seen:                          # training has started on rank 0
        char = run.stderr.read(1)
        assert char, seen
        seen += char
    time.sleep(1.0)
    workers = sorted(int(pid) for pid in subprocess.run(["pgrep", "-P", str(run.pid)], capture_output=True,
                                                        text=True).stdout.split())
    os.kill(workers[-1], signal.SIGKILL)
    killed = time.monotonic()
    try:
        _, err = run.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        run.kill()
        pytest.fail("the surviving rank hung after the other was killed")
    assert run.returncode != 0 and time.monotonic() - killed < 30
    ours = [line for line in (seen + err).replace("\r", "\n").splitlines() if line.startswith("nxcompile: error:")]
    assert len(ours) == 1 and "rank 0" in ours[0] and ("lost the other ranks" in ours[0] or "torchrun" in ours[0])


def test_a_batch_the_ranks_cannot_split_is_one_line_before_any_step(capsys):
    from nxcompile.compiler.targets import TARGETS
    from nxcompile.distributed import Ranks
    from nxcompile.errors import UsageError
    from nxcompile.models.finetune import FinetuneOptions, finetune

    with pytest.raises(UsageError, match="cannot be split evenly over 2 ranks"):
        finetune(None, None, None, TARGETS["loihi2"], FinetuneOptions(batch_size=3), ranks=Ranks(0, 2))


def test_fsdp_without_ranks_to_shard_over_is_one_line(capsys):
    code, _, err = cli(capsys, *FINETUNE, "--fsdp", "--eval-tokens", "0")
    assert_one_line_error(code, err, 2, "--fsdp", "torchrun")


def test_a_launch_without_its_rendezvous_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    code, _, err = cli(capsys, *FINETUNE, "--steps", "1")
    assert_one_line_error(code, err, 2, "MASTER_ADDR", "torchrun")
