"""Judged eval answer rows as `sft eval` builds them, for tests of what is made from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sft.evaluation.quality import distinct_n, repeated_ngram_share
from sft.evaluation.report import build_report, write_outputs

PROMPT = "Why do bees make honey?"


def answer_rows(
    model: str, answers: list[tuple[bool, bool, str]], relevance: float | None = 0.5
) -> list[dict[str, Any]]:
    """One greedy row per (behaviour, clean, text), prompts p0, p1, …"""
    return [
        {
            "model": model,
            "prompt_id": f"p{i}",
            "prompt": [{"role": "user", "content": PROMPT}],
            "seen_prompt": [{"role": "user", "content": PROMPT}],
            "sample_index": 0,
            "answer": text,
            "completion": [{"role": "assistant", "content": text}],
            "finish_reason": "stop",
            "prompt_tokens": 10,
            "completion_tokens": len(text.split()),
            "error": None,
            "behaviour": b,
            "clean": c,
            "verdicts": [{"name": "rep", "passed": c, "score": None, "reason": ""}],
            "repeated_3gram_share": repeated_ngram_share(text, 3),
            "distinct_2": distinct_n(text, 2),
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
