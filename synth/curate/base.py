"""What every curate check shares: its recipe spec and what it declares, the verdict, the row-check
interface, and text helpers.

A check is one module in `synth/curate/checks/`: a `CheckSpec` subclass (its recipe fields and what it
is: whether it scores, the range of its score, whether `sft eval` applies it) and the class that runs
it, tied by `@runs(Spec)`. The recipe, curate, review and eval read those declarations; none of them
lists check types.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import Field

from synth.records import completion_text
from synth.specs import Strict

Row = dict[str, Any]
WORD = re.compile(r"\w+", re.UNICODE)


class CheckSpec(Strict):
    """A check's recipe entry (`{type: ..., name: ..., <its parameters>}`) and what the check is.

    Subclasses set `type: Literal["..."]` and override the class-level declarations that differ.
    """

    name: str | None = Field(None, description="name in verdicts and reports (default: the type)")

    scores: ClassVar[bool] = False
    """Its verdicts carry a score that can rank rows (dedup keeper, best-of-n, review metadata)."""
    score_bounds: ClassVar[tuple[float, float] | None] = None
    """The range its scores fall in, when known; review maps it onto the 1-5 quality rating."""
    in_eval: ClassVar[bool] = True
    """`sft eval` applies it to every model's answers (off for checks about training data itself)."""
    judge: ClassVar[bool] = False
    """A model grades the answers; the eval report names these as judges."""
    runner: ClassVar[type[Any]]
    """The class that runs it: a `RowCheck` (row by row) or a `GroupCheck` (over the whole set)."""

    @property
    def label(self) -> str:
        return self.name or self.type  # type: ignore[attr-defined]

    @property
    def per_row(self) -> bool:
        """Decided row by row (not a group check such as dedup, which needs every row)."""
        return issubclass(self.runner, RowCheck)

    def score_range(self) -> tuple[float, float] | None:
        """The range of this configured check's scores (a judge's depends on its scale)."""
        return self.score_bounds


REGISTRY: dict[str, type[CheckSpec]] = {}
S = TypeVar("S", bound=type)


def runs(spec: type[CheckSpec]) -> Callable[[S], S]:
    """Class decorator tying a check's implementation to its spec and registering the check type."""

    def register(cls: S) -> S:
        check_type = spec.model_fields["type"].annotation.__args__[0]  # type: ignore[union-attr]
        if check_type in REGISTRY and REGISTRY[check_type] is not spec:
            raise TypeError(f"two curate checks declare type {check_type!r}")
        spec.runner = cls
        REGISTRY[check_type] = spec
        return cls

    return register


@dataclass(frozen=True)
class Verdict:
    """One check's decision on one row; lands in the row's `verdicts` list."""

    passed: bool
    score: float | None = None
    reason: str = ""


@dataclass
class Context:
    """What checks may need at setup: the recipe and where relative paths start.

    `recipe` is a `synth.recipe.Recipe`, typed `Any` here on purpose: the recipe is assembled from
    these checks' specs (recipe → curate config → checks → this module), so naming its type here
    would close an import cycle."""

    recipe: Any
    recipe_dir: Path | None = None


class RowCheck(ABC):
    """A check that decides each row on its own (filters, verifiers, judges, decontamination)."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.name: str = spec.label
        self.tally: Counter[tuple[str, str]] = Counter()
        """What the check found, counted by (item, text): decontamination's matched eval items. The
        curate report lists it; per shard it travels in the shard's stats (`drain`), so it adds up the
        same whether the check ran here or on Ray workers."""

    def drain(self) -> Counter[tuple[str, str]]:
        """The tally since the last call, and a fresh one."""
        out, self.tally = self.tally, Counter()
        return out

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
    """`words` of the completion's text, computed once per row and shared by the checks that need it."""
    cached = row.get("_words")
    if cached is None:
        cached = row["_words"] = words(completion_text(row))
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
