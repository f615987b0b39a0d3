"""Peak memory of a conversion and of a Lava run, measured: what nxcompile's refusals are sized by.

    python bench/memory_peaks.py [--models gpt2-tiny,random:gpt2-small,random:gpt2-medium]
                                 [--methods neurtransformer,graded] [--lava]

Conversion: `nxcompile convert MODEL --method M` in a child process, its peak resident set
(its rusage from wait4), beside the estimate `compiler.convert.conversion_peak_bytes`
gives before loading anything. Lava (`--lava`): `nxcompile run` of the exported `.net` file
on a 4-token prompt, the machine's MemAvailable sampled every 0.1 s (Lava's workers are
forked, so no one process's resident set tells), its largest drop beside
`backends.lava_sim.lava_peak_bytes`.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nxcompile.compiler.convert import conversion_peak_bytes
from nxcompile.memory import GIB, meminfo_available
from nxcompile.models.zoo import RANDOM_PREFIX, zoo_entry

COMMAND = [sys.executable, "-m", "nxcompile.cli"]


def converted_peak(spec: str, method: str, out: Path) -> int:
    """The peak resident set of one `nxcompile convert` (its own rusage, from wait4)."""
    child = subprocess.Popen(COMMAND + ["convert", spec, "--method", method, "--force", "-o", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"nxcompile convert {spec} --method {method} failed ({child.returncode})")
    return usage.ru_maxrss * 1024


def lava_estimate(net: Path) -> int:
    """`lava_peak_bytes` of the file, computed in a child, so this process holds no model: a child's
    peak resident set can start at its parent's (a run that held the programs here read a 7.6 GiB
    conversion at 14.1)."""
    code = ("import sys, nxcompile; from nxcompile.backends.lava_sim import lava_peak_bytes; "
            "from nxcompile.compiler.export import load_net; print(lava_peak_bytes(load_net(sys.argv[1])[0]))")
    return int(subprocess.run([sys.executable, "-c", code, str(net)], check=True, capture_output=True,
                              text=True).stdout)


def lava_peak(net: Path) -> int:
    idle = meminfo_available()
    run = subprocess.Popen(COMMAND + ["run", str(net), "--prompt", "To be, or not", "--max-new-tokens", "1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lowest = idle
    while run.poll() is None:
        lowest = min(lowest, meminfo_available())
        time.sleep(0.1)
    if run.returncode:
        raise SystemExit(f"nxcompile run {net} failed ({run.returncode}): its peak would mean nothing")
    return idle - lowest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="gpt2-tiny,random:gpt2-small,random:gpt2-medium")
    parser.add_argument("--methods", default="neurtransformer,graded")
    parser.add_argument("--lava", action="store_true")
    args = parser.parse_args()
    print("| model | method | conversion peak, measured | estimated | Lava run peak, measured | estimated |")
    print("|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for spec in args.models.split(","):
            config = zoo_entry(spec.removeprefix(RANDOM_PREFIX)).config()
            for method in args.methods.split(","):
                graph = Path(folder) / "graph.safetensors"
                measured = converted_peak(spec, method, graph)
                row = f"| {spec} | {method} | {measured / GIB:.2f} GiB | " \
                      f"{conversion_peak_bytes(config, method) / GIB:.2f} GiB |"
                if args.lava:
                    net = Path(folder) / "model.net"
                    subprocess.run(COMMAND + ["export", spec, "--method", method, "--raw", "--target", "loihi2-sim",
                                              "-o", str(net)], check=True, capture_output=True)
                    row += f" {lava_peak(net) / GIB:.2f} GiB | {lava_estimate(net) / GIB:.2f} GiB |"
                print(row + ("" if args.lava else " | |"), flush=True)


if __name__ == "__main__":
    main()
