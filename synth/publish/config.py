"""The recipe's `publish:` section: where things go on the Hub and what their cards declare.

The token is never a recipe field: huggingface_hub reads `HF_TOKEN` or the stored login.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from synth.specs import Strict

What = Literal["curated", "generations", "rejected", "all"]


class PublishSpec(Strict):
    """Defaults for `synth publish` and `sft publish` (the command line overrides them)."""

    repo_id: str | None = Field(None, description="dataset repo, ORG/NAME (or --repo-id)")
    model_repo_id: str | None = Field(None, description="model repo for `sft publish`, ORG/NAME (or --repo-id)")
    private: bool = False
    what: What = "curated"
    license: str | None = Field(None, description="license id for the cards, e.g. apache-2.0 (default: other)")
    language: list[str] = Field(default_factory=list, description="ISO 639-1 codes of the data, e.g. [en, fr]")
    task_categories: list[str] = Field(default_factory=lambda: ["text-generation"])
    tags: list[str] = Field(default_factory=list, description="extra tags (distillery and the teacher are added)")
    pretty_name: str | None = None
