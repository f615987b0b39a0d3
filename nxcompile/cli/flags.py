"""The flags several verbs share, declared once (their defaults are the stages' own)."""
from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_CONTEXT = 256


def _int_at_least(text: str, least: int) -> int:
    """argparse type for counts: a clear message instead of a traceback."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def weight_bits(text: str) -> int:
    """argparse type: a signed weight mantissa width Loihi 2 holds (2 to 8 bits)."""
    value = _int_at_least(text, 2)
    if value > 8:
        raise argparse.ArgumentTypeError(f"Loihi 2 holds weights of at most 8 bits, got {value}")
    return value


def add_kv_bits_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kv-bits", type=weight_bits, default=None,
                        help="the graded method's KV cache: each cached key and value this many signed bits (2 to 8; "
                             "default the graph's grid, 8 bits): at GPT-2's 1,024-token context the cache is a "
                             "fixed share of the cores that no weight cut reduces")


def fraction(text: str) -> float:
    """argparse type: a pruned fraction, 0 to below 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"a pruned fraction is at least 0 and below 1, got {value}")
    return value


def fractions(text: str) -> tuple[float, ...]:
    """argparse type: pruned fractions, comma-separated."""
    return tuple(fraction(part) for part in text.split(","))


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="zoo name (see `nxcompile models`) or random:<name>")
    parser.add_argument("--model-path", type=Path, default=None,
                        help="folder with the model's config.json and weights (else the HF cache)")


def add_force_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true",
                        help="run even where the memory the run needs is estimated above what this machine has "
                             "(NXCOMPILE_MEMORY_GIB, else MemAvailable)")


def add_grouping_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--process-grouping", choices=("block", "node"), default="block",
                        help="Lava processes: one per transformer block, its nodes stepped in order inside "
                             "(default; the same values, far fewer processes to synchronise each step), or one "
                             "per on-chip node")


def add_conversion_arguments(parser: argparse.ArgumentParser, shipped: bool = True) -> None:
    """The conversion flags (defaults: ConversionOptions'); `shipped`: the command uses a model's shipped
    fine-tuned graph unless --raw."""
    from nxcompile.compiler.convert import (DEFAULT_TIMESTEPS, EMBEDDINGS, GELU_HINGES, METHODS, NEURON_MODELS, NORMS,
                                            RESIDUALS, SSA_NORMS, THRESHOLDS, ConversionOptions)

    default = ConversionOptions()
    parser.add_argument("--method", default=default.method, choices=tuple(METHODS),
                        help=" | ".join(f"{m.name}: {m.description}" for m in METHODS.values()))
    parser.add_argument("--timesteps", "-T", type=positive_int, default=None,
                        help=f"time steps per token (default {DEFAULT_TIMESTEPS}; the graded method runs at 1)")
    parser.add_argument("--neuron", default=default.neuron, choices=tuple(NEURON_MODELS))
    parser.add_argument("--gelu", default=default.gelu, choices=tuple(GELU_HINGES),
                        help=f"GELU as 3 shifted ReLUs or a plain ReLU (default {default.gelu})")
    parser.add_argument("--embedding", default=default.embedding, choices=EMBEDDINGS,
                        help="spikedecoder: text-to-spike embedding (spiking residual only)")
    parser.add_argument("--norm", default=default.norm, choices=NORMS, help="spikedecoder: normalisation variant")
    parser.add_argument("--residual", default=default.residual, choices=RESIDUALS,
                        help="spikedecoder: residual stream as spikes or graded values")
    parser.add_argument("--ssa-norm", default=default.ssa_norm, choices=SSA_NORMS,
                        help=f"SSA: the method's sum over keys, or divided by the keys a query attends to "
                             f"(default {default.ssa_norm})")
    parser.add_argument("--thresholds", default=default.thresholds, choices=THRESHOLDS,
                        help="one threshold per layer; per SSA head; or per neuron where the next weights read "
                             f"the spikes (encoders, MLP hidden, SSA outputs) (default {default.thresholds})")
    parser.add_argument("--qkv-neuron", default=default.qkv_neuron, choices=("",) + tuple(NEURON_MODELS),
                        help="neuron model of the Q, K, V populations (default: --neuron)")
    parser.add_argument("--calibration-percentile", type=float, default=default.calibration_percentile,
                        help=f"each threshold is this percentile of its population's input current "
                             f"(default {default.calibration_percentile})")
    parser.add_argument("--host", default=",".join(default.host),
                        help="comma list of nodes kept on the host: embed, norm (block norms), final_norm, lm_head")
    parser.add_argument("--context", type=positive_int, default=DEFAULT_CONTEXT,
                        help=f"tokens per scored window (default {DEFAULT_CONTEXT}, capped by the model)")
    parser.add_argument("--graph", type=Path, default=None,
                        help="a spiking graph file (from `convert` or `finetune`) to use instead of converting")
    add_force_argument(parser)
    if shipped:
        parser.add_argument("--raw", action="store_true",
                            help="convert without fine-tuning, even where a fine-tuned graph is shipped for the "
                                 "model and method (gpt2-tiny, neurtransformer)")


def add_model_stage_arguments(parser: argparse.ArgumentParser, text_help: str) -> None:
    """A command that converts a model for a target and reads held-out text (quantize, partition)."""
    from nxcompile.compiler.targets import TARGET_NAMES

    add_model_arguments(parser)
    add_conversion_arguments(parser)
    parser.add_argument("--target", default="loihi2", choices=TARGET_NAMES)
    parser.add_argument("--text", type=Path, default=None, help=text_help)


def add_scoring_arguments(parser: argparse.ArgumentParser, default_max_tokens: int) -> None:
    parser.add_argument("--text", type=Path, default=None,
                        help="text file to score (default: the shipped model's held-out plays)")
    parser.add_argument("--max-tokens", type=positive_int, default=default_max_tokens,
                        help=f"tokens of the text to score (default {default_max_tokens})")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="windows per batch")


def add_netx_arguments(parser: argparse.ArgumentParser):
    """How a lava-dl netx network (not written by nxcompile) runs in Lava, as netx's own options name it."""
    group = parser.add_argument_group("a lava-dl netx network (not written by nxcompile), run in Lava")
    group.add_argument("--input", type=Path, default=None, help="its input spikes (.npy, [..., time])")
    group.add_argument("--steps", type=positive_int, default=None, help="steps to run (default: the input's length)")
    group.add_argument("--skip-layers", type=non_negative_int, default=0,
                       help="netx's skip_layers: the first N layers run on the host, --input enters the next")
    group.add_argument("--reset-interval", type=positive_int, default=None,
                       help="netx's reset_interval: every neuron reset each N steps (a sample's length)")
    group.add_argument("--reset-offset", type=int, default=0, help="netx's reset_offset: the phase of that reset")
    return group
