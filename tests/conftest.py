"""Shared test fixtures: Intel's published netx networks live beside the repo in ../shared/netx."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_NETX = REPO_ROOT.parent / "shared" / "netx"


@pytest.fixture(scope="session")
def shared_netx() -> Path:
    """The folder of Intel's networks; its absence is a broken checkout, not a skip."""
    assert SHARED_NETX.is_dir(), f"expected Intel's netx networks at {SHARED_NETX}"
    return SHARED_NETX


@pytest.fixture(scope="session")
def tiny_graph():
    """The shipped gpt2-tiny converted with default options (calibrated on a few training tokens)."""
    import torch

    from nxcompile.compiler.convert import ConversionOptions, convert
    from nxcompile.models.corpus import load_corpus
    from nxcompile.models.zoo import load_model

    loaded = load_model("gpt2-tiny")
    ids = torch.tensor(loaded.tokenizer(load_corpus().train[:4000])["input_ids"][:256]).reshape(2, 128)
    return convert(loaded.model, ConversionOptions(), ids, model_name="gpt2-tiny")
