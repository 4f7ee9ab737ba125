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


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message cut to its first non-blank line: the CLI prints every error on one line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]
