"""What every curate check shares: the verdict, the row-check interface, and text helpers."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.recipe import Recipe

Row = dict[str, Any]
WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class Verdict:
    """One check's decision on one row; lands in the row's `verdicts` list."""

    passed: bool
    score: float | None = None
    reason: str = ""


@dataclass
class Context:
    """What checks may need at setup: the recipe and where relative paths start."""

    recipe: Recipe
    recipe_dir: Path | None = None


class RowCheck(ABC):
    """A check that decides each row on its own (filters, verifiers, judges, decontamination)."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.name: str = spec.label

    def setup(self, ctx: Context) -> None:
        """Load what the check needs (models, eval sets, user code) before any row is read."""

    def field(self, ctx: Context) -> str:
        """Where this check sits in the recipe (`curate.checks.2`), for messages that say what to change."""
        index = next((i for i, c in enumerate(ctx.recipe.curate.checks) if c is self.spec), None)
        return f"curate.checks.{index}" if index is not None else f"curate check {self.name!r}"

    @abstractmethod
    def run(self, rows: list[Row]) -> list[Verdict]:
        """One verdict per row, in order."""

    def close(self) -> None:
        """Release models or connections."""


def words(text: str) -> list[str]:
    """Lower-cased word tokens, the unit of n-gram checks."""
    return WORD.findall(text.lower())


def completion_words(row: Row) -> list[str]:
    """`words(row["completion"])`, computed once per row and shared by the checks that need it."""
    cached = row.get("_words")
    if cached is None:
        cached = row["_words"] = words(row["completion"])
    return cached


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(tokens[i:] for i in range(n)), strict=False))


def completion_ngrams(row: Row, n: int) -> list[tuple[str, ...]]:
    """Word n-grams of the completion, computed once per row and size."""
    key = f"_ngrams{n}"
    cached = row.get(key)
    if cached is None:
        cached = row[key] = ngrams(completion_words(row), n)
    return cached


def user_text(row: Row) -> str:
    """The user's side of the student's prompt (what the answer responds to)."""
    return "\n".join(m["content"] for m in row["prompt"] if m["role"] == "user")


def snippet(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"
