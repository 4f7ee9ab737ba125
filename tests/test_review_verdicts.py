"""The pull rules on crafted rows: who wins, what moves, and that applying twice changes nothing."""

from __future__ import annotations

from typing import Any

from synth.records import assistant
from synth.review.verdicts import apply, combine


def _row(row_id: str, rejected_by: str | None = None, score: float = 0.9) -> dict[str, Any]:
    verdicts = [{"name": "french", "passed": rejected_by is None, "score": score, "reason": "p"}]
    return {
        "id": row_id,
        "prompt_id": "p",
        "sample_index": int(row_id[-1]),
        "completion": assistant(f"text {row_id}"),
        "verdicts": verdicts,
        "rejected_by": rejected_by,
        "reason": None if rejected_by is None else "p",
        "score": score if rejected_by is None else None,
        "original_completion": None,
    }


def _resp(row_id: str, user: str, status: str = "submitted", when: str = "1", **values: Any) -> dict[str, Any]:
    return {
        "row_id": row_id,
        "user": user,
        "status": status,
        "updated_at": when,
        "values": {k: {"value": v} for k, v in values.items()},
    }


def test_one_discard_outweighs_keeps_and_newest_correction_wins() -> None:
    d = combine(
        [
            _resp("r1", "a", decision="keep", quality=5),
            _resp("r1", "b", decision="discard", quality=2),
            _resp("r2", "a", when="1", decision="keep", corrected_completion="old fix"),
            _resp("r2", "b", when="2", decision="keep", corrected_completion="new fix", quality=4),
            _resp("r3", "a", status="draft", decision="discard"),
        ]
    )
    assert d["r1"].decision == "discard" and d["r1"].ratings == [5, 2]
    assert d["r2"].decision == "keep" and d["r2"].correction == "new fix"
    assert "r3" not in d


def test_apply_is_idempotent_and_reversible() -> None:
    kept, rejected = [_row("r1"), _row("r2")], [_row("r3", "french", 0.2)]
    first = apply(
        kept,
        rejected,
        combine(
            [
                _resp("r1", "a", decision="discard"),
                _resp("r2", "a", decision="keep", corrected_completion="fixed"),
                _resp("r3", "a", decision="keep", quality=4),
            ]
        ),
        ranking="french",
    )
    assert [r["id"] for r in first.kept] == ["r2", "r3"] and [r["id"] for r in first.rejected] == ["r1"]
    assert first.rejected[0]["reason"] == "human: discard"
    assert first.kept[0]["completion"] == assistant("fixed") and first.kept[0]["original_completion"] == assistant(
        "text r2"
    )
    assert first.kept[1]["score"] == 0.2  # rescued: ranked by its own check score
    same = apply(
        first.kept,
        first.rejected,
        combine(
            [
                _resp("r1", "a", decision="discard"),
                _resp("r2", "a", decision="keep", corrected_completion="fixed"),
                _resp("r3", "a", decision="keep", quality=4),
            ]
        ),
        ranking="french",
    )
    assert same.kept == first.kept and same.rejected == first.rejected
    back = apply(first.kept, first.rejected, {}, ranking="french")  # responses withdrawn: curate's decision again
    assert [r["id"] for r in back.kept] == ["r1", "r2"] and back.rejected[0]["rejected_by"] == "french"
    assert back.kept[1]["completion"] == assistant("text r2") and back.kept[1]["original_completion"] is None
