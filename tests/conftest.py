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
