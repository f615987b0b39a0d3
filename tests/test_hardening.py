"""Faults and determinism across the CLI: damaged or inconsistent `.net` files, interrupted
writes and runs, byte-identical outputs."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from nxcompile.errors import UsageError
from nxcompile.files import write_atomically
from tests.conftest import REPO_ROOT
from tests.test_cli import assert_one_line_error, cli, nxcompile


def _damaged(small_net, tmp_path, damage) -> str:
    path = tmp_path / "damaged.net"
    shutil.copy(small_net, path)
    with h5py.File(path, "r+") as handle:
        damage(handle)
    return str(path)


def _narrow_a_weight(handle) -> None:
    """A Dense layer's weights lose an input column: its input now sends one value too many."""
    for group in handle["layer"].values():
        fields = json.loads(group["nx_fields"][()])
        if "weight" in fields and group["type"][()][0] == b"dense":
            key = fields["weight"]["tensor"]
            weight = group["nx"][key][()]
            del group["nx"][key]
            group["nx"][key] = weight[:, 1:]
            return
    raise AssertionError("no dense layer")


def _unknown_type(handle) -> None:
    del handle["layer/2/type"]
    handle["layer/2/type"] = np.array([b"warp"], dtype="S10")


def _dangling_input(handle) -> None:
    del handle["layer/2/nx_inputs"]
    handle["layer/2/nx_inputs"] = json.dumps({"x": "nowhere"})


@pytest.mark.parametrize("damage, needle", [(_narrow_a_weight, "inconsistent"), (_unknown_type, "unknown type"),
                                            (_dangling_input, "nowhere")])
def test_inconsistent_or_unknown_layers_are_one_line_through_the_cli(small_net, tmp_path, damage, needle, capsys):
    path = _damaged(small_net, tmp_path, damage)
    for command in (["inspect", path], ["run", path, "--prompt", "x"], ["energy", path]):
        assert_one_line_error(*cli(capsys, *command)[::2], 2, needle)


@pytest.mark.parametrize("keep", [0, 100, 4096])
def test_truncated_net_files_are_one_line_through_the_cli(small_net, tmp_path, keep, capsys):
    path = tmp_path / "cut.net"
    path.write_bytes(small_net.read_bytes()[:keep])
    assert_one_line_error(*cli(capsys, "run", str(path), "--prompt", "x")[::2], 2, str(path))


def test_an_interrupted_write_leaves_no_file(tmp_path):
    target = tmp_path / "out.net"

    def write(tmp):
        tmp.write_bytes(b"half a file")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, write, "unused")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UsageError):
        write_atomically(target, lambda tmp: (_ for _ in ()).throw(OSError(28, "No space left on device")),
                         "free some space")
    assert list(tmp_path.iterdir()) == []


def test_export_is_byte_identical_run_to_run_and_process_to_process(tmp_path, capsys):
    command = ("export", "gpt2-tiny", "--target", "loihi2-sim", "-T", "2", "-o")
    assert nxcompile(*command, str(tmp_path / "a.net")).returncode == 0
    assert cli(capsys, *command, str(tmp_path / "b.net"))[0] == 0
    assert (tmp_path / "a.net").read_bytes() == (tmp_path / "b.net").read_bytes()


def test_evaluation_numbers_repeat_exactly(capsys):
    runs = [cli(capsys, "eval", "gpt2-tiny", "-T", "2", "--max-tokens", "128")[1] for _ in range(2)]
    # every column but the last two, the ANN's and the SNN's wall seconds
    tables = [[line.split()[:-2] for line in out.splitlines() if "ppl" in line.lower() or "%" in line]
              for out in runs]
    assert tables[0] and tables[0] == tables[1]


@pytest.mark.slow
def test_ctrl_c_during_a_lava_run_stops_lava_and_leaves_no_process(tmp_path):
    path = tmp_path / "interrupted-run-marker.net"
    assert nxcompile("export", "gpt2-tiny", "--target", "loihi2-sim", "-o", str(path)).returncode == 0
    run = subprocess.Popen([sys.executable, "-m", "nxcompile.cli", "run", str(path), "--prompt", "HAMLET. To be",
                            "--max-new-tokens", "60"], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    seen = ""
    while "Lava:" not in seen:                      # the first token is running in Lava
        char = run.stderr.read(1)
        assert char, seen
        seen += char
    time.sleep(0.5)                                 # Lava is still compiling: the hardest moment to stop
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=60) == 130
    assert "nxcompile: interrupted" in run.stderr.read()
    time.sleep(1)
    left = subprocess.run(["pgrep", "-f", path.name], capture_output=True, text=True).stdout
    assert left == "", f"Lava processes left running: {left}"


def test_a_pickled_input_array_is_refused_not_executed(shared_netx, tmp_path, capsys):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"code": "would run on unpickling"}], dtype=object), allow_pickle=True)
    result = cli(capsys, "run", str(shared_netx / "pilotnet_sdnn" / "network.net"), "--input", str(path))
    assert_one_line_error(*result[::2], 2, "cannot read")
