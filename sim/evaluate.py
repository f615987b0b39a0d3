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
from nxcompile.distributed import ONE, Ranks
from nxcompile.errors import UsageError
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

    def as_record(self) -> dict:
        """The figures as a fine-tuning record keeps them (rounded)."""
        return {"tokens": self.tokens, "ann_ppl": round(self.ann_perplexity, 3),
                "snn_ppl": round(self.snn_perplexity, 3), "ppl_change": round(self.perplexity_change, 5),
                "cos_logits": round(self.logits_cosine, 5), "cos_hidden": round(self.mean_hidden_cosine, 5),
                "top1": round(self.top1_agreement, 5)}

    def row(self) -> str:
        """One line of the comparison table (TABLE_HEADER)."""
        return (f"{self.timesteps:>4} {self.ann_perplexity:>9.2f} {self.snn_perplexity:>9.4g} "
                f"{100 * self.perplexity_change:>+8.3g}% {self.logits_cosine:>8.4f} {self.mean_hidden_cosine:>8.4f} "
                f"{100 * self.top1_agreement:>6.1f}% {self.mean_spike_rate:>6.3f} "
                f"{self.ann_seconds:>7.1f} {self.snn_seconds:>7.1f}")

    def details(self) -> str:
        """Per block, the residual stream's cosine to the ANN; per population, its spike rate."""
        lines = ["\nper block: cosine similarity of the residual stream to the ANN"]
        lines += [f"  block {block:>2}  {cosine:.4f}" for block, cosine in enumerate(self.hidden_cosine)]
        lines.append("spike rate per population (spikes per neuron per step)")
        lines += [f"  {name:<20} {rate:.3f}" for name, rate in self.spike_rate.items()]
        return "\n".join(lines)


TABLE_HEADER = (f"{'T':>4} {'ANN ppl':>9} {'SNN ppl':>9} {'d ppl':>9} {'cos(lgt)':>8} "
                f"{'cos(hid)':>8} {'top-1':>7} {'rate':>6} {'ANN s':>7} {'SNN s':>7}")


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


def _top1_matches(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.argmax(-1) == b.argmax(-1)).flatten()


def logit_agreement(snn_logits: torch.Tensor, ann_logits: torch.Tensor) -> tuple[float, float]:
    """(mean cosine of the logits, top-1 agreement) over every token of [..., vocab] logits."""
    return (float(_token_cosine(snn_logits, ann_logits).mean()),
            float(_top1_matches(snn_logits, ann_logits).double().mean()))


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
        self.agree += float(_top1_matches(snn.logits, ann_logits).sum())
        for b, ann_h in enumerate(ann_hidden):
            self.hidden_cos[b] += float(_token_cosine(snn.hidden[b], ann_h).sum())


def _summed_over_ranks(totals: _Totals, rate_sums: dict, counts: dict, ranks: Ranks):
    """Every rank's sums added up (each rank scored the same graph, so the names agree)."""
    names = sorted(rate_sums)
    flat = ranks.sum([totals.nll_ann, totals.nll_snn, totals.logit_cos, totals.agree, totals.tokens,
                      totals.predictions, *totals.hidden_cos, *(rate_sums[k] for k in names),
                      *(counts[k] for k in names)])
    summed = _Totals(len(totals.hidden_cos))
    (summed.nll_ann, summed.nll_snn, summed.logit_cos, summed.agree, tokens, predictions), rest = flat[:6], flat[6:]
    summed.tokens, summed.predictions = int(tokens), int(predictions)
    blocks = len(totals.hidden_cos)
    summed.hidden_cos = rest[:blocks]
    rates, spikes = rest[blocks:blocks + len(names)], rest[blocks + len(names):]
    return summed, dict(zip(names, rates)), dict(zip(names, spikes))


@torch.no_grad()
def evaluate(model: GPT2LMHeadModel, spiking: SpikingGraph, text_windows: torch.Tensor,
             timesteps: int | None, batch_size: int = 4, progress=None,
             simulate: Callable[..., reference.RunResult] = reference.run, ranks: Ranks = ONE) -> Evaluation:
    """Score the ANN and the spiking graph at `timesteps` on the same windows. `simulate` is the
    executor: the float reference, or `sim.fixed_point.run` for what Loihi computes. Under torchrun
    (`ranks`) each rank scores its shard of the windows and the sums are reduced: the same figures
    as one process, to float rounding."""
    if len(text_windows) < ranks.world:
        raise UsageError(f"{len(text_windows)} windows cannot be shared by {ranks.world} ranks; score more "
                         f"tokens or start fewer ranks")
    model.eval()
    totals = _Totals(len(spiking.meta["block_outputs"]))
    rate_sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    ann_seconds = snn_seconds = 0.0
    batches = ranks.shard(text_windows).split(batch_size)
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
    if ranks.distributed:
        totals, rate_sums, counts = _summed_over_ranks(totals, rate_sums, counts, ranks)
    n = totals.tokens
    return Evaluation(
        timesteps=timesteps, tokens=n,
        ann_perplexity=math.exp(totals.nll_ann / totals.predictions),
        snn_perplexity=math.exp(totals.nll_snn / totals.predictions),
        hidden_cosine=[c / n for c in totals.hidden_cos], logits_cosine=totals.logit_cos / n,
        top1_agreement=totals.agree / n, spike_rate={k: v / n for k, v in rate_sums.items()},
        ann_seconds=ann_seconds, snn_seconds=snn_seconds, spike_count=counts)


def plot_sweep(results: list[Evaluation], path, title: str) -> None:
    """Perplexity ratio and similarity to the ANN against T (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nxcompile.files import save_figure

    steps = [r.timesteps for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(steps, [r.snn_perplexity / r.ann_perplexity for r in results], "o-")
    left.set(xlabel="time steps per token T", ylabel="perplexity SNN / ANN", yscale="log")
    right.plot(steps, [r.logits_cosine for r in results], "o-", label="logits")
    right.plot(steps, [r.mean_hidden_cosine for r in results], "s-", label="hidden (mean over blocks)")
    right.plot(steps, [r.top1_agreement for r in results], "^-", label="top-1 agreement")
    right.set(xlabel="time steps per token T", ylabel="similarity to ANN")
    right.legend()
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.minorticks_off()
        axis.set_xticks(steps, [str(s) for s in steps])
        axis.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
