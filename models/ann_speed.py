"""The original model's own speed, measured: transformers' GPT2LMHeadModel with its KV cache, batch 1.

Prefill is the prompt in one forward pass; decode is one token at a time from the
prompt's cache (greedy). On a CUDA device the energy comes from NVML's counter of
the GPU's total energy; a CPU here has no energy counter one can read (no RAPL),
so none is reported rather than a guessed one.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch


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
                  else f"{self.prefill_mj_per_token:.3f} / {self.decode_mj_per_token:.3f} mJ per token (NVML)")
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


def _timed(run, device: torch.device, energy, repeats: int) -> tuple[float, float | None]:
    """The best wall seconds of `repeats` runs, and the energy (mJ) of that run where counted."""
    best, best_energy = float("inf"), None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        before = energy() if energy else None
        started = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
        if seconds < best:
            best, best_energy = seconds, (energy() - before) if energy else None
    return best, best_energy


@torch.no_grad()
def measure_ann(model, prompt_ids: list[int], decode_tokens: int = 16, device: str = "cpu",
                repeats: int = 3) -> AnnSpeed:
    """Prefill and decode speed (and, on a GPU, energy) of `model` on `prompt_ids`."""
    target = torch.device(device)
    model = model.to(target).eval()
    ids = torch.tensor([prompt_ids], device=target)
    energy = _energy_counter(target)
    model(ids, use_cache=True)                                  # warm-up
    prefill_s, prefill_mj = _timed(lambda: model(ids, use_cache=True), target, energy, repeats)

    def decode() -> None:
        out = model(ids, use_cache=True)
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(decode_tokens):
            out = model(token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)

    total_s, total_mj = _timed(decode, target, energy, repeats)
    decode_s = max(total_s - prefill_s, 1e-9)
    return AnnSpeed(str(target), torch.get_num_threads(), len(prompt_ids), len(prompt_ids) / prefill_s,
                    decode_tokens / decode_s, decode_tokens,
                    prefill_mj / len(prompt_ids) if prefill_mj is not None else None,
                    (total_mj - prefill_mj) / decode_tokens if total_mj is not None else None)
