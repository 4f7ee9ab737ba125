"""From reviewers' responses to an updated curated set (pure functions: no server, no files).

Rules (documented in the README):
- Only submitted and discarded responses count; drafts do not. Argilla's own "Discard" button
  (response status `discarded`) counts as a discard, like answering `decision: discard`.
- A row any reviewer discarded is rejected with reason `human: discard` (one "no" is enough to keep a
  row out of training). Otherwise a row a reviewer kept is kept, even if curate had rejected it.
- The newest non-empty corrected completion replaces the completion; the first original stays in
  `original_completion`.
- Ratings are averaged into a `human` verdict (score = mean rating) beside the automatic verdicts.
- Rows nobody reviewed keep the automatic decision.
The automatic decision is recomputed from each row's own verdicts, not from which file it is in, so
applying the same responses twice gives the same set (pull is idempotent), and a reviewer who
changes their mind moves a row back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import mean
from typing import Any

from synth.records import assistant, completion_text
from synth.review.layout import CORRECTION, DECISION, DISCARD, KEEP, NOTE, QUALITY

HUMAN = "human"
COUNTED = ("submitted", "discarded")


@dataclass
class HumanDecision:
    """What the reviewers of one row said, combined."""

    decision: str  # keep | discard
    reviewers: list[str] = field(default_factory=list)
    ratings: list[int] = field(default_factory=list)
    correction: str | None = None
    notes: list[str] = field(default_factory=list)

    def verdict(self) -> dict[str, Any]:
        """The `human` entry in the row's verdicts."""
        parts = [f"human: {self.decision}", f"by {', '.join(sorted(set(self.reviewers)))}"]
        if self.ratings:
            parts.append(f"rating {mean(self.ratings):.2f}")
        if self.correction is not None:
            parts.append("corrected")
        parts += [f"note: {n}" for n in self.notes]
        return {
            "name": HUMAN,
            "passed": self.decision == KEEP,
            "score": float(mean(self.ratings)) if self.ratings else None,
            "reason": "; ".join(parts),
        }


def _value(response: dict[str, Any], question: str) -> Any:
    return ((response.get("values") or {}).get(question) or {}).get("value")


def combine(responses: list[dict[str, Any]]) -> dict[str, HumanDecision]:
    """Responses (row_id, user, status, values, updated_at) to one decision per reviewed row."""
    by_row: dict[str, list[dict[str, Any]]] = {}
    for r in responses:
        if r["status"] in COUNTED:
            by_row.setdefault(r["row_id"], []).append(r)
    decisions = {}
    for row_id, rs in by_row.items():
        rs.sort(key=lambda r: (r["updated_at"] or "", r["user"]))
        discarded = any(r["status"] == "discarded" or _value(r, DECISION) == DISCARD for r in rs)
        submitted = [r for r in rs if r["status"] == "submitted"]
        corrections = [c for r in submitted if (c := (_value(r, CORRECTION) or "").strip())]
        decisions[row_id] = HumanDecision(
            decision=DISCARD if discarded else KEEP,
            reviewers=[r["user"] for r in rs],
            ratings=[int(v) for r in submitted if (v := _value(r, QUALITY)) is not None],
            correction=corrections[-1] if corrections else None,
            notes=[n.strip() for r in submitted if (n := _value(r, NOTE)) and n.strip()],
        )
    return decisions


def _automatic(row: dict[str, Any]) -> tuple[str | None, str | None]:
    """The decision curate made, whatever a review did to the row since."""
    if row.get("rejected_by") not in (None, HUMAN):
        return row["rejected_by"], row["reason"]
    for v in row["verdicts"] or []:
        if v["name"] != HUMAN and not v["passed"]:
            return v["name"], v["reason"]
    return None, None


@dataclass
class Applied:
    """The reviewed curated set and what changed."""

    kept: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    discarded: int = 0  # kept by curate, discarded by a reviewer
    rescued: int = 0  # rejected by curate, kept by a reviewer
    corrected: int = 0
    rated: int = 0


def apply(
    kept: list[dict[str, Any]],
    rejected: list[dict[str, Any]],
    decisions: dict[str, HumanDecision],
    ranking: str | None,
) -> Applied:
    """The rows (kept and rejected together) after the reviewers' decisions."""
    out = Applied([], [])
    for row in kept + rejected:
        row = dict(row)
        original = row.get("original_completion") or row["completion"]
        auto_by, auto_reason = _automatic(row)
        verdicts = [v for v in row["verdicts"] or [] if v["name"] != HUMAN]
        human = decisions.get(row["id"])
        row["completion"], row["original_completion"] = original, None
        if human is not None:
            verdicts.append(human.verdict())
            out.rated += bool(human.ratings)
            if human.correction is not None and human.correction != completion_text({"completion": original}):
                row["completion"], row["original_completion"] = assistant(human.correction), original
                out.corrected += 1
        row["verdicts"] = verdicts
        if human is not None and human.decision == DISCARD:
            row["rejected_by"], row["reason"] = HUMAN, "human: discard"
            out.discarded += auto_by is None
        elif human is not None or auto_by is None:
            row["rejected_by"], row["reason"] = None, None
            out.rescued += auto_by is not None
        else:
            row["rejected_by"], row["reason"] = auto_by, auto_reason
        if row["rejected_by"] is None:
            if row.get("score") is None and ranking is not None:
                row["score"] = next((v["score"] for v in verdicts if v["name"] == ranking), None)
            out.kept.append(row)
        else:
            out.rejected.append(row)
    order = lambda r: (r["prompt_id"], r["sample_index"], r["id"])  # noqa: E731 - stable output order
    out.kept.sort(key=order)
    out.rejected.sort(key=order)
    return out
