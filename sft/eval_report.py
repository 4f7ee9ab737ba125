"""`sft eval`'s verdict: rates with intervals per model, a regression warning, report files, a picture.

The report leads with four rates per model, each with a bootstrap 95% interval over prompts:
behaviour (the behaviour checks passed), clean (every other check passed), joint (both: the rate
that matters) and relevance (English answers whose prompt↔answer similarity reaches the threshold).
A trained student whose clean or relevance rate falls below 0.9× the base student's is a quality
regression: the report says WARNING and the verdict is "regressed", whatever its behaviour rate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from sft.fidelity import paired
from synth.curate.checks.relevance import RelevanceCheck
from synth.io import atomic_write, atomic_write_parquet, atomic_write_text
from synth.records import MESSAGE, VERDICT
from synth.stats import bootstrap_ci, mean, with_interval

REGRESSION = 0.9
"""A trained student regresses when its clean or relevance rate is below this share of the base's."""
DEFAULT_RELEVANCE: float = RelevanceCheck.model_fields["min_similarity"].default
"""Prompt↔answer similarity at which an answer counts as relevant, when curate has no relevance check.
0.3: on 40 seed prompts, 1-2 of SmolLM2's real answers fall below it and 0-1 of 40 mismatched pairs reach it."""
MIN_RELEVANCE_COVERAGE = 0.5
"""Relevance is compared only when it applies (English answers) to at least this share of both models."""
RATES = ("behaviour", "clean", "joint", "relevance")
EXAMPLES = 3

ANSWERS_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("prompt_id", pa.string()),
        ("prompt", pa.list_(MESSAGE)),
        ("seen_prompt", pa.list_(MESSAGE)),
        ("sample_index", pa.int32()),
        ("answer", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("error", pa.string()),
        ("behaviour", pa.bool_()),
        ("clean", pa.bool_()),
        ("verdicts", pa.list_(VERDICT)),
        ("repeated_3gram_share", pa.float64()),
        ("distinct_2", pa.float64()),
        ("english", pa.bool_()),
        ("relevance", pa.float64()),
        ("teacher_similarity", pa.float64()),
    ]
)
"""eval/answers.parquet: one row per model × prompt × sample (`prompt` = the student's view,
`seen_prompt` = what this model read; `relevance` and `teacher_similarity` null where not English)."""


def _rate(values: list[bool], groups: list[str]) -> dict[str, Any]:
    floats = [float(v) for v in values]
    ci = bootstrap_ci(floats, groups)
    return {"rate": mean(floats), "ci": list(ci) if ci else None, "n": len(values)}


def _mean(values: list[float | None], groups: list[str]) -> dict[str, Any]:
    pairs = [(v, g) for v, g in zip(values, groups, strict=True) if v is not None]
    ci = bootstrap_ci([v for v, _ in pairs], [g for _, g in pairs])
    return {"mean": mean([v for v, _ in pairs]), "ci": list(ci) if ci else None, "n": len(pairs)}


def model_summary(
    rows: list[dict[str, Any]], threshold: float, relevance_measured: bool, judges: list[str]
) -> dict[str, Any]:
    """Every per-model number of the report, from that model's answer rows."""
    g = [r["prompt_id"] for r in rows]
    out: dict[str, Any] = {
        "answers": len(rows),
        "behaviour": _rate([r["behaviour"] for r in rows], g),
        "clean": _rate([r["clean"] for r in rows], g),
        "joint": _rate([r["behaviour"] and r["clean"] for r in rows], g),
        "relevance": None,
        "relevance_coverage": None,
        "relevance_similarity": None,
        "teacher_similarity": None,
        "repeated_3gram_share": _mean([r["repeated_3gram_share"] for r in rows], g),
        "distinct_2": _mean([r["distinct_2"] for r in rows], g),
        "truncated": _rate([r["finish_reason"] == "length" for r in rows], g),
        # finished before the token limit: a student that never stops shows here first
        "stops": _rate([r["finish_reason"] == "stop" for r in rows], g),
        "errors": sum(r["error"] is not None for r in rows),
        "mean_completion_tokens": mean([r["completion_tokens"] for r in rows if r["completion_tokens"] is not None]),
    }
    if relevance_measured:
        eng = [r for r in rows if r["english"]]
        out["relevance_coverage"] = len(eng) / len(rows) if rows else None
        if eng:
            out["relevance"] = _rate([r["relevance"] >= threshold for r in eng], [r["prompt_id"] for r in eng])
        out["relevance_similarity"] = _mean([r["relevance"] for r in rows], g)
        out["teacher_similarity"] = _mean([r["teacher_similarity"] for r in rows], g)
    names = list(dict.fromkeys(v["name"] for r in rows for v in r["verdicts"]))  # rows with an error have none
    out["checks"] = {
        n: mean([float(any(v["name"] == n and v["passed"] for v in r["verdicts"])) for r in rows]) for n in names
    }
    scores = {
        j: [v["score"] for r in rows for v in r["verdicts"] if v["name"] == j and v["score"] is not None]
        for j in judges
    }
    out["judge_mean_score"] = {j: mean(s) for j, s in scores.items()} or None
    return out


def regressions(models: dict[str, dict[str, Any]], trained: list[str]) -> dict[str, list[str]]:
    """Per trained student, the quality losses against the base student (empty list = none)."""
    base = models.get("base_student")
    out: dict[str, list[str]] = {}
    for name in trained:
        m = models[name]
        found = []
        if base is not None:
            b, s = base["clean"]["rate"], m["clean"]["rate"]
            if b is not None and s is not None and s < REGRESSION * b:
                found.append(f"clean rate {s:.3f} < {REGRESSION}× the base student's {b:.3f}")
            cov = [x.get("relevance_coverage") or 0 for x in (base, m)]
            if base["relevance"] and m["relevance"] and min(cov) >= MIN_RELEVANCE_COVERAGE:
                b, s = base["relevance"]["rate"], m["relevance"]["rate"]
                if s < REGRESSION * b:
                    found.append(f"relevance rate {s:.3f} < {REGRESSION}× the base student's {b:.3f}")
        out[name] = found
    return out


def build_report(
    rows: list[dict[str, Any]],
    names: list[str],
    *,
    behaviour: list[str],
    prompts: int,
    samples: int,
    relevance_threshold: float | None,
    relevance_measured: bool,
    judges: list[str],
    fidelity: dict[str, dict[str, Any]],
    seconds: dict[str, float],
) -> dict[str, Any]:
    """report.json's content from the judged answer rows."""
    threshold = DEFAULT_RELEVANCE if relevance_threshold is None else relevance_threshold
    models = {
        n: model_summary([r for r in rows if r["model"] == n], threshold, relevance_measured, judges) for n in names
    }
    for n in names:
        models[n]["agreement_top1_with_teacher"] = fidelity.get(n, {}).get("agreement_top1")
        models[n]["seconds"] = seconds.get(n)
        greedy = [r for r in rows if r["model"] == n and r["sample_index"] == 0]
        models[n]["examples"] = [
            {"prompt": r["prompt"][-1]["content"], "answer": r["answer"]} for r in greedy[:EXAMPLES]
        ]
    trained = [n for n in names if n not in ("teacher", "base_student")]
    found = regressions(models, trained)
    warnings = [f"WARNING: {n} regressed in quality: {'; '.join(w)}" for n, w in found.items() if w]
    teacher = models.get("teacher", {}).get("behaviour", {}).get("rate")
    cov = [models[n]["relevance_coverage"] for n in names if models[n]["relevance_coverage"] is not None]
    return {
        "prompts": prompts,
        "samples_per_prompt": 1 + samples,
        "behaviour_checks": behaviour,
        "relevance_threshold": threshold,
        "relevance_note": _relevance_note(relevance_measured, cov),
        "models": models,
        "ratio_to_teacher": {n: (m["behaviour"]["rate"] / teacher if teacher else None) for n, m in models.items()},
        "verdict": {n: ("regressed" if found[n] else "ok") for n in trained},
        "warnings": warnings,
        "fidelity": {
            n: _without(fidelity[n], "agreement_top1") | {"stops": models[n]["stops"]} for n in names if n in fidelity
        },
        "fidelity_paired": fidelity_pairs(fidelity, trained),
    }


def _without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


def fidelity_pairs(fidelity: dict[str, dict[str, Any]], trained: list[str]) -> dict[str, dict[str, Any]]:
    """Per-prompt paired differences "a - b" (KL and NLL; below zero: a is closer to the teacher) between
    every two trained models and between each trained model and the base student."""
    pairs = [(a, "base_student") for a in trained] + [(a, b) for i, a in enumerate(trained) for b in trained[i + 1 :]]
    out = {}
    for a, b in pairs:
        if a in fidelity and b in fidelity:
            fa, fb = fidelity[a], fidelity[b]
            kl = None if fa["kl"] is None or fb["kl"] is None else paired(fa["kl_per_prompt"], fb["kl_per_prompt"])
            out[f"{a} - {b}"] = {"kl": kl, "nll": paired(fa["nll_per_prompt"], fb["nll_per_prompt"])}
    return out


def _relevance_note(measured: bool, coverage: list[float]) -> str:
    if not measured:
        return "relevance not measured: install the relevance extra"
    note = "English answers only"
    if coverage and min(coverage) < 1:
        note += f"; for one model only {min(coverage):.0%} of the answers are English"
    return note


def _cell(rate: dict[str, Any] | None, key: str = "rate") -> str:
    if not rate or rate.get(key) is None:
        return "n/a"
    return with_interval(rate[key], rate.get("ci"))


def headline_rows(rep: dict[str, Any]) -> list[list[str]]:
    """The table both report.md and the console lead with: one row per model."""
    out = []
    for name, m in rep["models"].items():
        ratio = rep["ratio_to_teacher"].get(name)
        out.append(
            [
                name,
                *(_cell(m[k]) for k in RATES),
                "-" if ratio is None else f"{ratio:.2f}",
                _cell(m["stops"]),
                _cell(m["repeated_3gram_share"], "mean"),
                _cell(m["distinct_2"], "mean"),
                rep["verdict"].get(name, "-"),
            ]
        )
    return out


HEADLINE = ["model", *RATES, "behaviour × teacher", "stops", "repeated 3-grams", "distinct-2", "verdict"]


def to_markdown(rep: dict[str, Any]) -> str:
    lines = [
        "# Evaluation: what the student gained and what it lost",
        "",
        f"{rep['prompts']} held-out prompts × {rep['samples_per_prompt']} answer(s) per model (sample 0 greedy). "
        f"Behaviour: {', '.join(f'`{b}`' for b in rep['behaviour_checks'])} all pass. Clean: every other curate "
        f"check passes. Joint: both. Relevance: prompt↔answer similarity ≥ {rep['relevance_threshold']} "
        f"(all-MiniLM-L6-v2; {rep['relevance_note']}). Brackets: bootstrap 95% intervals over prompts.",
        "",
    ]
    lines += [f"**{w}**" for w in rep["warnings"]] + ([""] if rep["warnings"] else [])
    lines += ["| " + " | ".join(HEADLINE) + " |", "|---|" + "---:|" * (len(HEADLINE) - 2) + "---|"]
    lines += ["| " + " | ".join(r) + " |" for r in headline_rows(rep)]
    lines += [
        "",
        "## More per model",
        "",
        "| model | truncated | mean tokens | similarity to prompt | similarity to teacher | "
        "top-1 agreement with teacher | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in rep["models"].items():
        agree = m["agreement_top1_with_teacher"]
        tokens = m["mean_completion_tokens"]
        lines.append(
            f"| {name} | {_cell(m['truncated'])} | {'-' if tokens is None else f'{tokens:.0f}'} | "
            f"{_cell(m['relevance_similarity'], 'mean')} | {_cell(m['teacher_similarity'], 'mean')} | "
            f"{'-' if agree is None else f'{agree:.3f}'} | {m['seconds']} |"
        )
    lines += fidelity_markdown(rep)
    names = list(next(iter(rep["models"].values()))["checks"]) if rep["models"] else []
    if names:
        lines += ["", "## Every check, as pass rates", "", "| model | " + " | ".join(names) + " |"]
        lines.append("|---|" + "---:|" * len(names))
        for model, m in rep["models"].items():
            lines.append(f"| {model} | " + " | ".join(f"{m['checks'][n]:.3f}" for n in names) + " |")
    if rep.get("win_rates"):
        lines += ["", "## Human preference (Argilla, blind side by side)", ""]
        lines += [f"- {m}: {w['rate']:.3f} of {w['n']} comparisons" for m, w in rep["win_rates"].items()]
    lines += ["", "## Examples (greedy answers; every answer is in answers.parquet)", ""]
    for name, m in rep["models"].items():
        lines.append(f"**{name}**")
        lines += [f"- {e['prompt']} → {' '.join(e['answer'].split())[:200]}" for e in m["examples"]]
        lines.append("")
    return "\n".join(lines) + "\n"


def fidelity_markdown(rep: dict[str, Any]) -> list[str]:
    """Size, speed, closeness to the teacher and behaviour in one table, then the paired differences."""
    fid = rep.get("fidelity") or {}
    if not fid:
        return []
    lines = [
        "",
        "## Fidelity to the teacher (teacher-forced on its greedy answers)",
        "",
        "KL(teacher ‖ model) per answer token and perplexity of the teacher's answers (each finished answer "
        "with its end-of-turn token), means over prompts [bootstrap 95% intervals]; stop NLL: of that "
        "end-of-turn token alone; stops: the model's own answers finished before the token limit; "
        "tokens/s: greedy generation, same prompts and batch size (indicative: one timed pass).",
        "",
        "| model | params | tokens/s | KL to teacher | NLL | perplexity | stop NLL | stops | behaviour |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, f in fid.items():
        kl = "n/a" if f["kl"] is None else with_interval(f["kl"], f["kl_ci"])
        nll = "n/a" if f["nll"] is None else with_interval(f["nll"], f["nll_ci"])
        ppl = "n/a" if f["perplexity"] is None else f"{f['perplexity']:.2f}"
        speed = "n/a" if f.get("tokens_per_s") is None else f"{f['tokens_per_s']:.1f}"
        stop = "n/a" if f.get("stop_nll") is None else with_interval(f["stop_nll"], f.get("stop_nll_ci"))
        lines.append(
            f"| {name} | {f['params'] / 1e6:.1f}M | {speed} | {kl} | {nll} | {ppl} | {stop} | "
            f"{_cell(f.get('stops'))} | {_cell(rep['models'][name]['behaviour'])} |"
        )
    pairs = rep.get("fidelity_paired") or {}
    if pairs:
        lines += ["", "Paired per-prompt differences (below zero: the first is closer to the teacher):", ""]
        lines += ["| pair | KL difference | NLL difference | prompts |", "|---|---:|---:|---:|"]
        for pair, d in pairs.items():
            kl = "n/a" if d["kl"] is None else with_interval(d["kl"]["mean"], d["kl"]["ci"])
            nll = "n/a" if d["nll"] is None else with_interval(d["nll"]["mean"], d["nll"]["ci"])
            lines.append(f"| {pair} | {kl} | {nll} | {(d['nll'] or {}).get('prompts', 0)} |")
    return lines


def draw(rep: dict[str, Any], path: Path) -> bool:
    """eval/report.png: the four rates per model with interval whiskers; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = list(rep["models"])
    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        m = rep["models"][name]
        xs, ys, lo, hi = [], [], [], []
        for i, k in enumerate(RATES):
            r = m[k]
            if not r or r["rate"] is None:
                continue
            xs.append(i + (j - (len(names) - 1) / 2) * width)
            ys.append(r["rate"])
            ci = r["ci"] or [r["rate"], r["rate"]]
            lo.append(r["rate"] - ci[0])
            hi.append(ci[1] - r["rate"])
        label = name + (" (REGRESSED)" if rep["verdict"].get(name) == "regressed" else "")
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=label)
    ax.set_xticks(range(len(RATES)), list(RATES))
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of answers (95% CI)")
    ax.set_title(f"sft eval: {rep['prompts']} held-out prompts × {rep['samples_per_prompt']} answer(s)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return True


def write_outputs(out: Path, report: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """answers.parquet (the judged rows in ANSWERS_SCHEMA), report.json, report.md and report.png, atomically."""
    answers = pa.Table.from_pylist([{f.name: r.get(f.name) for f in ANSWERS_SCHEMA} for r in rows], ANSWERS_SCHEMA)
    atomic_write_parquet(out / "answers.parquet", answers)
    report["headline"] = {"columns": HEADLINE, "rows": headline_rows(report)}
    report["picture"] = "report.png" if draw(report, out / "report.png") else None
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out / "report.md", to_markdown(report))
