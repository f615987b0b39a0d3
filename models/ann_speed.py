"""The original model's own speed, measured: transformers' GPT2LMHeadModel with its KV cache, batch 1.

Prefill is the prompt in one forward pass; decode is one token at a time from the
prompt's cache (greedy). On a CUDA device the energy comes from NVML's counter of
the GPU's total energy; a CPU here has no energy counter one can read (no RAPL),
so none is reported rather than a guessed one.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch

ENERGY_WINDOW_S = 5.0
"""Seconds of repeated runs one energy figure spans. NVML's counter advances in steps, not continuously:
on an H200 it read no change at all across a 10 ms prefill of GPT-2 small, so one run's difference can
be zero; over 5 s of runs the counter's steps are a small part of what it counts."""


@dataclass(frozen=True)
class AnnSpeed:
    device: str
    threads: int
    prompt_tokens: int
    prefill_tokens_s: float
    decode_tokens_s: float
    decode_tokens: int
    prefill_mj_per_token: float | None = None      # NVML, on a GPU only
    decode_mj_per_token: float | None = None

    def describe(self) -> str:
        energy = ("no energy counter on this CPU (no RAPL): no energy figure" if self.prefill_mj_per_token is None
                  else f"{self.prefill_mj_per_token:.3f} / {self.decode_mj_per_token:.3f} mJ per token (NVML, "
                       f"over {ENERGY_WINDOW_S:.0f} s of repeated runs each)")
        return (f"prefill {self.prefill_tokens_s:,.1f} tokens/s ({self.prompt_tokens}-token prompt at once), decode "
                f"{self.decode_tokens_s:,.1f} tokens/s ({self.decode_tokens} tokens, KV cache), batch 1, "
                f"{self.device}, {self.threads} torch threads; {energy}")


def _energy_counter(device: torch.device):
    """A function returning the GPU's total energy in mJ (NVML), or None on a CPU / without pynvml."""
    if device.type != "cuda":
        return None
    try:
        import pynvml
    except ImportError:
        return None
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
    return lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)


def _synchronized(run, device: torch.device):
    """`run` that returns only once the device has finished its work (CUDA launches are asynchronous)."""
    def synchronized() -> None:
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return synchronized


def _best_seconds(run, repeats: int) -> float:
    """The best wall seconds of `repeats` runs: the least disturbed by the rest of the machine."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def _mj_per_run(run, energy, window_s: float = ENERGY_WINDOW_S) -> float:
    """The energy (mJ) of one run of `run`, from `energy`'s counter over as many runs as fill `window_s`."""
    runs, before, started = 0, energy(), time.perf_counter()
    while runs == 0 or time.perf_counter() - started < window_s:
        run()
        runs += 1
    return (energy() - before) / runs


@torch.no_grad()
def measure_ann(model, prompt_ids: list[int], decode_tokens: int = 16, device: str = "cpu",
                repeats: int = 3) -> AnnSpeed:
    """Prefill and decode speed (and, on a GPU, energy) of `model` on `prompt_ids`."""
    target = torch.device(device)
    model = model.to(target).eval()
    ids = torch.tensor([prompt_ids], device=target)
    energy = _energy_counter(target)
    prefill = _synchronized(lambda: model(ids, use_cache=True), target)
    prefill()                                                   # warm-up
    prefill_s = _best_seconds(prefill, repeats)

    def prefill_and_decode() -> None:
        out = model(ids, use_cache=True)
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(decode_tokens):
            out = model(token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)

    both = _synchronized(prefill_and_decode, target)
    decode_s = max(_best_seconds(both, repeats) - prefill_s, 1e-9)
    speed = AnnSpeed(str(target), torch.get_num_threads(), len(prompt_ids), len(prompt_ids) / prefill_s,
                     decode_tokens / decode_s, decode_tokens)
    if energy is None:
        return speed
    prefill_mj = _mj_per_run(prefill, energy)
    return replace(speed, prefill_mj_per_token=prefill_mj / len(prompt_ids),
                   decode_mj_per_token=(_mj_per_run(both, energy) - prefill_mj) / decode_tokens)
