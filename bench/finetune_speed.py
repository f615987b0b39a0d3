"""Fine-tuning cost per step at T = 8: seconds per step, tokens/s and peak memory, per model and device.

    python bench/finetune_speed.py [--models gpt2-tiny,random:gpt2-small] [--devices cpu,cuda]
                                   [--steps 3] [--batch-size 1] [--train-context 128] [--ranks 1]
                                   [--activations kept,recomputed]

Each row is one `nxcompile finetune MODEL --scope all` in a child process (under
`torchrun --nproc-per-node R` with --ranks R > 1): its own record's training seconds
(the first step included: it is where the autograd graph is first built), its peak
resident set (wait4; the main rank's with torchrun) and, on CUDA, the peak GPU memory
torch allocated (recorded by the command). A device this machine lacks is skipped with
a line saying so. `--activations recomputed` runs with `--recompute-activations` (activation
checkpointing), so the two rows show what it saves and what it costs.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def run(model: str, device: str, activations: str, args: argparse.Namespace, out: Path) -> dict:
    command = ["finetune", model, "--scope", "all", "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--train-context", str(args.train_context), "--eval-tokens", "0", "--device", device, "-o", str(out)]
    command += ["--recompute-activations"] if activations == "recomputed" else []
    launcher = [sys.executable, "-m", "nxcompile"] if args.ranks == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.ranks), "-m", "nxcompile"]
    child = subprocess.Popen(launcher + command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) == -signal.SIGKILL:
        return {"killed": usage.ru_maxrss / 2**20}          # the kernel's out-of-memory killer, as a rule
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"nxcompile {' '.join(command)} failed")
    record = json.loads(out.with_suffix(".json").read_text())
    seconds = record["train_seconds_this_run"] / args.steps
    return {"s_step": seconds, "tokens_s": args.batch_size * args.train_context / seconds,
            "rss_gib": usage.ru_maxrss / 2**20, "cuda_gib": record.get("peak_cuda_memory_gib"),
            "threads": record["torch_threads"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="gpt2-tiny,random:gpt2-small")
    parser.add_argument("--devices", default="cpu,cuda")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--train-context", type=int, default=128)
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument("--activations", default="kept,recomputed",
                        help="kept (autograd keeps every node's internals), recomputed (activation checkpointing)")
    args = parser.parse_args()
    unknown = set(args.activations.split(",")) - {"kept", "recomputed"}
    if unknown:
        parser.error(f"--activations takes kept and/or recomputed, not {', '.join(sorted(unknown))}")
    print(f"| model | device | ranks | activations | s/step ({args.batch_size} x {args.train_context} tokens, T = 8) | "
          f"tokens/s | peak RSS | peak CUDA memory | torch threads |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for device in args.devices.split(","):
            if device.startswith("cuda") and not torch.cuda.is_available():
                print(f"(no CUDA device here: {device} skipped)")
                continue
            for model in args.models.split(","):
                for activations in args.activations.split(","):
                    r = run(model, device, activations, args, Path(folder) / "tuned.safetensors")
                    if "killed" in r:
                        print(f"| {model} | {device} | {args.ranks} | {activations} | killed by SIGKILL at "
                              f"{r['killed']:.2f} GiB (out of memory) | | | | |", flush=True)
                        continue
                    cuda = f"{r['cuda_gib']:.2f} GiB" if r["cuda_gib"] is not None else ""
                    print(f"| {model} | {device} | {args.ranks} | {activations} | {r['s_step']:.2f} | "
                          f"{r['tokens_s']:.0f} | {r['rss_gib']:.2f} GiB | {cuda} | {r['threads']} |", flush=True)


if __name__ == "__main__":
    main()
