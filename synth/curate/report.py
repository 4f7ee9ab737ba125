"""curated/report.json (for machines) and report.md (for people): why each row went where it did."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synth.curate.base import Verdict, snippet
from synth.curate.checks.verifiers import RAISED
from synth.io import atomic_write_text

EXAMPLES = 3


@dataclass
class CheckStats:
    """Counts, timing, scores and rejection examples of one check."""

    name: str
    type: str
    evaluated: int = 0
    failed: int = 0
    seconds: float = 0.0
    scores: list[float] = field(default_factory=list)
    examples: list[dict[str, str]] = field(default_factory=list)
    tally: Counter[tuple[str, str]] = field(default_factory=Counter)  # see RowCheck.tally

    def add(self, v: Verdict) -> None:
        self.evaluated += 1
        self.failed += not v.passed
        if v.score is not None:
            self.scores.append(v.score)

    def example(self, row_id: str, text: str, reason: str) -> None:
        if len(self.examples) < EXAMPLES:
            self.examples.append({"id": row_id, "completion": snippet(text, 120), "reason": reason})

    def merge(self, shard: CheckStats) -> None:
        """Add one shard's stats; merged in shard order, the result is what one pass over all rows gives."""
        self.evaluated += shard.evaluated
        self.failed += shard.failed
        self.seconds += shard.seconds
        self.scores += shard.scores
        self.examples += shard.examples[: max(0, EXAMPLES - len(self.examples))]
        self.tally.update(shard.tally)


def histogram(values: list[float], bins: int = 10) -> list[dict[str, Any]]:
    """Equal-width bins between the smallest and largest score."""
    if not values:
        return []
    lo, hi = min(values), max(values)
    if hi == lo:
        return [{"from": lo, "to": hi, "count": len(values)}]
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / width), bins - 1)] += 1
    return [
        {"from": round(lo + i * width, 4), "to": round(lo + (i + 1) * width, 4), "count": c}
        for i, c in enumerate(counts)
    ]


@dataclass
class CurateSummary:
    """What one curate run did (also the basis of report.json)."""

    run_dir: Path
    rows_in: int = 0
    prompts: int = 0
    kept: int = 0
    rejected: int = 0
    seconds: float = 0.0
    score_name: str | None = None
    stats: dict[str, CheckStats] = field(default_factory=dict)
    workers: int = 0  # Ray workers; 0 for the local executor
    shards_redone: int = 0  # shards checked again because their Ray worker died

    @property
    def rows_per_s(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else 0.0


def build_report(summary: CurateSummary, kept_per_prompt: dict[str, int], select: dict[str, Any]) -> dict[str, Any]:
    """report.json's content: the run's counts, each check's stats, and the select step's settings and
    kept rows per prompt (passed in, not read off the stage's Curator, so this module needs nothing of
    the stage)."""
    per_prompt: dict[str, int] = {}
    for n in kept_per_prompt.values():
        per_prompt[str(n)] = per_prompt.get(str(n), 0) + 1
    return {
        "rows_in": summary.rows_in,
        "prompts": summary.prompts,
        "kept": summary.kept,
        "rejected": summary.rejected,
        "seconds": round(summary.seconds, 3),
        "rows_per_s": round(summary.rows_per_s, 1),
        "ranking_score": summary.score_name,
        "select": select,
        "checks": [
            {
                "name": s.name,
                "type": s.type,
                "evaluated": s.evaluated,
                "rejected": s.failed,
                "seconds": round(s.seconds, 3),
                "rows_per_s": round(s.evaluated / s.seconds, 1) if s.seconds > 0 else None,
            }
            for s in summary.stats.values()
        ],
        "rejections": {s.name: s.failed for s in summary.stats.values() if s.failed},
        "examples": {s.name: s.examples for s in summary.stats.values() if s.examples},
        "kept_per_prompt": dict(sorted(per_prompt.items(), key=lambda kv: int(kv[0]))),
        "scores": {
            s.name: {
                "count": len(s.scores),
                "mean": sum(s.scores) / len(s.scores),
                "min": min(s.scores),
                "max": max(s.scores),
                "histogram": histogram(s.scores),
            }
            for s in summary.stats.values()
            if s.scores
        },
        "decontamination": [
            {"eval_item": item, "text": text, "rows": n}
            for s in summary.stats.values()
            for (item, text), n in s.tally.most_common()
            if item != RAISED
        ],
        # a python check's function that raised: the exception and on how many rows (each rejected)
        "raised": {
            s.name: [{"exception": text, "rows": n} for (item, text), n in s.tally.most_common() if item == RAISED]
            for s in summary.stats.values()
            if any(item == RAISED for item, _ in s.tally)
        },
    }


def to_markdown(rep: dict[str, Any], run_dir: Path) -> str:
    lines = [
        f"# Curate report: {run_dir.name}",
        "",
        f"{rep['rows_in']} rows from {rep['prompts']} prompts → **{rep['kept']} kept**, {rep['rejected']} rejected "
        f"in {rep['seconds']:.1f} s ({rep['rows_per_s']:,.0f} rows/s). Ranking score: `{rep['ranking_score']}`; "
        f"selection: `{rep['select']['strategy']}`.",
        "",
        "## Checks, in order",
        "",
        "| check | type | evaluated | rejected | rows/s |",
        "|---|---|---:|---:|---:|",
    ]
    for c in rep["checks"]:
        rate = f"{c['rows_per_s']:,.0f}" if c["rows_per_s"] else "-"
        lines.append(f"| {c['name']} | {c['type']} | {c['evaluated']} | {c['rejected']} | {rate} |")
    lines += ["", "## Kept samples per prompt", "", "| kept | prompts |", "|---:|---:|"]
    lines += [f"| {k} | {v} |" for k, v in rep["kept_per_prompt"].items()]
    if rep["scores"]:
        lines += ["", "## Scores", ""]
        for name, s in rep["scores"].items():
            lines += [
                f"**{name}**: n={s['count']}, mean {s['mean']:.3g}, min {s['min']:.3g}, max {s['max']:.3g}",
                "",
                "| from | to | rows |",
                "|---:|---:|---:|",
            ]
            lines += [f"| {b['from']:.3g} | {b['to']:.3g} | {b['count']} |" for b in s["histogram"]]
            lines.append("")
    if rep["examples"]:
        lines += ["", "## Examples of each rejection reason", ""]
        for name, examples in rep["examples"].items():
            lines.append(f"**{name}**")
            lines += [f"- `{e['id']}`: {e['reason']} — “{e['completion']}”" for e in examples]
            lines.append("")
    for check, found in rep["raised"].items():
        lines += ["", f"## `{check}` raised (each such row rejected)", "", "| rows | exception |", "|---:|---|"]
        lines += [f"| {f['rows']} | {f['exception']} |" for f in found]
    if rep["decontamination"]:
        lines += ["", "## Evaluation items found in the data", "", "| eval item | rows | text |", "|---|---:|---|"]
        lines += [f"| {m['eval_item']} | {m['rows']} | {m['text']} |" for m in rep["decontamination"]]
    return "\n".join(lines) + "\n"


def write_reports(
    out: Path, summary: CurateSummary, kept_per_prompt: dict[str, int], select: dict[str, Any]
) -> dict[str, Any]:
    rep = build_report(summary, kept_per_prompt, select)
    atomic_write_text(out / "report.json", json.dumps(rep, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out / "report.md", to_markdown(rep, summary.run_dir))
    return rep
