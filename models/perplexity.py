"""Held-out perplexity of a causal language model, the project's quality yardstick."""
from __future__ import annotations

import math

import torch


def token_windows(token_ids: torch.Tensor, context: int) -> list[torch.Tensor]:
    """Non-overlapping windows of at most `context` tokens (each window is scored alone)."""
    return [token_ids[i:i + context] for i in range(0, len(token_ids) - 1, context)
            if len(token_ids[i:i + context]) > 1]


@torch.no_grad()
def perplexity(model: torch.nn.Module, token_ids: torch.Tensor, context: int,
               max_tokens: int | None = None) -> float:
    """exp(mean next-token NLL) over `token_ids`, scored in independent windows.

    Windows do not overlap, so every token is predicted once, from at most
    `context - 1` tokens of history; this is the same protocol for the ANN and
    every spiking variant, which is what makes their figures comparable.
    """
    if max_tokens is not None:
        token_ids = token_ids[:max_tokens]
    model.eval()
    total_nll, total_count = 0.0, 0
    for window in token_windows(token_ids, context):
        logits = model(window[None, :-1]).logits[0]
        nll = torch.nn.functional.cross_entropy(logits.float(), window[1:], reduction="sum")
        total_nll += float(nll)
        total_count += len(window) - 1
    return math.exp(total_nll / total_count)
