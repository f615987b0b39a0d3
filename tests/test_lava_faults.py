"""A Lava worker that dies mid-run, checked from outside the command: it ends within seconds with one
line naming the dead process, leaves no process behind and no shared-memory segment in /dev/shm."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.test_cli import nxcompile

SHM = Path("/dev/shm")


def _descendants(pid: int) -> list[int]:
    """Every live process below `pid`, oldest first (read from /proc, independently of Lava)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return sorted(found)


def _lava_workers(pid: int) -> list[int]:
    """The command's forked workers: its descendants less Python's resource tracker and the oldest
    fork, the shared-memory manager Lava starts before its workers."""
    forks = []
    for child in _descendants(pid):
        try:
            if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes():
                forks.append(child)
        except OSError:
            continue
    return forks[1:]


def _alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def _end_left_over(net: Path) -> list[int]:
    """Processes still running the command on `net` (found by its path, whatever their parent now),
    killed so that no test leaves them behind."""
    left = [int(pid) for pid in subprocess.run(["pgrep", "-f", str(net)], capture_output=True,
                                               text=True).stdout.split()]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


@pytest.fixture(scope="module")
def graded_net(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("faults") / "worker-fault-marker.net"
    assert nxcompile("export", "gpt2-tiny", "--method", "graded", "--target", "loihi2-sim",
                     "-o", str(path)).returncode == 0
    return path


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["starting the workers", "running"])
def test_a_killed_lava_worker_ends_the_command_in_seconds_with_one_line_and_leaves_nothing(graded_net, moment,
                                                                                           tmp_path):
    seed = random.randrange(1 << 30)
    chance = random.Random(seed)
    shm_before = set(os.listdir(SHM))
    stderr = tmp_path / "stderr.txt"         # a file: a left-over worker holding a pipe would hang the read
    with stderr.open("w") as sink:
        run = subprocess.Popen([sys.executable, "-m", "nxcompile.cli", "run", str(graded_net), "--prompt",
                                "HAMLET. To be, or not to be", "--max-new-tokens", "110"], cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=sink)
    deadline = time.monotonic() + 120
    workers = []
    while time.monotonic() < deadline and run.poll() is None:
        workers = _lava_workers(run.pid)
        if moment == "starting the workers" and len(workers) >= 3:
            break
        if moment == "running" and len(workers) > 20:
            time.sleep(chance.uniform(1.0, 4.0))          # compiled and started: somewhere in the ~11 s run
            workers = _lava_workers(run.pid)
            break
        time.sleep(0.05)
    assert run.poll() is None and workers, f"the run ended before a worker could be killed (seed {seed})"
    seen = _descendants(run.pid)
    os.kill(chance.choice(workers), signal.SIGKILL)
    killed_at = time.monotonic()
    try:
        code = run.wait(timeout=30)
    except subprocess.TimeoutExpired:
        run.kill()
        _end_left_over(graded_net)
        pytest.fail(f"the command hung after a worker was killed while {moment} (seed {seed})")
    took = time.monotonic() - killed_at
    lines = [line for line in stderr.read_text().replace("\r", "\n").splitlines() if line.startswith("nxcompile:")]
    assert code == 1, (code, lines, seed)
    assert len(lines) == 1 and "killed by SIGKILL" in lines[0] and "Lava" in lines[0], (lines, seed)
    assert took < 15, f"{took:.1f} s to notice (seed {seed})"
    time.sleep(1)
    leaked = {name for name in set(os.listdir(SHM)) - shm_before if name.startswith("psm_")}
    assert not leaked, f"{len(leaked)} shared-memory segments left in /dev/shm (seed {seed})"
    left = sorted({pid for pid in seen if _alive(pid)} | set(_end_left_over(graded_net)))
    assert not left, f"{len(left)} process(es) outlived the command by a second (seed {seed})"

def test_a_conversion_estimated_above_the_memory_available_is_refused_before_loading(monkeypatch, tmp_path, capsys):
    from tests.test_cli import assert_one_line_error, cli

    out = tmp_path / "graph.safetensors"
    monkeypatch.setenv("NXCOMPILE_MEMORY_GIB", "2")
    started = time.monotonic()
    code, _, err = cli(capsys, "convert", "random:gpt2-xl", "-o", str(out))
    assert_one_line_error(code, err, 2, "converting random:gpt2-xl", "GiB", "2.0 GiB NXCOMPILE_MEMORY_GIB", "--force")
    assert time.monotonic() - started < 5 and not out.exists()      # refused before the 1.5B weights were built
    monkeypatch.setenv("NXCOMPILE_MEMORY_GIB", "0.01")
    assert cli(capsys, "convert", "gpt2-tiny", "-o", str(out), "--force")[0] == 0 and out.exists()


def test_a_lava_build_estimated_above_the_memory_available_is_refused_before_any_worker(
        graded_net, monkeypatch, capsys):
    from nxcompile.backends.lava_sim import lava_peak_bytes
    from nxcompile.compiler.export import load_net
    from tests.test_cli import assert_one_line_error, cli

    needed = lava_peak_bytes(load_net(graded_net)[0])
    monkeypatch.setenv("NXCOMPILE_MEMORY_GIB", str(needed / 2 / (1 << 30)))
    code, out, err = cli(capsys, "run", str(graded_net), "--prompt", "To be")
    assert_one_line_error(code, err, 2, "in Lava", "--force")
    assert "Lava:" not in err                                      # nothing was compiled or started
