"""Blind side-by-side preference on `sft eval` answers: `synth review push --eval` / `pull --eval`.

One Argilla record per held-out prompt: the prompt and every model's greedy answer (teacher, base
student, trained students) as `answer_1..answer_N` in an order shuffled per prompt (seeded), so a
reviewer cannot tell which model wrote which. The question `best` asks for the best answer, or
`tie`. Which slot holds which model is kept only on disk (`review/eval_pushed.parquet`), never in
the record. The record id hashes the answers shown, so after a new `sft eval` a push makes new
records and choices made on the old answers no longer count. `pull --eval` maps each submitted
choice back to a model and writes win rates: a model wins a comparison when a reviewer picks its
answer; its win rate is wins / comparisons it was in, with a bootstrap interval over records.
They go into eval/report.json (`win_rates`) and eval/report.md, and into review/eval_preferences.json.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
import warnings
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from synth.errors import UserError
from synth.io import atomic_write_parquet, atomic_write_text, read_json, read_parquet
from synth.recipe import Recipe
from synth.review.connect import api_errors, api_url, connect, import_argilla
from synth.stats import bootstrap_ci, mean, with_interval

BEST, TIE = "best", "tie"
PREFERENCE_SECTION = "## Human preference (Argilla, blind side by side)"
GUIDELINES = """\
Each record is one prompt and several answers to it, written by different models. Their order is
shuffled for every prompt, and nothing tells which model wrote which.

- **best**: the answer you would rather receive (helpful, correct, fluent, on topic); `tie` when
  you cannot choose.
"""
PUSHED_SCHEMA = pa.schema(
    [("record_id", pa.string()), ("prompt_id", pa.string()), ("slot", pa.int32()), ("model", pa.string())]
)


def dataset_name(recipe: Recipe) -> str:
    """The eval comparison's Argilla dataset: the review dataset's name + `-eval`."""
    return f"{recipe.review.dataset or recipe.name}-eval"


def _answers(run_dir: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """prompt_id -> model -> its greedy answer row, from eval/answers.parquet."""
    path = run_dir / "eval" / "answers.parquet"
    if not path.is_file():
        raise UserError(f"no eval answers at {path}", "run `sft eval` with the same recipe first")
    columns = ["model", "prompt_id", "prompt", "sample_index", "answer"]
    try:  # answers files from before train.seeds have no seed column
        seeded = "seed" in pq.read_schema(path).names
    except (OSError, pa.ArrowException):
        seeded = False  # read_parquet says what is wrong with the file
    columns += ["seed"] if seeded else []
    rows = read_parquet(path, "an eval answers file", columns, "run `sft eval` again").to_pylist()
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r["sample_index"] == 0:
            # each seed of an arm trained with train.seeds is its own contestant
            name = r["model"] if r.get("seed") is None else f"{r['model']}/seed-{r['seed']}"
            out.setdefault(r["prompt_id"], {})[name] = r
    return out


def slots_for(prompt_id: str, models: list[str], seed: int) -> list[str]:
    """The shuffled model order shown for one prompt (the same on every push)."""
    order = sorted(models)
    random.Random(f"{seed}:{prompt_id}").shuffle(order)
    return order


def _settings(rg: Any, slots: int) -> Any:
    fields = [rg.ChatField("prompt", title="Prompt")]
    fields += [rg.TextField(f"answer_{i}", title=f"Answer {i}", use_markdown=True) for i in range(1, slots + 1)]
    labels = [f"answer_{i}" for i in range(1, slots + 1)] + [TIE]
    question = rg.LabelQuestion(BEST, labels=labels, title="Which answer is best?")
    return rg.Settings(fields=fields, questions=[question], guidelines=GUIDELINES, allow_extra_metadata=False)


def _record_id(prompt_id: str, shown: list[str]) -> str:
    """The prompt and a hash of the answers shown: after a new `sft eval`, old choices do not count for new answers."""
    digest = hashlib.sha256(json.dumps(shown, ensure_ascii=False).encode()).hexdigest()[:10]
    return "eval-" + re.sub(r"[^A-Za-z0-9_-]", "_", prompt_id) + "-" + digest


def _dataset(client: Any, recipe: Recipe, workspace: str | None, slots: int | None) -> Any:
    """The comparison dataset; created on push (slots given), required on pull."""
    from synth.review.stage import workspace_for

    rg = import_argilla()
    ws = workspace_for(client, workspace or recipe.review.workspace)
    name = dataset_name(recipe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = client.datasets(name, workspace=ws)
    if ds is None:
        if slots is None:
            raise UserError(
                f"no Argilla dataset {name!r} in workspace {ws.name!r}", "run `synth review push --eval` first"
            )
        return rg.Dataset(name=name, workspace=ws, settings=_settings(rg, slots), client=client).create()
    have = [f.name for f in ds.settings.fields if f.name.startswith("answer_")]
    if slots is not None and len(have) != slots:
        raise UserError(
            f"the Argilla dataset {name!r} shows {len(have)} answers per prompt, this eval has {slots} models",
            "delete that dataset in Argilla, or set `review.dataset` to a new name",
        )
    return ds


def run_push_eval(
    recipe: Recipe, run_dir: Path, workspace: str | None = None, sample: int | None = None
) -> dict[str, Any]:
    """Log one blind comparison record per eval prompt; returns the counts."""
    client = connect(recipe.review)
    answers = _answers(run_dir)
    models = sorted({m for per in answers.values() for m in per})
    prompts = sorted(p for p, per in answers.items() if len(per) == len(models))
    if len(models) < 2 or not prompts:
        raise UserError(f"{run_dir / 'eval' / 'answers.parquet'} has fewer than two models to compare")
    if sample is not None and sample < len(prompts):
        prompts = sorted(random.Random(recipe.review.seed).sample(prompts, sample))
    start = time.perf_counter()
    rg = import_argilla()
    mapping, records = [], []
    for pid in prompts:
        order = slots_for(pid, models, recipe.review.seed)
        shown = [answers[pid][m]["answer"] or "(empty answer)" for m in order]
        rid = _record_id(pid, shown)
        fields: dict[str, Any] = {"prompt": answers[pid][order[0]]["prompt"]}
        for i, (m, text) in enumerate(zip(order, shown, strict=True), 1):
            fields[f"answer_{i}"] = text
            mapping.append({"record_id": rid, "prompt_id": pid, "slot": i, "model": m})
        records.append(rg.Record(id=rid, fields=fields))
    try:
        ds = _dataset(client, recipe, workspace, len(models))
        ds.records.log(records, batch_size=min(256, len(records)))
    except api_errors() as exc:
        raise UserError(f"Argilla refused the push: {exc}", "check the server log; nothing local changed") from None
    atomic_write_parquet(run_dir / "review" / "eval_pushed.parquet", pa.Table.from_pylist(mapping, PUSHED_SCHEMA))
    return {
        "dataset": ds.name,
        "api_url": api_url(recipe.review),
        "records": len(records),
        "models": len(models),
        "seconds": round(time.perf_counter() - start, 1),
    }


def win_rates(choices: list[tuple[str, str]], mapping: dict[str, dict[int, str]]) -> dict[str, dict[str, Any]]:
    """Per model: wins / comparisons it was in, with a bootstrap 95% interval over records.

    `choices` holds (record_id, label) for every submitted response; `tie` is a comparison nobody
    won. Choices on records missing from `mapping` are ignored (pushed by another eval).
    """
    per_model: dict[str, list[float]] = {}
    groups: dict[str, list[str]] = {}
    for rid, label in choices:
        slots = mapping.get(rid)
        if not slots:
            continue
        winner = slots.get(int(label.split("_")[1])) if label.startswith("answer_") else None
        for model in slots.values():
            per_model.setdefault(model, []).append(1.0 if model == winner else 0.0)
            groups.setdefault(model, []).append(rid)
    out = {}
    for model, wins in sorted(per_model.items()):
        ci = bootstrap_ci(wins, groups[model])
        out[model] = {"rate": mean(wins), "ci": list(ci) if ci else None, "n": len(wins)}
    return out


def _mapping(run_dir: Path) -> dict[str, dict[int, str]]:
    path = run_dir / "review" / "eval_pushed.parquet"
    if not path.is_file():
        raise UserError(f"no record of an eval push at {path}", "run `synth review push --eval` first")
    out: dict[str, dict[int, str]] = {}
    hint = "run `synth review push --eval` again"
    for r in read_parquet(path, "a record of an eval push", ["record_id", "slot", "model"], hint).to_pylist():
        out.setdefault(r["record_id"], {})[r["slot"]] = r["model"]
    return out


def _with_preferences(markdown: str, rates: dict[str, dict[str, Any]], responses: int) -> str:
    """report.md with its human-preference section replaced (or added)."""
    head = markdown.split(PREFERENCE_SECTION)[0].rstrip("\n")
    lines = [
        "",
        "",
        PREFERENCE_SECTION,
        "",
        f"{responses} submitted choices; win rate = share of a model's comparisons in which its answer was picked "
        "(ties count for nobody); brackets: bootstrap 95% intervals over records.",
        "",
        "| model | win rate | comparisons |",
        "|---|---:|---:|",
    ]
    for m, w in rates.items():
        lines.append(f"| {m} | {with_interval(w['rate'], w['ci'])} | {w['n']} |")
    return head + "\n".join(lines) + "\n"


def run_pull_eval(recipe: Recipe, run_dir: Path) -> dict[str, Any]:
    """Turn submitted choices into win rates in eval/report.json and report.md; returns the counts."""
    from synth.review.stage import fetch_responses

    mapping = _mapping(run_dir)
    report_path = run_dir / "eval" / "report.json"
    if not report_path.is_file():
        raise UserError(f"no eval report at {report_path}", "run `sft eval` with the same recipe first")
    client = connect(recipe.review)
    try:
        ds = _dataset(client, recipe, None, None)
        responses = fetch_responses(client, ds)
    except api_errors() as exc:
        raise UserError(f"Argilla refused the pull: {exc}", "check the server log; nothing local changed") from None
    choices = [
        (r["row_id"], str(r["values"][BEST]["value"]))
        for r in responses
        if r["status"] == "submitted" and (r["values"].get(BEST) or {}).get("value")
    ]
    rates = win_rates(choices, mapping)
    report = read_json(report_path, "the eval report", "run `sft eval` again")
    report["win_rates"] = rates
    atomic_write_text(report_path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    md = run_dir / "eval" / "report.md"
    atomic_write_text(
        md, _with_preferences(md.read_text(encoding="utf-8") if md.is_file() else "", rates, len(choices))
    )
    summary = {"dataset": ds.name, "api_url": api_url(recipe.review), "choices": len(choices), "win_rates": rates}
    atomic_write_text(run_dir / "review" / "eval_preferences.json", json.dumps(summary, indent=2) + "\n")
    return summary
