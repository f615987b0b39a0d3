"""Where the graded method's loss comes from: each approximation switched off in turn.

    python bench/graded_study.py [--max-tokens 4096] [--small-tokens 512]

gpt2-tiny, converted with --method graded, quantised for loihi2-sim and scored in
Loihi's integers (`sim.fixed_point.run`, the Lava run's twin) against the ANN on
the same held-out tokens: all integer, then with 16-bit weights instead of 8, a
16-bit KV cache instead of 8, 24-bit activations instead of 16, and exp, GELU and
LayerNorm computed exactly (float64) instead of by their integer kernels, then all
of these at once. Then random:gpt2-small's shapes (random weights: no quality
figure), where the check is the integers against the same graph in float.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from nxcompile.compiler.convert import ConversionOptions, convert
from nxcompile.compiler.graph import GradedPrecision
from nxcompile.compiler.quantize import quantize
from nxcompile.compiler.targets import TARGETS
from nxcompile.models.corpus import calibration_windows, load_corpus, token_windows
from nxcompile.models.zoo import load_model
from nxcompile.sim import fixed_point, reference
from nxcompile.sim.evaluate import evaluate

GRADED = ConversionOptions(method="graded", timesteps=1)
ROWS = {
    "all integer (the method)": GradedPrecision(),
    "16-bit weights": GradedPrecision(weight_bits=16),
    "16-bit KV cache": GradedPrecision(kv_bits=16),
    "24-bit activations": GradedPrecision(activation_bits=24),
    "exact exp": GradedPrecision(exact=("exp",)),
    "exact GELU": GradedPrecision(exact=("gelu",)),
    "exact LayerNorm": GradedPrecision(exact=("norm",)),
    "all of these": GradedPrecision(weight_bits=16, kv_bits=16, activation_bits=24, exact=("exp", "gelu", "norm")),
}


def ablation(max_tokens: int) -> None:
    loaded = load_model("gpt2-tiny")
    context = loaded.config.n_positions
    graph = convert(loaded.model, GRADED, calibration_windows(loaded.tokenizer, context), "gpt2-tiny")
    held_out = token_windows(loaded.tokenizer, load_corpus().held_out, context, max_tokens)
    print(f"gpt2-tiny, --method graded, {held_out.numel()} held-out tokens, loihi2-sim's integers")
    print(f"| {'what changes':26} | SNN ppl | change | cos(logits) | cos(hidden) | top-1 |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, precision in ROWS.items():
        ev = evaluate(loaded.model, quantize(graph, TARGETS["loihi2-sim"], precision), held_out, 1,
                      simulate=fixed_point.run)
        print(f"| {label:26} | {ev.snn_perplexity:.2f} | {100 * ev.perplexity_change:+.2f} % | "
              f"{ev.logits_cosine:.5f} | {ev.mean_hidden_cosine:.5f} | {100 * ev.top1_agreement:.1f} % |", flush=True)
    print(f"ANN perplexity {ev.ann_perplexity:.2f}")


def small_shapes(tokens: int) -> None:
    loaded = load_model("random:gpt2-small")
    calibration = token_windows(loaded.tokenizer, load_corpus().train[:20_000], 256)[:2]
    started = time.perf_counter()
    graph = convert(loaded.model, GRADED, calibration, "random:gpt2-small")
    ids = token_windows(loaded.tokenizer, load_corpus().held_out, 256, tokens)
    floating = torch.cat([reference.run(graph, window[None], 1).logits for window in ids])
    fixed = torch.cat([fixed_point.run(quantize(graph, TARGETS["loihi2-sim"]), window[None], 1).logits
                       for window in ids])
    cosine = F.cosine_similarity(fixed.flatten(0, 1).double(), floating.flatten(0, 1).double(), dim=-1)
    print(f"random:gpt2-small (RANDOM WEIGHTS: shapes only), {ids.numel()} held-out tokens in windows of 256: "
          f"fixed-point logits against the float graph's: cos mean {float(cosine.mean()):.5f}, "
          f"min {float(cosine.min()):.5f}; top-1 agreement "
          f"{100 * float((fixed.argmax(-1) == floating.argmax(-1)).float().mean()):.1f} % "
          f"({time.perf_counter() - started:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--small-tokens", type=int, default=512)
    args = parser.parse_args()
    ablation(args.max_tokens)
    small_shapes(args.small_tokens)


if __name__ == "__main__":
    main()
