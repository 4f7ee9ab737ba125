"""Benchmark decontamination by word n-gram overlap with evaluation sets.

An eval item of at least `ngram` words contributes all its `ngram`-word windows; a shorter item (most
instructions are shorter than 13 words) must appear whole. A row is contaminated when its prompt or
completion contains such a window; the verdict and the report name the eval item it matched.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from synth.curate.base import CheckSpec, Context, Row, RowCheck, Verdict, runs, snippet, user_text, words
from synth.errors import UserError
from synth.prompts import iter_source, resolve_path
from synth.records import completion_text
from synth.specs import PromptsSpec, Strict


class EvalSet(Strict):
    """An evaluation set whose items must not leak into training data."""

    path: str | None = None
    dataset: str | None = None
    split: str = "test"
    columns: list[str] = Field(default_factory=lambda: ["prompt"], min_length=1)

    @model_validator(mode="after")
    def _one_source(self) -> EvalSet:
        if bool(self.path) == bool(self.dataset):
            raise ValueError("give exactly one of path or dataset")
        return self


class DecontaminateCheck(CheckSpec):
    type: Literal["decontaminate"]
    in_eval = False  # eval prompts are the eval set itself
    eval_sets: list[EvalSet] = Field(min_length=1)
    ngram: int = Field(13, ge=3, le=50, description="word n-gram size (eval items shorter than this match whole)")
    fields: list[Literal["prompt", "completion"]] = Field(default_factory=lambda: ["prompt", "completion"])


@runs(DecontaminateCheck)
class Decontaminate(RowCheck):
    """Rejects rows that share an n-gram with any evaluation item."""

    def setup(self, ctx: Context) -> None:
        n = self.spec.ngram
        self.index: dict[tuple[str, ...], int] = {}
        self.items: list[tuple[str, str]] = []  # (eval set label, text)
        self.lengths: set[int] = set()
        for j, es in enumerate(self.spec.eval_sets):
            label = es.path or es.dataset or "?"
            source = PromptsSpec(path=es.path, dataset=es.dataset, split=es.split)
            field = f"{self.field(ctx)}.eval_sets.{j}.path"  # errors name this field, not prompts.path
            if es.path:
                resolve_path(es.path, ctx.recipe_dir, field)
            for where, row in iter_source(source, ctx.recipe_dir, field):
                for col in es.columns:
                    if col not in row:
                        raise UserError(f"{where}: eval set has no column {col!r}; columns: {', '.join(row)}")
                    text = row[col] if isinstance(row[col], str) else str(row[col])
                    toks = words(text)
                    if not toks:
                        continue
                    item = len(self.items)
                    self.items.append((f"{label}#{where.rsplit(':', 1)[-1]}", text))
                    size = min(n, len(toks))
                    self.lengths.add(size)
                    for i in range(len(toks) - size + 1):
                        self.index.setdefault(tuple(toks[i : i + size]), item)

    def _hit(self, text: str) -> int | None:
        toks = words(text)
        for size in sorted(self.lengths, reverse=True):
            for i in range(len(toks) - size + 1):
                item = self.index.get(tuple(toks[i : i + size]))
                if item is not None:
                    return item
        return None

    def run(self, rows: list[Row]) -> list[Verdict]:
        out = []
        for r in rows:
            verdict = Verdict(True)
            for field in self.spec.fields:
                item = self._hit(user_text(r) if field == "prompt" else completion_text(r))
                if item is not None:
                    label, text = self.items[item]
                    self.tally[label, snippet(text, 120)] += 1
                    verdict = Verdict(
                        False, reason=f"contaminated: {field} matches eval item {label} ({snippet(text, 60)!r})"
                    )
                    break
            out.append(verdict)
        return out
