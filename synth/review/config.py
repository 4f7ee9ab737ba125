"""The recipe's `review:` section: where the Argilla dataset lives and what goes into it.

The API key is never a recipe field: it comes from `ARGILLA_API_KEY` only, so a recipe (and the
`recipe.resolved.yaml` written beside every output) can be shared without leaking it.
"""

from __future__ import annotations

from pydantic import Field

from synth.specs import Strict


class ReviewSpec(Strict):
    """How `synth review push` lays out the Argilla dataset and which rows it sends."""

    api_url: str | None = Field(
        None, description="Argilla server URL; default: $ARGILLA_API_URL, else http://localhost:6900"
    )
    workspace: str | None = Field(None, description="Argilla workspace; default: your first one (made if none)")
    dataset: str | None = Field(None, description="Argilla dataset name; default: the recipe name")
    sample: int | None = Field(None, ge=1, description="push only this many kept rows (a seeded sample)")
    rejected_sample: int = Field(0, ge=0, description="also push this many rejected rows, so reviewers can rescue some")
    seed: int = 0
    guidelines: str | None = Field(None, description="text shown to reviewers; default: a short built-in guide")
