"""What the spiking version loses against the original, on the same text.

Both models score the same non-overlapping windows of the text. Reported:
perplexity of each and the relative change, cosine similarity of every
block's output (residual stream) and of the logits, averaged over tokens,
top-1 next-token agreement, spike rate per spiking node, and wall time.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from nxcompile.compiler.graph import SpikingGraph
from nxcompile.sim import reference


@dataclass
class Evaluation:
    timesteps: int | None
    tokens: int
    ann_perplexity: float
    snn_perplexity: float
    hidden_cosine: list[float]
    logits_cosine: float
    top1_agreement: float
    spike_rate: dict[str, float]
    ann_seconds: float
    snn_seconds: float
    spike_count: dict[str, float] = field(default_factory=dict)

    @property
    def perplexity_change(self) -> float:
        return self.snn_perplexity / self.ann_perplexity - 1.0

    @property
    def mean_hidden_cosine(self) -> float:
        return sum(self.hidden_cosine) / len(self.hidden_cosine)

    @property
    def mean_spike_rate(self) -> float:
        rates = list(self.spike_rate.values())
        return sum(rates) / len(rates) if rates else 0.0


@torch.no_grad()
def ann_forward(model: GPT2LMHeadModel, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and each block's output (residual stream, before the final norm)."""
    outputs: list[torch.Tensor] = []
    hooks = [block.register_forward_hook(
        lambda module, args, out: outputs.append(out[0] if isinstance(out, tuple) else out))
        for block in model.transformer.h]
    try:
        logits = model(ids).logits
    finally:
        for hook in hooks:
            hook.remove()
    return logits, outputs


def _token_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.flatten(0, -2).double(), b.flatten(0, -2).double(), dim=-1)


class _Totals:
    """Running sums over batches, so long texts never sit in memory at once."""

    def __init__(self, blocks: int):
        self.nll_ann = self.nll_snn = self.logit_cos = self.agree = 0.0
        self.hidden_cos = [0.0] * blocks
        self.tokens = self.predictions = 0

    def add(self, ids, ann_logits, ann_hidden, snn: reference.RunResult):
        targets = ids[:, 1:].flatten()
        self.nll_ann += float(F.cross_entropy(ann_logits[:, :-1].flatten(0, 1).float(), targets, reduction="sum"))
        self.nll_snn += float(F.cross_entropy(snn.logits[:, :-1].flatten(0, 1).float(), targets, reduction="sum"))
        self.predictions += targets.numel()
        self.tokens += ids.numel()
        self.logit_cos += float(_token_cosine(snn.logits, ann_logits).sum())
        self.agree += float((snn.logits.argmax(-1) == ann_logits.argmax(-1)).sum())
        for b, ann_h in enumerate(ann_hidden):
            self.hidden_cos[b] += float(_token_cosine(snn.hidden[b], ann_h).sum())


@torch.no_grad()
def evaluate(model: GPT2LMHeadModel, spiking: SpikingGraph, text_windows: torch.Tensor,
             timesteps: int | None, batch_size: int = 4, progress=None,
             simulate: Callable[..., reference.RunResult] = reference.run) -> Evaluation:
    """Score the ANN and the spiking graph at `timesteps` on the same windows. `simulate` is the
    executor: the float reference, or `sim.fixed_point.run` for what Loihi computes."""
    model.eval()
    totals = _Totals(len(spiking.meta["block_outputs"]))
    rate_sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    ann_seconds = snn_seconds = 0.0
    batches = text_windows.split(batch_size)
    for ids in (progress(batches) if progress else batches):
        started = time.perf_counter()
        ann_logits, ann_hidden = ann_forward(model, ids)
        ann_seconds += time.perf_counter() - started
        snn = simulate(spiking, ids, timesteps)
        snn_seconds += snn.wall_seconds
        totals.add(ids, ann_logits, ann_hidden, snn)
        for name, rate in snn.spike_rate.items():
            rate_sums[name] = rate_sums.get(name, 0.0) + rate * ids.numel()
            counts[name] = counts.get(name, 0.0) + snn.spike_count[name]
    n = totals.tokens
    return Evaluation(
        timesteps=timesteps, tokens=n,
        ann_perplexity=math.exp(totals.nll_ann / totals.predictions),
        snn_perplexity=math.exp(totals.nll_snn / totals.predictions),
        hidden_cosine=[c / n for c in totals.hidden_cos], logits_cosine=totals.logit_cos / n,
        top1_agreement=totals.agree / n, spike_rate={k: v / n for k, v in rate_sums.items()},
        ann_seconds=ann_seconds, snn_seconds=snn_seconds, spike_count=counts)
