"""The `nxcompile` command line: a thin shell over the stages, one module per verb.

    nxcompile MODEL --target TARGET     the whole pipeline (the headline command: `pipeline`)
    nxcompile models | perplexity | generate       the zoo and the original (ANN) model
    nxcompile convert | eval | finetune            the spiking graph and its quality
    nxcompile targets | quantize | partition       the hardware stages
    nxcompile fit                                  each layer's weight width chosen to fit a chip budget
    nxcompile export | inspect | run | energy      the `.net` file, Lava, operations and energy
    nxcompile perf                                 speed and energy per token on Loihi 2, beside the ANN

Every user-facing failure is one line on stderr and a non-zero exit code;
`--debug` shows the traceback instead. The stages' notes (which graph, which T)
go to stderr through the `nxcompile` logger.
"""
from __future__ import annotations

import argparse
import logging
import sys

from nxcompile.cli import (convert, energy, eval, export, finetune, fit, models, partition, perf, pipeline,
                           quantize, run)
from nxcompile.errors import NxError

VERBS = (models, pipeline, convert, eval, finetune, quantize, partition, fit, export, run, energy, perf)


class _StderrHandler(logging.Handler):
    """Notes as plain lines on whatever sys.stderr is when they are made."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def _install_notes() -> None:
    logger = logging.getLogger("nxcompile")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    logger.setLevel(logging.INFO)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nxcompile",
        description="Compile GPT-2 into a spiking network for Loihi 2 and run it in Lava.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"headline:\n  nxcompile gpt2-small --target loihi2-sim   (same as `nxcompile {pipeline.NAME} ...`)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for verb in VERBS:
        verb.add_parser(commands)
    parser.set_defaults(command_names=frozenset(commands.choices))
    return parser


def _route_headline(argv: list[str], known: frozenset[str]) -> list[str]:
    """`nxcompile MODEL ...` means `nxcompile pipeline MODEL ...`."""
    first = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if first is not None and argv[first] not in known:
        return argv[:first] + [pipeline.NAME] + argv[first:]
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(_route_headline(argv, parser.get_default("command_names")))
    if args.command is None:
        parser.print_help()
        return 2
    _install_notes()
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
