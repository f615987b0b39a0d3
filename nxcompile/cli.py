"""The `nxcompile` command line.

    nxcompile MODEL --target TARGET     the whole pipeline (the headline command)
    nxcompile models                    the zoo and which weights are on this machine
    nxcompile perplexity MODEL          held-out perplexity of the original (ANN) model
    nxcompile generate MODEL --prompt   text from the original model

Every user-facing failure is one line on stderr and a non-zero exit code;
`--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from nxcompile.commands_snn import (DEFAULT_CONTEXT, add_conversion_arguments,
                                    add_model_arguments, cmd_convert, cmd_eval, context_of,
                                    evaluation_token_ids, load_from_args, non_negative_int, positive_int,
                                    resolve_timesteps)
from nxcompile.commands_finetune import add_finetune_parser
from nxcompile.commands_hw import add_partition_parser, add_quantize_parser
from nxcompile.commands_energy import add_energy_parser
from nxcompile.commands_net import add_net_parsers, prompt_ids
from nxcompile.commands_pipeline import cmd_pipeline
from nxcompile.compiler.targets import TARGET_NAMES
from nxcompile.errors import NxError

PIPELINE_COMMAND = "pipeline"


def _cmd_models(args: argparse.Namespace) -> int:
    from nxcompile.models.zoo import ZOO, local_weights, parameter_count

    print(f"{'name':<12} {'layers':>6} {'d_model':>7} {'heads':>5} {'params':>8}  weights on this machine")
    for entry in ZOO.values():
        config = entry.config()
        where = local_weights(entry)
        print(f"{entry.name:<12} {config.n_layer:>6} {config.n_embd:>7} {config.n_head:>5} "
              f"{parameter_count(config) / 1e6:>7.1f}M  {where or 'not found (use --model-path)'}")
    print("\nrandom:<name> builds any of these with random weights (shapes only, no quality).")
    return 0


def _cmd_perplexity(args: argparse.Namespace) -> int:
    from nxcompile.models.perplexity import perplexity, windows

    loaded = load_from_args(args)
    started = time.perf_counter()
    token_ids = evaluation_token_ids(args, loaded)
    context = context_of(args, loaded)
    count = windows(token_ids, context, args.max_tokens).numel()
    ppl = perplexity(loaded.model, token_ids, context, args.max_tokens)
    print(f"{loaded.name}: perplexity {ppl:.2f} on {count} tokens of "
          f"{args.text or 'the held-out plays'} ({time.perf_counter() - started:.1f} s)")
    if loaded.random_weights:
        print("note: random weights; this perplexity says nothing about any real model")
    return 0


def _generate(loaded, prompt: str, max_new_tokens: int, seed: int) -> str:
    import torch

    ids = torch.tensor([prompt_ids(loaded.tokenizer, prompt, loaded.config.n_positions, max_new_tokens)])
    torch.manual_seed(seed)
    with torch.no_grad():
        out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                    top_k=40, temperature=0.8, max_new_tokens=max_new_tokens,
                                    pad_token_id=loaded.tokenizer.eos_token_id)
    return loaded.tokenizer.decode(out[0], skip_special_tokens=True)


def _cmd_generate(args: argparse.Namespace) -> int:
    loaded = load_from_args(args)
    print(_generate(loaded, args.prompt, args.max_new_tokens, args.seed))
    return 0


def _add_scoring_arguments(parser: argparse.ArgumentParser, default_max_tokens: int) -> None:
    parser.add_argument("--text", type=Path, default=None,
                        help="text file to score (default: the shipped model's held-out plays)")
    parser.add_argument("--max-tokens", type=positive_int, default=default_max_tokens,
                        help=f"tokens of the text to score (default {default_max_tokens})")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="windows per batch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nxcompile",
        description="Compile GPT-2 into a spiking network for Loihi 2 and run it in Lava.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="headline:\n  nxcompile gpt2-small --target loihi2-sim   (same as `nxcompile pipeline ...`)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    commands.add_parser("models", help="list the model zoo and local weights").set_defaults(
        handler=_cmd_models)

    pipeline = commands.add_parser(PIPELINE_COMMAND, help="the whole pipeline on one model")
    add_model_arguments(pipeline)
    pipeline.add_argument("--target", default="loihi2-sim", help="compilation target")
    add_conversion_arguments(pipeline)
    _add_scoring_arguments(pipeline, default_max_tokens=4096)
    pipeline.add_argument("--prompt", default="HAMLET. To be, or not to be", help="prompt to run in Lava")
    pipeline.add_argument("--max-new-tokens", type=non_negative_int, default=4,
                          help="tokens Lava generates after the prompt (default 4)")
    pipeline.add_argument("--output", "-o", type=Path, default=None,
                          help="the .net file to write (default MODEL.net here)")
    pipeline.set_defaults(handler=cmd_pipeline)

    add_partition_parser(commands)
    add_quantize_parser(commands)
    add_finetune_parser(commands)
    add_net_parsers(commands)
    add_energy_parser(commands)

    convert = commands.add_parser("convert", help="GPT-2 -> spiking graph file")
    add_model_arguments(convert)
    add_conversion_arguments(convert, shipped=False)
    convert.add_argument("--output", "-o", type=Path, required=True,
                         help="where to write the graph (.safetensors)")
    convert.set_defaults(handler=cmd_convert)

    evaluation = commands.add_parser("eval", help="spiking vs original: perplexity, cosine, agreement")
    add_model_arguments(evaluation)
    add_conversion_arguments(evaluation)
    _add_scoring_arguments(evaluation, default_max_tokens=16384)
    evaluation.add_argument("--sweep-timesteps", default=None,
                            help="comma list of T, e.g. 1,2,4,8,16,32: a table and a PNG plot")
    evaluation.add_argument("--plot", type=Path, default=None, help="where to write the PNG")
    evaluation.add_argument("--target", default="loihi2-sim", choices=TARGET_NAMES,
                            help="score the graph quantised for this target, in its fixed point (the Lava run's "
                                 "bit-exact twin; default loihi2-sim)")
    evaluation.add_argument("--float", action="store_true",
                            help="score the float graph instead (no quantisation)")
    evaluation.set_defaults(handler=cmd_eval)

    ppl = commands.add_parser("perplexity", help="held-out perplexity of the original model")
    add_model_arguments(ppl)
    ppl.add_argument("--text", type=Path, default=None,
                     help="text file to score (default: the shipped model's held-out plays)")
    ppl.add_argument("--max-tokens", type=positive_int, default=None)
    ppl.add_argument("--context", type=positive_int, default=DEFAULT_CONTEXT,
                     help=f"tokens per scored window (default {DEFAULT_CONTEXT}, capped by the model)")
    ppl.set_defaults(handler=_cmd_perplexity)

    gen = commands.add_parser("generate", help="sample text from the original model")
    add_model_arguments(gen)
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=positive_int, default=40)
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(handler=_cmd_generate)
    parser.set_defaults(command_names=frozenset(commands.choices))
    return parser


def _route_headline(argv: list[str], known: set[str]) -> list[str]:
    """`nxcompile MODEL ...` means `nxcompile pipeline MODEL ...`."""
    first = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if first is not None and argv[first] not in known:
        return argv[:first] + [PIPELINE_COMMAND] + argv[first:]
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(_route_headline(argv, parser.get_default("command_names")))
    if args.command is None:
        parser.print_help()
        return 2
    if hasattr(args, "timesteps"):
        resolve_timesteps(args)
    try:
        return args.handler(args)
    except NxError as exc:
        if args.debug:
            raise
        print(f"nxcompile: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("nxcompile: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
