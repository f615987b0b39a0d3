"""Compilation targets (Loihi chips and boards, and Lava's CPU simulation of Loihi 2)."""
from __future__ import annotations

from nxcompile.errors import UsageError

TARGET_NAMES = ("loihi2-sim", "loihi2", "loihi2-kapoho-point", "loihi2-hala-point", "loihi1")


def check_target_name(name: str) -> str:
    if name not in TARGET_NAMES:
        raise UsageError(f"unknown target {name!r}; choose one of {', '.join(TARGET_NAMES)}")
    return name
