"""SpikeDecoder's design choices on gpt2-tiny, each against the ANN on the same held-out tokens.

    python bench/spikedecoder_study.py [-T 8] [--max-tokens 4096]

One row per variant (embedding, norm, residual), at T steps and in the rate
limit (T -> infinity), so rate quantisation and the variant's own loss show apart.
"""
from __future__ import annotations

import argparse

import torch

from nxcompile.compiler.convert import ConversionOptions, convert
from nxcompile.models.corpus import load_corpus
from nxcompile.models.perplexity import windows
from nxcompile.models.zoo import load_model
from nxcompile.sim.evaluate import evaluate

VARIANTS = [  # (embedding, norm, residual)
    ("rate", "layernorm", "spiking"),
    ("binary", "layernorm", "spiking"),
    ("graded", "layernorm", "spiking"),
    ("rate", "static", "spiking"),
    ("rate", "none", "spiking"),
    ("rate", "layernorm", "graded"),
    ("rate", "static", "graded"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-T", "--timesteps", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=4096)
    args = parser.parse_args()
    loaded = load_model("gpt2-tiny")
    corpus = load_corpus()
    context = loaded.config.n_positions

    def ids(text: str) -> torch.Tensor:
        return torch.tensor(loaded.tokenizer(text)["input_ids"])

    calibration = windows(ids(corpus.train[:200_000]), context)[:8]
    held_out = windows(ids(corpus.held_out), context, args.max_tokens)
    print(f"gpt2-tiny, {held_out.numel()} held-out tokens; ppl ratio = SNN / ANN perplexity")
    print(f"{'embedding':<9} {'norm':<9} {'residual':<8} | {'T':>3} {'ppl ratio':>9} {'cos(lgt)':>8} "
          f"{'cos(hid)':>8} {'top-1':>6} | rate limit: {'ppl ratio':>9} {'cos(hid)':>8}")
    for embedding, norm, residual in VARIANTS:
        options = ConversionOptions(method="spikedecoder", embedding=embedding, norm=norm,
                                    residual=residual)
        graph = convert(loaded.model, options, calibration, "gpt2-tiny")
        at_t = evaluate(loaded.model, graph, held_out, args.timesteps)
        limit = evaluate(loaded.model, graph, held_out, None)
        print(f"{embedding:<9} {norm:<9} {residual:<8} | {args.timesteps:>3} "
              f"{at_t.snn_perplexity / at_t.ann_perplexity:>9.2f} {at_t.logits_cosine:>8.3f} "
              f"{at_t.mean_hidden_cosine:>8.3f} {100 * at_t.top1_agreement:>5.1f}% | "
              f"{'':>11} {limit.snn_perplexity / limit.ann_perplexity:>9.2f} "
              f"{limit.mean_hidden_cosine:>8.3f}", flush=True)


if __name__ == "__main__":
    main()
