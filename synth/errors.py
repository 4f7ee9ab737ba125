"""User-facing errors.

A `UserError` is a mistake the user can fix (a bad recipe, a malformed file, a server that is down).
The CLI prints its message and exits with status 2 instead of showing a traceback, so every message
must say where the problem is and what to do about it.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"
