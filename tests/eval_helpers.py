"""Judged eval answer rows as `sft eval` builds them, for tests of what is made from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sft.evaluation.quality import answer_measures
from sft.evaluation.report import build_report, write_outputs

PROMPT = "Why do bees make honey?"


def answer_rows(
    model: str,
    answers: list[tuple[bool, bool, str]],
    relevance: float | None = 0.5,
    finish_reason: str = "stop",
    prompt_ids: list[str] | None = None,
) -> list[dict[str, Any]]:
    """One greedy row per (behaviour, clean, text), prompts p0, p1, … (or `prompt_ids`), each with the
    quality columns `sft eval` computes from the text and `finish_reason`."""
    ids = prompt_ids or [f"p{i}" for i in range(len(answers))]
    return [
        {
            "model": model,
            "prompt_id": ids[i],
            "prompt": [{"role": "user", "content": PROMPT}],
            "seen_prompt": [{"role": "user", "content": PROMPT}],
            "sample_index": 0,
            "answer": text,
            "completion": [{"role": "assistant", "content": text}],
            "finish_reason": finish_reason,
            "prompt_tokens": 10,
            "completion_tokens": len(text.split()),
            "error": None,
            "behaviour": b,
            "clean": c,
            "verdicts": [{"name": "rep", "passed": c, "score": None, "reason": ""}],
            **answer_measures(text, finish_reason, None),
            "english": relevance is not None,
            "relevance": relevance,
            "teacher_similarity": None,
        }
        for i, (b, c, text) in enumerate(answers)
    ]


def report_for(rows: list[dict[str, Any]], models: list[str], relevance_measured: bool = True) -> dict[str, Any]:
    return build_report(
        rows,
        models,
        behaviour=["french"],
        prompts=len({r["prompt_id"] for r in rows}),
        samples=0,
        relevance_threshold=0.3,
        relevance_measured=relevance_measured,
        judges=[],
        fidelity={},
        seconds={},
    )


def write_eval(out: Path, rows: list[dict[str, Any]], report: dict[str, Any]) -> None:
    """eval/answers.parquet, report.json, report.md and report.png, as `sft eval` writes them."""
    write_outputs(out, report, rows)
