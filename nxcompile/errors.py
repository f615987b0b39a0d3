"""The one exception type the CLI turns into a single clear line and an exit code."""
from __future__ import annotations


class NxError(Exception):
    """A user-facing failure: the message says what is wrong and how to fix it.

    `exit_code` follows the CLI's convention: 2 for bad input (names, flags,
    missing files), 1 for everything else.
    """

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(NxError):
    """Bad input from the user: unknown names, missing weights, invalid flags."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=2)
