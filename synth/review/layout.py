"""The Argilla dataset a review uses: its fields, questions, metadata, and how a curated row maps to a record.

One record per curated row, with the row id as the record id, so pushing again updates records in
place (Argilla upserts on it) and keeps the responses reviewers already gave.
Fields: the student's prompt and, when some row's teacher saw another prompt, the teacher's prompt
(chat fields), and the completion. Questions: `decision` (keep/discard, required), `quality` (1-5),
`corrected_completion` and `note` (optional). Suggestions pre-fill `decision` and `quality` from the
automatic curate decision and the ranking check's score, with that check's name as the agent.
"""

from __future__ import annotations

import re
from typing import Any

from synth.curate.base import CheckSpec
from synth.curate.config import CurateSpec
from synth.records import completion_text

DECISION, QUALITY, CORRECTION, NOTE = "decision", "quality", "corrected_completion", "note"
KEEP, DISCARD = "keep", "discard"
RATINGS = [1, 2, 3, 4, 5]

GUIDELINES = """\
Each record is one answer a teacher model gave, and whether Distillery's automatic checks kept it.
The suggestions show that decision and the ranking check's score (agent = the check's name).

- **decision**: keep it for training, or discard it.
- **quality**: 1 (useless) to 5 (exemplary).
- **corrected_completion**: if the answer is nearly right, paste a fixed version; it replaces the
  answer in the training set (the original is kept for provenance).
- **note**: anything the next reviewer or the data's user should know.
"""


def metadata_name(check: str) -> str:
    """An Argilla-safe metadata name for a check's score (lower case letters, digits, _ and -)."""
    return "score_" + re.sub(r"[^a-z0-9_-]", "_", check.lower())


def scored_checks(curate: CurateSpec) -> list[CheckSpec]:
    """Every check that gives rows a score."""
    return [c for c in curate.checks if c.scores]


def build_settings(rg: Any, curate: CurateSpec, with_teacher_prompt: bool, guidelines: str | None) -> Any:
    """The dataset settings (fields, questions, metadata) for a run."""
    fields = [rg.ChatField("prompt", title="Prompt (what the student sees)")]
    if with_teacher_prompt:
        fields.append(rg.ChatField("teacher_prompt", title="Teacher prompt (privileged view)", required=False))
    fields.append(rg.TextField("completion", title="Completion", use_markdown=True))
    questions = [
        rg.LabelQuestion(DECISION, labels=[KEEP, DISCARD], title="Keep this answer for training?"),
        rg.RatingQuestion(QUALITY, values=RATINGS, title="Quality (1-5)", required=False),
        rg.TextQuestion(CORRECTION, title="Corrected completion (optional)", required=False, use_markdown=True),
        rg.TextQuestion(NOTE, title="Note (optional)", required=False),
    ]
    metadata = [
        rg.TermsMetadataProperty("curate", title="Curate decision (kept, or the check that rejected)"),
        rg.TermsMetadataProperty("teacher_model", title="Teacher model"),
        rg.TermsMetadataProperty("prompt_id", title="Prompt id"),
        rg.IntegerMetadataProperty("sample_index", title="Sample index"),
    ]
    for c in scored_checks(curate):
        metadata.append(rg.FloatMetadataProperty(metadata_name(c.label), title=f"{c.label} score"))
    return rg.Settings(
        fields=fields,
        questions=questions,
        metadata=metadata,
        guidelines=guidelines or GUIDELINES,
        allow_extra_metadata=False,
    )


def rating_for(score: float | None, spec: CheckSpec) -> int | None:
    """A check's score on the 1-5 rating scale, where the check declares its range (else no suggestion)."""
    bounds = spec.score_range()
    if score is None or bounds is None:
        return None
    low, high = bounds
    unit = (score - low) / max(high - low, 1e-9)
    return int(min(max(round(1 + 4 * unit), 1), 5))


def to_record(rg: Any, row: dict[str, Any], curate: CurateSpec, ranking: str | None, with_teacher_prompt: bool) -> Any:
    """One curated row as an Argilla record with metadata and suggestions."""
    kept = row.get("rejected_by") is None
    scores = {v["name"]: v["score"] for v in row["verdicts"] or [] if v["score"] is not None}
    fields: dict[str, Any] = {"prompt": row["prompt"], "completion": completion_text(row)}
    if with_teacher_prompt and row["teacher_prompt"] != row["prompt"]:
        fields["teacher_prompt"] = row["teacher_prompt"]
    metadata: dict[str, Any] = {
        "curate": "kept" if kept else row["rejected_by"],
        "teacher_model": row["teacher"]["model"],
        "prompt_id": row["prompt_id"],
        "sample_index": int(row["sample_index"]),
    }
    agent = (ranking or "curate") if kept else row["rejected_by"]
    suggestions = [rg.Suggestion(DECISION, KEEP if kept else DISCARD, agent=agent)]
    for spec in scored_checks(curate):
        name = spec.label
        if name in scores:
            metadata[metadata_name(name)] = float(scores[name])
        if name == ranking:
            rating = rating_for(scores.get(name), spec)
            if rating is not None:
                suggestions.append(rg.Suggestion(QUALITY, rating, agent=name))
    return rg.Record(id=row["id"], fields=fields, metadata=metadata, suggestions=suggestions)
