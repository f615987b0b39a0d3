"""Turning the shared flags into what the stages take: the model, the graph, the text, a prompt, an input."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nxcompile.errors import UsageError

log = logging.getLogger("nxcompile.cli")


def load_model_from(args: argparse.Namespace, name: str | None = None):
    """The zoo model the flags name (a models.zoo.LoadedModel), said on stderr."""
    from nxcompile.compiler.convert import conversion_peak_bytes
    from nxcompile.memory import check_memory
    from nxcompile.models.zoo import RANDOM_PREFIX, load_model, zoo_entry

    spec = name or args.model
    if getattr(args, "method", None) is not None and getattr(args, "graph", None) is None:
        config = zoo_entry(spec.removeprefix(RANDOM_PREFIX)).config()
        check_memory(conversion_peak_bytes(config, args.method), f"converting {spec} ({args.method})", args.force)
    loaded = load_model(spec, args.model_path)
    log.info(f"model: {loaded.name} ({loaded.source})")
    return loaded


def conversion_options(args: argparse.Namespace):
    """The flags as ConversionOptions, at the T the method runs at."""
    from nxcompile.compiler.convert import ConversionOptions, timesteps_for

    return ConversionOptions(method=args.method, timesteps=timesteps_for(args.method, args.timesteps),
                             neuron=args.neuron, gelu=args.gelu, host=tuple(h for h in args.host.split(",") if h),
                             embedding=args.embedding, norm=args.norm, residual=args.residual,
                             ssa_norm=args.ssa_norm, thresholds=args.thresholds, qkv_neuron=args.qkv_neuron,
                             calibration_percentile=args.calibration_percentile)


def context_of(args: argparse.Namespace, loaded) -> int:
    return min(args.context, loaded.config.n_positions)


def graph_from(args: argparse.Namespace, loaded):
    """The spiking graph the flags ask for (`compiler.convert.resolve_graph`)."""
    from nxcompile.compiler.convert import resolve_graph

    return resolve_graph(loaded, conversion_options(args), context_of(args, loaded), args.graph,
                         shipped=not getattr(args, "raw", True))


def quantised_source(args: argparse.Namespace, target):
    """`args.source` as a command that prices or times it reads it: an nxcompile .net file as written (its
    graph, placement and tokenizer), or a zoo model converted as the flags say and quantised for `target`
    (no placement yet); and the loaded model, None for a file."""
    from nxcompile.compiler.export import load_net, load_tokenizer
    from nxcompile.compiler.quantize import quantize

    if args.source.endswith(".net") or Path(args.source).is_file():
        graph, placement = load_net(Path(args.source))
        return graph, placement, load_tokenizer(Path(args.source)), None
    loaded = load_model_from(args, args.source)
    return quantize(graph_from(args, loaded), target), None, loaded.tokenizer, loaded


def evaluation_ids(args: argparse.Namespace, loaded):
    """The --text file (default: the held-out plays) in the model's tokens."""
    import torch

    from nxcompile.models.corpus import evaluation_text

    ids = torch.tensor(loaded.tokenizer(evaluation_text(args.text))["input_ids"], dtype=torch.long)
    if len(ids) < 2:
        raise UsageError("the evaluation text tokenizes to fewer than 2 tokens; give a longer --text")
    return ids


def evaluation_windows(args: argparse.Namespace, loaded, max_tokens: int | None = None):
    from nxcompile.models.perplexity import windows

    return windows(evaluation_ids(args, loaded), context_of(args, loaded), max_tokens or args.max_tokens)


def progress(description: str):
    """A tqdm progress bar over an iterable, on stderr."""
    from tqdm import tqdm

    return lambda items: tqdm(items, desc=description, unit="batch", leave=False, file=sys.stderr)


def prompt_ids(tokenizer, prompt: str, context: int | None, max_new_tokens: int) -> list[int]:
    """The prompt's token ids; refuses a prompt that is empty as tokens or that, with the tokens
    to generate, does not fit the model's context (None: no limit)."""
    ids = tokenizer(prompt)["input_ids"]
    if not ids:
        raise UsageError("the prompt tokenizes to nothing; give some text with --prompt")
    if context is not None and len(ids) + max_new_tokens > context:
        raise UsageError(f"prompt ({len(ids)} tokens) + --max-new-tokens {max_new_tokens} exceeds the model's "
                         f"context of {context} tokens; shorten the prompt or lower --max-new-tokens")
    return ids


def load_input(args: argparse.Namespace, source: Path):
    """The --input spikes of a lava-dl netx network, read as data only."""
    import numpy as np

    if args.input is None:
        raise UsageError(f"{source} is a lava-dl netx network: give its input spikes with --input FILE.npy")
    try:
        return np.load(args.input, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {args.input} as a .npy array ({exc})") from None


def on_ranks(body, args: argparse.Namespace, device: str = "cpu") -> int:
    """`body(args, ranks)` on this process's rank of a torchrun launch, or alone as rank 0 of 1:
    the other ranks print nothing and log only warnings; a rank lost mid-run is one line."""
    import contextlib
    import io

    import torch.distributed as dist

    from nxcompile.distributed import join, leave, lost_a_rank

    ranks = join(device)
    if not ranks.main:
        logging.getLogger("nxcompile").setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()) if not ranks.main else contextlib.nullcontext():
            done = body(args, ranks)
    except (RuntimeError, dist.DistBackendError) as exc:
        if ranks.distributed:           # the group is broken: leaving it would wait on the lost rank
            raise lost_a_rank(exc, ranks) from exc
        raise
    leave()
    return done
