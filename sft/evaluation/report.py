"""`sft eval`'s verdict: rates with intervals per model, a regression warning, report files, a picture.

The report leads with four rates per model, each with a bootstrap 95% interval over prompts:
behaviour (the behaviour checks passed), clean (every other check passed, but for the token-budget
check `truncated`: see finished), joint (both: the rate that matters) and relevance (English answers
whose prompt↔answer similarity reaches the threshold). Beside them, three rates that keep apart what
a "clean" rate with the budget in it would mix (sft/evaluation/quality.py): empty (over all answers),
and over the non-empty answers only, finished (ended before the token budget) and loop-free (no
repetition loop in the text there is).

A trained student whose clean, loop-free, non-empty or relevance rate falls below 0.9× the base
student's is a quality regression: the report says WARNING and the verdict is "regressed", whatever
its behaviour rate. "finished" is not a bar: a base student that writes long would fail it, and any
student would meet it by saying little. A model that mostly says nothing, or gives one answer to most
prompts, is degenerate: a WARNING names it (whichever model it is), and a degenerate trained student
is "regressed". With fewer than two prompts (and one seed) there is nothing to resample: intervals
are None ("n/a"), never a zero-width [x, x].
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa

from sft.evaluation.benchmarks import Scores, seed_tables, summarise
from sft.evaluation.fidelity import paired
from sft.evaluation.quality import most_common_answer, normalised
from synth.curate.checks.relevance import RelevanceCheck
from synth.io import atomic_write, atomic_write_parquet, atomic_write_text
from synth.records import MESSAGE, VERDICT
from synth.stats import hierarchical_ci, mean, seed_mean, with_interval

REGRESSION = 0.9
"""A trained student regresses when its clean, loop-free, non-empty or relevance rate is below this share
of the base's."""
MOSTLY = 0.5
"""A model is degenerate when more than this share of its answers are empty, or one text answers more
than this share of the prompts it was asked."""
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
        ("seed", pa.int64()),
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
        ("empty", pa.bool_()),
        ("finished", pa.bool_()),
        ("loop_free", pa.bool_()),
        ("verdicts", pa.list_(VERDICT)),
        ("repeated_3gram_share", pa.float64()),
        ("distinct_2", pa.float64()),
        ("english", pa.bool_()),
        ("relevance", pa.float64()),
        ("teacher_similarity", pa.float64()),
    ]
)
"""eval/answers.parquet: one row per model × seed × prompt × sample (`model` = the arm, `seed` = its
training seed under `train.seeds`, else null; `prompt` = the student's view, `seen_prompt` = what this
model read; `relevance` and `teacher_similarity` null where not English; `finished`, `loop_free`,
`repeated_3gram_share` null for an empty answer, `distinct_2` for one of fewer than two words)."""


Row = dict[str, Any]


def seed_table(rows: list[Row], value: Any, prompts: list[str]) -> list[list[float | None]]:
    """table[seed][prompt]: the mean of value(row) over one seed's answers to one prompt (None: none).

    Seeds are the arm's training seeds (one row of the table for a model trained once); the prompts
    are in the report's order for every model, so two models' tables pair up prompt by prompt.
    """
    cells: dict[tuple[Any, str], list[float]] = {}
    for r in rows:
        v = value(r)
        if v is not None:
            cells.setdefault((r.get("seed"), r["prompt_id"]), []).append(float(v))
    seeds = list(dict.fromkeys(r.get("seed") for r in rows))
    return [[mean(cells.get((s, p), [])) for p in prompts] for s in seeds]


def _rate(rows: list[Row], value: Any, prompts: list[str]) -> dict[str, Any]:
    """A share with its interval: over the arm's seeds and the prompts (hierarchical bootstrap)."""
    table = seed_table(rows, lambda r: float(value(r)), prompts)
    ci = hierarchical_ci([table]) if rows else None
    return {"rate": seed_mean(table), "ci": list(ci) if ci else None, "n": len(rows)}


def _mean(rows: list[Row], key: str, prompts: list[str]) -> dict[str, Any]:
    table = seed_table(rows, lambda r: r[key], prompts)
    n = sum(r[key] is not None for r in rows)
    ci = hierarchical_ci([table]) if n else None
    return {"mean": seed_mean(table), "ci": list(ci) if ci else None, "n": n}


def model_summary(
    rows: list[dict[str, Any]],
    threshold: float,
    relevance_measured: bool,
    judges: list[str],
    prompts: list[str],
    teacher_text: str | None = None,
) -> dict[str, Any]:
    """Every per-model number of the report, from that model's answer rows (all its seeds);
    `teacher_text` is the teacher's most common answer, normalised (see `degenerate`).

    `finished`, `loop_free` and `truncated` are over the non-empty answers (an empty one has no text to
    judge), `empty` over all of them; `stops` is `finished` under its older name."""
    said = [r for r in rows if not r["empty"]]
    finished = _rate(said, lambda r: r["finished"], prompts)
    out: dict[str, Any] = {
        "answers": len(rows),
        "seeds": len({r.get("seed") for r in rows}),
        "behaviour": _rate(rows, lambda r: r["behaviour"], prompts),
        "clean": _rate(rows, lambda r: r["clean"], prompts),
        "joint": _rate(rows, lambda r: r["behaviour"] and r["clean"], prompts),
        "relevance": None,
        "relevance_coverage": None,
        "relevance_similarity": None,
        "teacher_similarity": None,
        "repeated_3gram_share": _mean(rows, "repeated_3gram_share", prompts),
        "distinct_2": _mean(rows, "distinct_2", prompts),
        "empty": _rate(rows, lambda r: r["empty"], prompts),
        "empty_answers": len(rows) - len(said),
        "finished": finished,
        "loop_free": _rate(said, lambda r: r["loop_free"], prompts),
        "truncated": _rate(said, lambda r: r["finish_reason"] == "length", prompts),
        # finished before the token limit: a student that never stops shows here first
        "stops": finished,
        "degenerate": degenerate(rows, teacher_text),
        "errors": sum(r["error"] is not None for r in rows),
        "mean_completion_tokens": mean([r["completion_tokens"] for r in rows if r["completion_tokens"] is not None]),
    }
    if relevance_measured:
        eng = [r for r in rows if r["english"]]
        out["relevance_coverage"] = len(eng) / len(rows) if rows else None
        if eng:
            out["relevance"] = _rate(eng, lambda r: r["relevance"] >= threshold, prompts)
        out["relevance_similarity"] = _mean(rows, "relevance", prompts)
        out["teacher_similarity"] = _mean(rows, "teacher_similarity", prompts)
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


def degenerate(rows: list[Row], teacher_text: str | None = None) -> str | None:
    """Why a model's answers are degenerate, or None: most of them empty, or one text answering most of
    the prompts it was asked (counted per prompt: a prompt's greedy and sampled answers may agree).
    Every text measure would call such a model fine: nothing said has no loop, one fluent answer is
    fluent everywhere. A student whose one text is the teacher's own most common answer (a refusal or
    yes/no behaviour) learned the behaviour: not degenerate."""
    empty = sum(r["empty"] for r in rows)
    if rows and empty > MOSTLY * len(rows):
        return f"{empty} of {len(rows)} answers are empty (no word, or no answer)"
    prompts = len({r["prompt_id"] for r in rows})
    common = most_common_answer((r["prompt_id"], r["answer"]) for r in rows if not r["empty"])
    if common is not None:
        text, n = common
        if n >= 2 and n > MOSTLY * prompts and normalised(text) != teacher_text:
            return f"the same answer to {n} of {prompts} prompts ({' '.join(text.split())[:60]!r})"
    return None


def _below(name: str, s: float | None, b: float | None) -> list[str]:
    if b is None or s is None or s >= REGRESSION * b:
        return []
    return [f"{name} rate {s:.3f} < {REGRESSION}× the base student's {b:.3f}"]


def regressions(models: dict[str, dict[str, Any]], trained: list[str]) -> dict[str, list[str]]:
    """Per trained student, the quality losses against the base student (empty list = none).

    The bars are about the text, not the token budget: clean (the recipe's checks but `truncated`, so a
    refusal or an echo still counts), loop-free (over non-empty answers), non-empty (1 − the empty
    rate: a student that stops answering cannot hide behind a perfect loop-free rate on the few answers
    it gives) and relevance.
    """
    base = models.get("base_student")
    out: dict[str, list[str]] = {}
    for name in trained:
        m = models[name]
        found = []
        if base is not None:
            found += _below("clean", m["clean"]["rate"], base["clean"]["rate"])
            found += _below("loop-free", m["loop_free"]["rate"], base["loop_free"]["rate"])
            said = [None if x["empty"]["rate"] is None else 1 - x["empty"]["rate"] for x in (m, base)]
            found += _below("non-empty", *said)
            cov = [x.get("relevance_coverage") or 0 for x in (base, m)]
            if base["relevance"] and m["relevance"] and min(cov) >= MIN_RELEVANCE_COVERAGE:
                found += _below("relevance", m["relevance"]["rate"], base["relevance"]["rate"])
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
    fidelity: dict[str, list[tuple[int | None, dict[str, Any]]]],
    seconds: dict[str, float],
    differences: dict[str, list[str] | None] | None = None,
    benchmarks: Scores | None = None,
    benchmarks_note: str | None = None,
    speed: dict[str, dict[str, Any]] | None = None,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """report.json's content from the judged answer rows; `fidelity` holds each arm's measures per seed,
    `benchmarks` each arm's lm-eval scores per seed (`eval.benchmarks`), `notes` what the eval left
    out of its inputs (repeated or empty prompts), said in report.md too."""
    threshold = DEFAULT_RELEVANCE if relevance_threshold is None else relevance_threshold
    order = list(dict.fromkeys(r["prompt_id"] for r in rows))
    teacher_common = most_common_answer(
        (r["prompt_id"], r["answer"]) for r in rows if r["model"] == "teacher" and not r["empty"]
    )
    teacher_text = normalised(teacher_common[0]) if teacher_common else None
    models = {
        n: model_summary(
            [r for r in rows if r["model"] == n],
            threshold,
            relevance_measured,
            judges,
            order,
            None if n == "teacher" else teacher_text,
        )
        for n in names
    }
    arms = {n: combine_seeds(fidelity[n]) for n in names if n in fidelity}
    for n in names:
        models[n]["agreement_top1_with_teacher"] = arms.get(n, {}).get("agreement_top1")
        models[n]["seconds"] = seconds.get(n)
        greedy = [r for r in rows if r["model"] == n and r["sample_index"] == 0]
        models[n]["examples"] = [
            {"prompt": r["prompt"][-1]["content"], "answer": r["answer"]} for r in greedy[:EXAMPLES]
        ]
    trained = [n for n in names if n not in ("teacher", "base_student")]
    found = regressions(models, trained)
    warnings = [f"WARNING: {n} is degenerate: {m['degenerate']}" for n, m in models.items() if m["degenerate"]]
    warnings += [f"WARNING: {n} regressed in quality: {'; '.join(w)}" for n, w in found.items() if w]
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
        "verdict": {n: ("regressed" if found[n] or models[n]["degenerate"] else "ok") for n in trained},
        "warnings": warnings,
        "notes": list(notes or []),
        "fidelity": {n: _without(arms[n], "agreement_top1") | {"stops": models[n]["stops"]} for n in arms},
        "fidelity_paired": fidelity_pairs(arms, trained),
        "comparisons": comparisons(rows, arms, trained, order, differences or {})
        + benchmark_comparisons(benchmarks or {}, trained, differences or {}),
        "benchmarks": summarise(benchmarks or {}),
        "benchmarks_note": benchmarks_note,
        "speed": speed or {},
    }


def combine_seeds(entries: list[tuple[int | None, dict[str, Any]]]) -> dict[str, Any]:
    """One arm's fidelity over its seeds: today's keys (means over seeds of per-seed means over prompts,
    intervals resampling seeds then prompts, per-prompt values averaged over seeds) plus `seeds`."""
    kl_table = [e["kl_per_prompt"] for _, e in entries]
    nll_table = [e["nll_per_prompt"] for _, e in entries]
    has_kl = all(e["kl"] is not None for _, e in entries)
    nll = seed_mean(nll_table)

    def per_prompt(table: list[list[float | None]]) -> list[float | None]:
        return [mean([v for v in col if v is not None]) for col in zip(*table, strict=True)]

    def over_seeds(key: str) -> float | None:
        values = [e[key] for _, e in entries if e.get(key) is not None]
        return mean(values)

    stop_table = [e.get("stop_nll_per_prompt") or [None] * len(e["nll_per_prompt"]) for _, e in entries]
    stop_ci = hierarchical_ci([stop_table])
    kl_ci = hierarchical_ci([kl_table]) if has_kl else None
    nll_ci = hierarchical_ci([nll_table])
    return {
        "kl": seed_mean(kl_table) if has_kl else None,
        "kl_ci": list(kl_ci) if kl_ci else None,
        "nll": nll,
        "nll_ci": list(nll_ci) if nll_ci else None,
        "perplexity": None if nll is None else math.exp(nll),
        "kl_per_prompt": per_prompt(kl_table) if has_kl else [None] * len(kl_table[0]),
        "nll_per_prompt": per_prompt(nll_table),
        "stop_nll": seed_mean(stop_table),
        "stop_nll_ci": list(stop_ci) if stop_ci else None,
        "stop_nll_per_prompt": per_prompt(stop_table),
        "params": entries[0][1]["params"],
        "tokens_per_s": over_seeds("tokens_per_s"),
        "agreement_top1": over_seeds("agreement_top1"),
        "seeds": [
            {k: e.get(k) for k in ("kl", "nll", "stop_nll", "kl_per_prompt", "nll_per_prompt", "stop_nll_per_prompt")}
            | {"seed": seed}
            for seed, e in entries
        ],
    }


COMPARED = ("kl", "nll", "stop_nll", "behaviour")
"""The metrics every comparison reports: KL to the teacher, NLL of its answers and of its end-of-turn
token after the answers it finished (lower is closer: a student that does not stop shows in stop_nll),
and the behaviour rate."""


def comparisons(
    rows: list[Row],
    arms: dict[str, dict[str, Any]],
    trained: list[str],
    prompts: list[str],
    differences: dict[str, list[str] | None],
) -> list[dict[str, Any]]:
    """Paired differences a − b between every two trained arms and each trained arm and the base student:
    intervals resample each arm's seeds and the shared prompts; `differences` names what besides the
    method differed between the two arms' training (None for the base student, which was not trained)."""
    pairs = [(a, b) for i, a in enumerate(trained) for b in trained[i + 1 :]] + [(a, "base_student") for a in trained]
    out = []
    for a, b in pairs:
        for metric in COMPARED:
            if metric == "behaviour":
                ta, tb = (
                    seed_table([r for r in rows if r["model"] == x], lambda r: r["behaviour"], prompts) for x in (a, b)
                )
            else:
                if a not in arms or b not in arms or arms[a][metric] is None or arms[b][metric] is None:
                    continue
                ta, tb = ([s[f"{metric}_per_prompt"] for s in arms[x]["seeds"]] for x in (a, b))
            if row := paired_row(a, b, metric, ta, tb, differences):
                out.append(row)
    return out


def paired_row(
    a: str,
    b: str,
    metric: str,
    ta: list[list[float | None]],
    tb: list[list[float | None]],
    differences: dict[str, list[str] | None],
) -> dict[str, Any] | None:
    """One `comparisons` entry: a − b of the means over seeds, its interval resampling each side's seeds
    and the shared prompts (or examples) together; None when either side has no value."""
    if not ta or not tb:
        return None
    va, vb = seed_mean(ta), seed_mean(tb)
    if va is None or vb is None:
        return None
    ci = hierarchical_ci([ta, tb], (1.0, -1.0))
    both = sum(
        any(row[p] is not None for row in ta) and any(row[p] is not None for row in tb) for p in range(len(ta[0]))
    )
    untrained = {"base_student", "teacher"}
    return {
        "a": a,
        "b": b,
        "metric": metric,
        "diff": va - vb,
        "ci": list(ci) if ci else None,
        "seeds": [len(ta), len(tb)],
        "prompts": both,
        # None: not known (the base student or teacher was not trained, or a recipe is unreadable)
        "differences": None if a in untrained or b in untrained else differences.get(f"{a} - {b}"),
    }


def benchmark_comparisons(
    scores: Scores, trained: list[str], differences: dict[str, list[str] | None]
) -> list[dict[str, Any]]:
    """Paired differences on each benchmark task (metric `<task>/<metric>`, above zero: a is better):
    every two trained arms, each trained arm against the base student and against the teacher (how much
    of the teacher's score a student keeps), and the base student against the teacher."""
    pairs = [(a, b) for i, a in enumerate(trained) for b in trained[i + 1 :]]
    pairs += [(a, "base_student") for a in trained] + [(a, "teacher") for a in [*trained, "base_student"]]
    out = []
    tasks = dict.fromkeys(t for entries in scores.values() for _, ts in entries for t in ts)
    for task in tasks:
        tables = seed_tables(scores, task)
        metric = next(ts[task].metric for entries in scores.values() for _, ts in entries if task in ts)
        for a, b in [(a, b) for a, b in pairs if a in tables and b in tables]:
            if row := paired_row(a, b, f"{task}/{metric}", tables[a], tables[b], differences):
                out.append(row)
    return out


def _without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


def fidelity_pairs(fidelity: dict[str, dict[str, Any]], trained: list[str]) -> dict[str, dict[str, Any]]:
    """Per-prompt paired differences "a - b" (KL and NLL; below zero: a is closer to the teacher) between
    every two trained models and between each trained model and the base student (per-prompt values
    averaged over seeds; `comparisons` has the intervals over seeds too)."""
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
                _cell(m["finished"]),
                _cell(m["loop_free"]),
                _cell(m["empty"]),
                _cell(m["repeated_3gram_share"], "mean"),
                _cell(m["distinct_2"], "mean"),
                rep["verdict"].get(name, "-"),
            ]
        )
    return out


HEADLINE = [
    "model",
    *RATES,
    "behaviour × teacher",
    "finished",
    "loop-free",
    "empty",
    "repeated 3-grams",
    "distinct-2",
    "verdict",
]


def to_markdown(rep: dict[str, Any]) -> str:
    lines = [
        "# Evaluation: what the student gained and what it lost",
        "",
        f"{rep['prompts']} held-out prompts × {rep['samples_per_prompt']} answer(s) per model (sample 0 greedy). "
        f"Behaviour: {', '.join(f'`{b}`' for b in rep['behaviour_checks'])} all pass. Clean: every other curate "
        f"check passes (but `truncated`: see finished). Joint: both. Relevance: prompt↔answer similarity ≥ "
        f"{rep['relevance_threshold']} (all-MiniLM-L6-v2; {rep['relevance_note']}). Empty: no word in the "
        "answer; finished (ended before the token budget) and loop-free (repeated 3-grams and lines ≤ 0.3): "
        "over the non-empty answers. Brackets: bootstrap 95% intervals over prompts (and over training "
        "seeds, for arms trained with several); n/a: nothing to resample (one prompt).",
        "",
    ]
    lines += [f"Note: {n}" for n in rep.get("notes") or []] + ([""] if rep.get("notes") else [])
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
    lines += speed_markdown(rep)
    lines += benchmarks_markdown(rep)
    lines += comparisons_markdown(rep)
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


def speed_markdown(rep: dict[str, Any]) -> list[str]:
    """bench/speed.py's measurement per model, when the run folder has one (the eval's is indicative)."""
    speed = rep.get("speed") or {}
    if not speed:
        return []
    first = next(iter(speed.values()))
    lines = [
        "",
        "## Generation speed (bench/speed.py)",
        "",
        f"Each model in a fresh process, greedy, {first['new_tokens']} new tokens (end-of-sequence ignored), "
        f"one warm-up then {first['repeats']} repeats: median tokens/s and the min-max spread. Faster only "
        "when the spreads separate.",
        "",
        "| model | params | GFLOP/token | batch | tokens/s | spread | vs teacher |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, s in speed.items():
        for key, b in s["by_batch"].items():
            lo, hi = b["tokens_per_s_spread"]
            vs = (s.get("vs_teacher") or {}).get(key, "-")
            lines.append(
                f"| {name} | {b['params'] / 1e6:.1f}M | {b['flops_per_token'] / 1e9:.2f} | {b['batch']} | "
                f"{b['tokens_per_s_median']:.1f} | {lo:.1f}-{hi:.1f} | {vs} |"
            )
    return lines


BENCHMARK_HEADER = ["model", "task", "metric", "value", "× teacher", "examples", "seeds"]


def benchmark_rows(rep: dict[str, Any]) -> list[list[str]]:
    """One row per model and lm-eval task: the score with its interval, and its share of the teacher's."""
    bench = rep.get("benchmarks") or {}
    teacher = bench.get("teacher", {})
    out = []
    for name, tasks in bench.items():
        for task, b in tasks.items():
            ref = (teacher.get(task) or {}).get("value")
            share = "-" if not ref or b["value"] is None else f"{b['value'] / ref:.2f}"
            value = "n/a" if b["value"] is None else with_interval(b["value"], b["ci"])
            out.append([name, task, b["metric"], value, share, str(b["examples"]), str(len(b["seeds"]))])
    return out


def benchmarks_markdown(rep: dict[str, Any]) -> list[str]:
    """The benchmark table (`eval.benchmarks`), or why some model has none."""
    rows, note = benchmark_rows(rep), rep.get("benchmarks_note")
    if not rows and not note:
        return []
    lines = ["", "## Benchmarks (lm-evaluation-harness)", ""] + ([note, ""] if note else [])
    if rows:
        lines += [
            "Each task's first metric, mean over examples (and over training seeds) [bootstrap 95% interval "
            "over seeds, then examples]; × teacher: the model's score as a share of the teacher's.",
            "",
            "| " + " | ".join(BENCHMARK_HEADER) + " |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def comparisons_markdown(rep: dict[str, Any]) -> list[str]:
    """Each paired comparison with its interval over seeds and prompts, and what else differed."""
    rows = rep.get("comparisons") or []
    if not rows:
        return []
    lines = [
        "",
        "## Comparisons (a − b; KL, NLL and stop NLL below zero, behaviour and benchmarks above zero: a is better)",
        "",
        "Intervals resample each arm's training seeds and the shared prompts. A difference is about the "
        "method only where nothing else differed.",
        "",
        "| a − b | metric | difference | seeds | prompts | also differed |",
        "|---|---|---:|---:|---:|---|",
    ]
    for c in rows:
        if {c["a"], c["b"]} & {"base_student", "teacher"}:
            other = "n/a (untrained)"
        elif c["differences"] is None:
            other = "unknown (a resolved recipe or log is missing)"
        else:
            other = "; ".join(c["differences"]) or "nothing"
        lines.append(
            f"| {c['a']} − {c['b']} | {c['metric']} | {with_interval(c['diff'], c['ci'])} | "
            f"{c['seeds'][0]} vs {c['seeds'][1]} | {c['prompts']} | {other} |"
        )
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


def finite(obj: Any) -> Any:
    """`obj` with every NaN or infinity as None: json.dumps would write bare NaN, which is not JSON and
    which `json.load` elsewhere (jq, a browser, the Hub) refuses."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def write_outputs(out: Path, report: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """answers.parquet (the judged rows in ANSWERS_SCHEMA), report.json, report.md and report.png, atomically."""
    answers = pa.Table.from_pylist([{f.name: r.get(f.name) for f in ANSWERS_SCHEMA} for r in rows], ANSWERS_SCHEMA)
    atomic_write_parquet(out / "answers.parquet", answers)
    report["headline"] = {"columns": HEADLINE, "rows": headline_rows(report)}
    report["picture"] = "report.png" if draw(report, out / "report.png") else None
    text = json.dumps(finite(report), indent=2, ensure_ascii=False, allow_nan=False)
    atomic_write_text(out / "report.json", text + "\n")
    atomic_write_text(out / "report.md", to_markdown(report))
