"""`nxcompile models`, `perplexity` and `generate`: the zoo and the original (ANN) model."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from nxcompile.cli.flags import DEFAULT_CONTEXT, add_model_arguments, positive_int
from nxcompile.cli.inputs import context_of, evaluation_ids, load_model_from, prompt_ids


def add_parser(commands) -> None:
    commands.add_parser("models", help="list the model zoo and local weights").set_defaults(handler=cmd_models)
    ppl = commands.add_parser("perplexity", help="held-out perplexity of the original model")
    add_model_arguments(ppl)
    ppl.add_argument("--text", type=Path, default=None,
                     help="text file to score (default: the shipped model's held-out plays)")
    ppl.add_argument("--max-tokens", type=positive_int, default=None)
    ppl.add_argument("--context", type=positive_int, default=DEFAULT_CONTEXT,
                     help=f"tokens per scored window (default {DEFAULT_CONTEXT}, capped by the model)")
    ppl.set_defaults(handler=cmd_perplexity)
    gen = commands.add_parser("generate", help="sample text from the original model")
    add_model_arguments(gen)
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=positive_int, default=40)
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(handler=cmd_generate)


def cmd_models(args: argparse.Namespace) -> int:
    from nxcompile.models.zoo import ZOO, local_weights, parameter_count

    print(f"{'name':<12} {'layers':>6} {'d_model':>7} {'heads':>5} {'params':>8}  weights on this machine")
    for entry in ZOO.values():
        config = entry.config()
        where = local_weights(entry)
        print(f"{entry.name:<12} {config.n_layer:>6} {config.n_embd:>7} {config.n_head:>5} "
              f"{parameter_count(config) / 1e6:>7.1f}M  {where or 'not found (use --model-path)'}")
    print("\nrandom:<name> builds any of these with random weights (shapes only, no quality).")
    return 0


def cmd_perplexity(args: argparse.Namespace) -> int:
    from nxcompile.models.perplexity import perplexity, windows

    loaded = load_model_from(args)
    started = time.perf_counter()
    token_ids = evaluation_ids(args, loaded)
    context = context_of(args, loaded)
    count = windows(token_ids, context, args.max_tokens).numel()
    ppl = perplexity(loaded.model, token_ids, context, args.max_tokens)
    print(f"{loaded.name}: perplexity {ppl:.2f} on {count} tokens of "
          f"{args.text or 'the held-out plays'} ({time.perf_counter() - started:.1f} s)")
    if loaded.random_weights:
        print("note: random weights; this perplexity says nothing about any real model")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    loaded = load_model_from(args)
    ids = torch.tensor([prompt_ids(loaded.tokenizer, args.prompt, loaded.config.n_positions, args.max_new_tokens)])
    torch.manual_seed(args.seed)
    with torch.no_grad():
        out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=40,
                                    temperature=0.8, max_new_tokens=args.max_new_tokens,
                                    pad_token_id=loaded.tokenizer.eos_token_id)
    print(loaded.tokenizer.decode(out[0], skip_special_tokens=True))
    return 0
