"""The recipe's `curate:` section: an ordered list of checks, a ranking score, and a selection rule.

Each check is `{type: ..., name: ..., <its parameters>}`; a user adds, removes or reorders them
without code; the check types are the modules of `synth/curate/checks/`. Validated with the rest of
the recipe, so an unknown check or a threshold out of range fails before any work, naming the field
(e.g. `curate.checks.3.threshold`).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from synth.curate.checks import check_specs
from synth.specs import Strict

# Every check module's spec, in one discriminated union: `type` picks the class, so a recipe error
# names the field inside the right check (e.g. `curate.checks.3.threshold`).
Check = Annotated[Union[tuple(check_specs())], Field(discriminator="type")]  # noqa: UP007 (built at run time)


class SelectSpec(Strict):
    """How many of a prompt's passing samples to keep."""

    strategy: Literal["best_of_n", "top_k", "threshold", "all"] = "all"
    k: int = Field(1, ge=1, description="samples kept per prompt by top_k")
    min_score: float | None = Field(None, description="threshold: keep rows whose score is at least this")


class CurateSpec(Strict):
    """The `curate:` section."""

    checks: list[Check] = Field(default_factory=list)
    score: str | None = Field(
        None, description="name of the check whose score ranks rows (dedup keeper, best-of-n); default: the last scored"
    )
    select: SelectSpec = Field(default_factory=SelectSpec)

    def ranking_check(self) -> str | None:
        """The check whose score ranks rows: `score` when set, else the last scored check."""
        if self.score:
            return self.score
        scored = [c.label for c in self.checks if c.scores]
        return scored[-1] if scored else None

    @model_validator(mode="after")
    def _names(self) -> CurateSpec:
        labels = [c.label for c in self.checks]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"check names must be unique; give these a `name:`: {', '.join(dupes)}")
        if self.score is not None and self.score not in labels:
            raise ValueError(f"score names {self.score!r}, which is not a check here ({', '.join(labels) or 'none'})")
        if self.select.strategy == "threshold" and self.select.min_score is None:
            raise ValueError("select.strategy threshold needs select.min_score")
        return self
