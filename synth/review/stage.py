"""`synth review push` and `synth review pull`: the curated set out to Argilla and reviewers' verdicts back.

push: curated rows (kept, a sample if asked, plus an optional sample of rejected ones) become records
of one Argilla dataset per run; `review/push.json` records what went where.
pull: every response is fetched into `review/responses.parquet`; the combined decisions
(`synth.review.verdicts`) rewrite `curated/kept.parquet` and `curated/rejected.parquet` in one swap,
and `review/report.json` / `report.md` say what changed. The server is contacted before anything
local is written, so a failed connection changes nothing.
"""

from __future__ import annotations

import json
import random
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from rich.table import Table

from synth import __version__, tables
from synth.errors import UserError
from synth.io import atomic_write_parquet, atomic_write_text, read_parquet, swap_in_folder
from synth.recipe import Recipe
from synth.records import KEPT_SCHEMA, REJECTED_SCHEMA
from synth.review import layout
from synth.review.connect import api_errors, api_url, connect, import_argilla
from synth.review.verdicts import apply, combine

RESPONSES_SCHEMA = pa.schema(
    [
        ("row_id", pa.string()),
        ("user", pa.string()),
        ("status", pa.string()),
        ("decision", pa.string()),
        ("quality", pa.int32()),
        ("corrected_completion", pa.string()),
        ("note", pa.string()),
        ("updated_at", pa.string()),
    ]
)


@dataclass
class ReviewSummary:
    """What one push or pull did (printed as a table, saved as JSON)."""

    action: str
    api_url: str
    workspace: str
    dataset: str
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _curated(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """kept and rejected rows."""
    cur = run_dir / "curated"
    if not (cur / "kept.parquet").exists():
        raise UserError(f"no curated set in {cur}", "run `synth curate` with the same recipe first")
    hint = "run `synth curate` again to rewrite it"
    kept = read_parquet(
        cur / "kept.parquet", "the curated set", hint=hint, require=KEPT_SCHEMA.names, schema=KEPT_SCHEMA
    ).to_pylist()
    rejected = read_parquet(
        cur / "rejected.parquet", "the rejected set", hint=hint, require=["id"], schema=REJECTED_SCHEMA
    ).to_pylist()
    return kept, rejected


def _sample(rows: list[dict[str, Any]], n: int | None, seed: int) -> list[dict[str, Any]]:
    if n is None or n >= len(rows):
        return rows
    return random.Random(seed).sample(rows, n)


def workspace_for(client: Any, name: str | None) -> Any:
    """The named workspace (created if the user may), else the user's first, else a new `distillery` one."""
    rg = import_argilla()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name is not None:
            ws = client.workspaces(name)
        else:
            existing = list(client.workspaces)
            ws, name = (existing[0], existing[0].name) if existing else (None, "distillery")
    if ws is None:
        if client.me.role != "owner":
            raise UserError(f"Argilla workspace {name!r} does not exist", "ask an owner to create it, or pick yours")
        ws = rg.Workspace(name=name, client=client).create()
    return ws


def _dataset(client: Any, recipe: Recipe, ws: Any, with_teacher_prompt: bool, create: bool) -> Any:
    """The run's dataset: reused when its layout matches, created on push when missing."""
    rg = import_argilla()
    name = recipe.review.dataset or recipe.name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = client.datasets(name, workspace=ws)
    if ds is None:
        if not create:
            raise UserError(f"no Argilla dataset {name!r} in workspace {ws.name!r}", "run `synth review push` first")
        settings = layout.build_settings(rg, recipe.curate, with_teacher_prompt, recipe.review.guidelines)
        return rg.Dataset(name=name, workspace=ws, settings=settings, client=client).create()
    have = {q.name for q in ds.settings.questions}
    need = {layout.DECISION, layout.QUALITY, layout.CORRECTION, layout.NOTE}
    if not need <= have:
        raise UserError(
            f"the Argilla dataset {name!r} exists with other questions ({', '.join(sorted(have))})",
            "set `review.dataset` to a new name, or delete that dataset in Argilla",
        )
    return ds


def run_push(
    recipe: Recipe,
    run_dir: Path,
    workspace: str | None = None,
    sample: int | None = None,
    rejected_sample: int | None = None,
) -> ReviewSummary:
    """Log curated rows as records of the run's Argilla dataset; see the module docstring."""
    spec = recipe.review
    client = connect(spec)
    kept, rejected = _curated(run_dir)
    start = time.perf_counter()
    rows = _sample(kept, sample or spec.sample, spec.seed)
    n_rejected = spec.rejected_sample if rejected_sample is None else rejected_sample
    rows = rows + _sample(rejected, n_rejected, spec.seed)
    if not rows:
        raise UserError(f"nothing to push: {run_dir / 'curated'} has no kept rows", "check the curate report")
    with_teacher_prompt = any(r["teacher_prompt"] != r["prompt"] for r in kept + rejected)
    ranking = recipe.curate.ranking_check()
    rg = import_argilla()
    try:
        ws = workspace_for(client, workspace or spec.workspace)
        ds = _dataset(client, recipe, ws, with_teacher_prompt, create=True)
        has_tp = any(f.name == "teacher_prompt" for f in ds.settings.fields)
        records = [layout.to_record(rg, r, recipe.curate, ranking, has_tp) for r in rows]
        existing = {r.id for r in ds.records(with_responses=False, with_suggestions=False)}
        ds.records.log(records, batch_size=min(256, len(records)))
    except api_errors() as exc:
        raise UserError(f"Argilla refused the push: {exc}", "check the server log; nothing local changed") from None
    pushed_ids = {r["id"] for r in rows}  # Argilla upserts records on the row id
    summary = ReviewSummary(
        "push",
        api_url(spec),
        ws.name,
        ds.name,
        {
            "kept_pushed": sum(r.get("rejected_by") is None for r in rows),
            "rejected_pushed": sum(r.get("rejected_by") is not None for r in rows),
            "new_records": len(pushed_ids - existing),
            "records_in_dataset": len(existing | pushed_ids),
        },
    )
    summary.seconds = time.perf_counter() - start
    out = run_dir / "review"
    pushed = pa.table({"row_id": [r["id"] for r in rows], "curate": [r.get("rejected_by") or "kept" for r in rows]})
    atomic_write_parquet(out / "pushed.parquet", pushed)
    atomic_write_text(out / "push.json", json.dumps({**asdict(summary), "distillery": __version__}, indent=2) + "\n")
    return summary


def fetch_responses(client: Any, ds: Any) -> list[dict[str, Any]]:
    """Every response of every record, with who gave it and when (raw API: it has `updated_at`)."""
    users: dict[str, str] = {}
    try:
        users = {str(u.id): u.username for u in client.users}
    except api_errors():  # annotators may not list users: fall back to ids
        pass
    out, offset = [], 0
    while True:
        page = client.http_client.get(
            f"/api/v1/datasets/{ds.id}/records",
            params={"offset": offset, "limit": 1000, "include": ["responses"]},
        )
        page.raise_for_status()
        items = page.json()["items"]
        for rec in items:
            for r in rec.get("responses") or []:
                vals = r.get("values") or {}
                get = lambda q, v=vals: (v.get(q) or {}).get("value")  # noqa: E731
                out.append(
                    {
                        "row_id": rec["external_id"],
                        "user": users.get(str(r["user_id"]), str(r["user_id"])),
                        "status": r["status"],
                        "decision": get(layout.DECISION),
                        "quality": get(layout.QUALITY),
                        "corrected_completion": get(layout.CORRECTION),
                        "note": get(layout.NOTE),
                        "updated_at": r.get("updated_at"),
                        "values": vals,
                    }
                )
        offset += len(items)
        if len(items) < 1000:
            return out


def _write_curated(run_dir: Path, kept: list[dict[str, Any]], rejected: list[dict[str, Any]]) -> None:
    """Replace curated/kept.parquet and rejected.parquet together (the other curate files are copied)."""
    cur = run_dir / "curated"
    tmp = run_dir / ".curated.review-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(cur, tmp)
    pq.write_table(pa.Table.from_pylist(kept, schema=KEPT_SCHEMA), tmp / "kept.parquet")
    for row in rejected:
        row.pop("score", None)
    pq.write_table(pa.Table.from_pylist(rejected, schema=REJECTED_SCHEMA), tmp / "rejected.parquet")
    swap_in_folder(tmp, cur)


def run_pull(recipe: Recipe, run_dir: Path) -> ReviewSummary:
    """Fetch responses and apply them to the curated set; see the module docstring."""
    spec = recipe.review
    client = connect(spec)
    kept, rejected = _curated(run_dir)
    start = time.perf_counter()
    try:
        ws = workspace_for(client, spec.workspace)
        ds = _dataset(client, recipe, ws, False, create=False)
        responses = fetch_responses(client, ds)
    except api_errors() as exc:
        raise UserError(f"Argilla refused the pull: {exc}", "check the server log; nothing local changed") from None
    decisions = combine(responses)
    known = {r["id"] for r in kept + rejected}
    unknown = sorted(set(decisions) - known)
    applied = apply(kept, rejected, decisions, recipe.curate.ranking_check())
    counts = {
        "responses": len(responses),
        "reviewed_rows": len(decisions) - len(unknown),
        "discarded": applied.discarded,
        "rescued": applied.rescued,
        "corrected": applied.corrected,
        "rated": applied.rated,
        "kept": len(applied.kept),
        "rejected": len(applied.rejected),
        "unknown_records": len(unknown),
    }
    summary = ReviewSummary("pull", api_url(spec), ws.name, ds.name, counts)
    out = run_dir / "review"
    table = pa.Table.from_pylist(
        sorted(({k: r[k] for k in RESPONSES_SCHEMA.names} for r in responses), key=lambda r: (r["row_id"], r["user"])),
        schema=RESPONSES_SCHEMA,
    )
    atomic_write_parquet(out / "responses.parquet", table)
    _write_curated(run_dir, applied.kept, applied.rejected)
    summary.seconds = time.perf_counter() - start
    report = {**asdict(summary), "distillery": __version__, "unknown_record_ids": unknown[:20]}
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "report.md", _markdown(summary, run_dir))
    return summary


def _markdown(s: ReviewSummary, run_dir: Path) -> str:
    lines = [
        f"# Review of {run_dir.name}",
        "",
        f"Argilla dataset `{s.workspace}/{s.dataset}` at {s.api_url}.",
        "",
        "| what | rows |",
        "|---|---:|",
    ]
    lines += [f"| {k.replace('_', ' ')} | {v} |" for k, v in s.counts.items()]
    return "\n".join(lines) + "\n"


def summary_table(s: ReviewSummary) -> Table:
    """The table printed at the end of `synth review push` / `pull`."""
    return tables.summary_table(
        f"synth review {s.action}",
        ("what", "rows"),
        [*((k.replace("_", " "), v) for k, v in s.counts.items()), tables.SECTION, ("seconds", f"{s.seconds:.1f}")],
        caption=f"Argilla dataset {s.workspace}/{s.dataset} at {s.api_url}",
    )
