"""Builders of crafted generation rows and run folders for the curate tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from synth.io import atomic_write_parquet
from synth.records import Completion, PromptItem, make_rows, prompt_id_for, rows_to_table

TEACHER = {
    "model": "m",
    "revision": None,
    "engine": "transformers",
    "sampling": {
        "n": 1,
        "temperature": 0.7,
        "top_p": 1.0,
        "top_k": None,
        "max_new_tokens": 64,
        "seed": 0,
        "logprobs": None,
    },
}


def item(prompt: str, meta: dict[str, Any] | None = None) -> PromptItem:
    msgs = [{"role": "user", "content": prompt}]
    return PromptItem(prompt_id_for(msgs, msgs), msgs, msgs, meta or {})


def rows_for(
    prompt: str, completions: list[str], meta: dict[str, Any] | None = None, finish: str = "stop"
) -> list[dict[str, Any]]:
    """Rows of one prompt with the given completions, exactly as `synth generate` writes them."""
    comps = [
        Completion(text=c, finish_reason=finish, prompt_tokens=5, completion_tokens=len(c.split())) for c in completions
    ]
    return make_rows(item(prompt, meta), comps, TEACHER, "testhash")


def write_run(run: Path, shards: list[list[dict[str, Any]]]) -> Path:
    """A run folder whose generations/ holds these shards."""
    for i, rows in enumerate(shards):
        atomic_write_parquet(run / "generations" / f"shard-{i:05d}.parquet", rows_to_table(rows))
    return run


def recipe_text(checks: list[dict[str, Any]], select: dict[str, Any] | None = None, score: str | None = None) -> str:
    body: dict[str, Any] = {"name": "t", "curate": {"checks": checks, "select": select or {"strategy": "all"}}}
    if score:
        body["curate"]["score"] = score
    return json.dumps(body)  # JSON is YAML
