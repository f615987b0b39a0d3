"""Held-out perplexity of a causal language model, the project's quality yardstick.

One scoring protocol for every model and every spiking variant: the text is cut
into non-overlapping windows of `context` tokens (a shorter text is one
window), each window is scored alone, every token but a window's first is
predicted once. `nxcompile perplexity` and `nxcompile eval` both use it, so
their ANN figures agree on the same tokens.
"""
from __future__ import annotations

import math

import torch

from nxcompile.errors import UsageError


def windows(token_ids: torch.Tensor, context: int, max_tokens: int | None = None) -> torch.Tensor:
    """[N, context] full windows of the text (one shorter window if the text is short)."""
    if max_tokens is not None:
        token_ids = token_ids[:max_tokens]
    if len(token_ids) < 2:
        raise UsageError(f"{len(token_ids)} token(s) to score: scoring needs at least 2; give more tokens "
                         f"(--max-tokens, --eval-tokens, --calibration-tokens) or a longer text")
    if len(token_ids) <= context:
        return token_ids[None]
    usable = len(token_ids) // context * context
    return token_ids[:usable].reshape(-1, context)


@torch.no_grad()
def perplexity(model: torch.nn.Module, token_ids: torch.Tensor, context: int,
               max_tokens: int | None = None, batch_size: int = 8) -> float:
    """exp(mean next-token NLL) over the windows of `token_ids`."""
    model.eval()
    total_nll, total_count = 0.0, 0
    for batch in windows(token_ids, context, max_tokens).split(batch_size):
        logits = model(batch).logits[:, :-1]
        total_nll += float(torch.nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="sum"))
        total_count += batch[:, 1:].numel()
    return math.exp(total_nll / total_count)
