"""`synth curate`: decide, with a reason for every row, which generations a student learns from.

Order of work:
1. Row checks (filters, decontamination, verifiers, judges) run shard by shard in the order the
   recipe lists them; a row's first failing check rejects it and later checks skip it.
2. Dedup checks (exact, near) run over the rows that passed every row check. They need the whole set
   and keep the best-ranked member of each cluster, and ranks come from judge and verifier scores,
   so they are resolved after the row checks whatever their place in the list.
3. Selection (best-of-n, top-k, threshold, all) per prompt, on the same ranking.
Only a shard of rows is in memory at a time, beyond the dedup index (hashes and MinHash signatures).
Everything is written into a temp folder that replaces `curated/` in one rename at the end, so a
crash never leaves a half-written curated set; re-runs give a byte-identical `kept.parquet`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute
import pyarrow.parquet as pq
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from synth import tables
from synth.cluster import Worker, refuse_stray_address
from synth.curate.base import Context, Row, RowCheck, Verdict
from synth.curate.cache import CheckedCache
from synth.curate.checks.dedup import GroupCheck
from synth.curate.checks.verifiers import PythonCheck, check_sources, install_sources, raised_on_every_row
from synth.curate.config import CurateSpec
from synth.curate.report import CheckStats, CurateSummary, write_reports
from synth.errors import UserError
from synth.io import staging_folder, swap_in_folder
from synth.progress import progress
from synth.recipe import Recipe, behaviour_checks, dump_resolved
from synth.records import KEPT_SCHEMA, REJECTED_SCHEMA, completion_text
from synth.shards import MANIFEST, WRITER_LOCK, ShardSet, only_writer


def _verdict_dict(name: str, v: Verdict) -> dict[str, Any]:
    return {"name": name, "passed": v.passed, "score": v.score, "reason": v.reason}


def check_stats(spec: CurateSpec) -> dict[str, CheckStats]:
    """Empty stats for generation's failures and each check, in the recipe's order: a shard's and the
    run's start the same, so a run's are the sum of its shards'."""
    return {"generate": CheckStats("generate", "generate")} | {
        c.label: CheckStats(c.label, c.type) for c in spec.checks
    }


@dataclass
class CheckedShard:
    """One shard after the row checks: what `ShardChecker.check` returns (here or from a Ray worker)
    and the `Curator` absorbs, in shard order."""

    table: pa.Table  # the shard with each row's verdicts so far, and rejected_by / reason
    stats: dict[str, CheckStats]  # this shard's counts, timings, scores, examples, tallies
    alive: list[tuple[str, float | None, int, str]]  # rows that passed: (id, score, sample_index, prompt_id)
    prompts: list[str]  # prompt ids in the order first seen
    keys: dict[str, Any]  # per group check: what its `insert` needs of the alive rows


class ShardChecker:
    """The per-shard work of curate: the row checks (set up once: models, eval sets, user code) and the
    group checks' per-row keys (hashes, MinHash signatures). Runs in this process or on a Ray worker."""

    def __init__(self, recipe: Recipe, recipe_dir: Path | None) -> None:
        spec = self.spec = recipe.curate
        self.row_checks: list[RowCheck] = [c.runner(c) for c in spec.checks if c.per_row]
        self.group_checks: list[GroupCheck] = [c.runner(c) for c in spec.checks if not c.per_row]
        self.score_name = spec.ranking_check()
        ctx = Context(recipe, recipe_dir)
        for check in self.row_checks:  # load models, eval sets and user code before any row is read
            check.setup(ctx)

    def check(self, table: pa.Table) -> CheckedShard:
        rows = _rows(table)
        stats = check_stats(self.spec)

        def reject(row: Row, name: str, v: Verdict) -> None:
            row["rejected_by"] = name
            row["reason"] = v.reason or f"{name} failed"
            stats[name].example(row["id"], completion_text(row), row["reason"])

        for r in rows:
            r["verdicts"] = list(r["verdicts"] or [])
            r["rejected_by"] = r["reason"] = None
            stats["generate"].evaluated += 1
            if r["error"] is not None:
                stats["generate"].failed += 1
                reject(r, "generate", Verdict(False, reason=r["error"]))
        alive = [r for r in rows if r["rejected_by"] is None]
        for check in self.row_checks:
            if not alive:
                break
            st = stats[check.name]
            t0 = time.perf_counter()
            verdicts = check.run(alive)
            st.seconds += time.perf_counter() - t0
            st.tally = check.drain()
            survivors = []
            for r, v in zip(alive, verdicts, strict=True):
                r["verdicts"].append(_verdict_dict(check.name, v))
                st.add(v)
                if v.passed:
                    survivors.append(r)
                else:
                    reject(r, check.name, v)
            alive = survivors
        keys = {}
        for g in self.group_checks:
            t0 = time.perf_counter()
            keys[g.name] = g.keys(alive)
            stats[g.name].seconds += time.perf_counter() - t0
        return CheckedShard(
            _with_decisions(table, rows),
            stats,
            [
                (
                    r["id"],
                    next((v["score"] for v in r["verdicts"] if v["name"] == self.score_name), None),
                    r["sample_index"],
                    r["prompt_id"],
                )
                for r in alive
            ],
            list(dict.fromkeys(r["prompt_id"] for r in rows)),
            keys,
        )

    def close(self) -> None:
        for c in self.row_checks:
            c.close()


class Curator:
    """The cross-shard state of one curate run, kept by this process: stats, the dedup indexes, the
    rows alive after the row checks; then dedup resolution and selection."""

    def __init__(self, recipe: Recipe) -> None:
        spec = recipe.curate
        self.spec = spec
        self.group_checks: list[GroupCheck] = [c.runner(c) for c in spec.checks if not c.per_row]
        self.score_name = spec.ranking_check()
        self.stats = check_stats(spec) | {"select": CheckStats("select", spec.select.strategy)}
        # id -> (score, sample_index, order, prompt_id) for rows alive after the row checks
        self.alive: dict[str, tuple[float | None, int, int, str]] = {}
        self.order = 0
        self.prompts: dict[str, int] = {}
        self.kept_per_prompt: dict[str, int] = {}  # filled when the outputs are written

    def absorb(self, shard: CheckedShard) -> None:
        """Take in one checked shard; called in shard order, so every run gives the same result."""
        for name, st in shard.stats.items():
            self.stats[name].merge(st)
        for pid in shard.prompts:
            self.prompts.setdefault(pid, len(self.prompts))
        ids = [a[0] for a in shard.alive]
        for g in self.group_checks:
            t0 = time.perf_counter()
            g.insert(ids, shard.keys[g.name])
            self.stats[g.name].seconds += time.perf_counter() - t0
        for row_id, score, sample_index, prompt_id in shard.alive:
            self.alive[row_id] = (score, sample_index, self.order, prompt_id)
            self.order += 1

    def _rank(self, row_id: str) -> tuple[float, int, int]:
        score, sample_index, order, _ = self.alive[row_id]
        return (-(score if score is not None and not math.isnan(score) else -math.inf), sample_index, order)

    def group_pass(self) -> tuple[dict[str, list[dict[str, Any]]], dict[str, tuple[str, str]]]:
        """Resolve dedup clusters, then select per prompt; return late verdicts and late rejections."""
        late: dict[str, list[dict[str, Any]]] = {}
        rejected: dict[str, tuple[str, str]] = {}
        alive = set(self.alive)
        for g in self.group_checks:
            st = self.stats[g.name]
            t0 = time.perf_counter()
            for row_id, v in g.resolve(alive, self._rank).items():
                late.setdefault(row_id, []).append(_verdict_dict(g.name, v))
                st.add(v)
                if not v.passed:
                    rejected[row_id] = (g.name, v.reason)
                    alive.discard(row_id)
            st.seconds += time.perf_counter() - t0
        by_prompt: dict[str, list[str]] = {}
        for row_id in alive:
            by_prompt.setdefault(self.alive[row_id][3], []).append(row_id)
        st = self.stats["select"]
        for ids in by_prompt.values():
            ids.sort(key=self._rank)
            for rank, row_id in enumerate(ids):
                v = self._select(rank, row_id, ids[0])
                late.setdefault(row_id, []).append(_verdict_dict("select", v))
                st.add(v)
                if not v.passed:
                    rejected[row_id] = ("select", v.reason)
        return late, rejected

    def _select(self, rank: int, row_id: str, best: str) -> Verdict:
        sel = self.spec.select
        score = self.alive[row_id][0]
        shown = "no score" if score is None else f"score {score:.3g}"
        if sel.strategy == "all":
            return Verdict(True, score)
        if sel.strategy == "threshold":
            ok = score is not None and score >= (sel.min_score or 0)
            return Verdict(ok, score, "" if ok else f"{shown} below select.min_score {sel.min_score:g}")
        k = 1 if sel.strategy == "best_of_n" else sel.k
        if rank < k:
            return Verdict(True, score)
        return Verdict(False, score, f"{sel.strategy}: ranked {rank + 1} of its prompt ({shown}; best {best})")


def run_curate(
    recipe: Recipe, run_dir: Path, recipe_dir: Path | None = None, console: Console | None = None
) -> CurateSummary:
    """Curate `run_dir/generations` into `run_dir/curated`; see the module docstring. One `synth curate`
    per run folder at a time: a second would delete the first's staging folder."""
    refuse_stray_address(recipe.runtime)
    run_dir.mkdir(parents=True, exist_ok=True)
    with only_writer(
        run_dir / CURATE_LOCK,
        f"another `synth curate` is writing {run_dir / 'curated'} right now",
        "wait for it to finish (or stop it), then run `synth curate` again",
    ):
        return _run_curate(recipe, run_dir, recipe_dir, console)


CURATE_LOCK = ".curate.lock"


def _run_curate(recipe: Recipe, run_dir: Path, recipe_dir: Path | None, console: Console | None) -> CurateSummary:
    """`run_curate` holding the run folder's curate lock."""
    console = console or Console(stderr=True)
    gen_dir = run_dir / "generations"
    shard_set = ShardSet(gen_dir)
    if not shard_set.paths:
        raise UserError(f"no generations in {gen_dir}", "run `synth generate` with the same recipe first")
    if warning := shard_set.warning():
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    if unfinished := _unfinished(gen_dir):
        console.print(f"[yellow]warning:[/] {escape(unfinished)}", highlight=False, soft_wrap=True)
    for stale in run_dir.glob(".curated*"):
        shutil.rmtree(stale, ignore_errors=True)
    start = time.perf_counter()
    cache = CheckedCache(run_dir, recipe, recipe_dir)
    curator = Curator(recipe)
    summary = CurateSummary(run_dir, score_name=curator.score_name, stats=curator.stats)
    tmp = staging_folder(run_dir / "curated")  # also removes what a killed curate left
    work = tmp / "work"
    work.mkdir(parents=True)
    try:
        with progress(console, unit="shards", eta=False) as bar:  # plain lines when the output is a log
            task = bar.add_task("curating", total=len(shard_set.paths), rows=0)
            for i, shard in enumerate(_checked_shards(recipe, recipe_dir, shard_set, summary, cache)):
                summary.rows_in += shard.table.num_rows
                curator.absorb(shard)
                pq.write_table(shard.table, work / f"part-{i:05d}.parquet")
                bar.update(task, advance=1, rows=summary.rows_in)
        late, late_rejected = curator.group_pass()
        _no_broken_function(recipe, summary.stats)  # before anything replaces the last curated/
        summary.kept, summary.rejected = _write_outputs(work, tmp, late, late_rejected, curator)
        summary.prompts = len(curator.prompts)
        summary.seconds = time.perf_counter() - start
        shutil.rmtree(work)
        dump_resolved(recipe, tmp / "recipe.resolved.yaml")
        write_reports(tmp, summary, curator.kept_per_prompt, curator.spec.select.model_dump())
        swap_in_folder(tmp, run_dir / "curated")
        cache.clear()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if cache.reused:
        console.print(f"reused the checks of {cache.reused} shard(s) from an unfinished run", highlight=False)
    if summary.rows_in and not summary.kept:
        raise UserError(*_nothing_kept(recipe, summary))
    return summary


def _no_broken_function(recipe: Recipe, stats: dict[str, CheckStats]) -> None:
    """Stop when a python check's function raised on every row: see `raised_on_every_row`."""
    for spec in recipe.curate.checks:
        if not isinstance(spec, PythonCheck) or spec.label not in stats:
            continue
        st = stats[spec.label]
        if error := raised_on_every_row(spec.label, spec.function, st.evaluated, st.tally):
            raise error


def _unfinished(gen_dir: Path) -> str | None:
    """Why the generations may not be all there is: `synth generate` is writing them right now (its lock
    is held), or its manifest says prompts are still missing (an interrupted run; a `--limit` run counts
    the limited prompts as the source, so curating it says nothing)."""
    with only_writer(
        gen_dir / WRITER_LOCK,
        f"`synth generate` is writing {gen_dir} right now: curating now would miss its newest rows",
        "wait for it to finish, then run `synth curate` again",
    ):
        pass  # only whether it is free
    manifest = gen_dir / MANIFEST
    try:
        info = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("complete") is not False:
        return None
    return (
        f"{manifest}: generation is unfinished ({info.get('prompts')} of {info.get('prompts_in_source')} prompts); "
        "curating those rows only (run `synth generate` again to generate the rest, then curate again)"
    )


def _nothing_kept(recipe: Recipe, summary: CurateSummary) -> tuple[str, str]:
    """The error when no row survives: which check rejected the most, and what to do about it. When it
    is the check that defines the behaviour, loosening checks is the wrong advice: the teacher does
    not show the behaviour (or is cut off before it does)."""
    worst = max((st for st in summary.stats.values() if st.evaluated), key=lambda st: st.failed, default=None)
    where = summary.run_dir / "curated" / "report.md"
    message = f"curate kept 0 of {summary.rows_in} rows"
    if worst is None:
        return message, f"see {where}"
    message += f": {worst.name!r} rejected {worst.failed} of the {worst.evaluated} rows it saw"
    try:
        behaviour = behaviour_checks(recipe)
    except UserError:  # no behaviour named: advise on the check alone
        behaviour = []
    if worst.name == "generate":
        fix = "fix the cause, and run `synth generate --retry-failed`"
        return message, f"the teacher failed on every prompt: see the reasons in {where}, {fix}"
    if worst.name in behaviour:
        return message, (
            f"the teacher does not show the behaviour {worst.name!r} checks for: try `synth probe` with a larger "
            f"generate.max_new_tokens (now {recipe.generate.max_new_tokens}), another teacher, or another behaviour "
            f"(examples in {where})"
        )
    return message, f"read the rejected examples in {where}; if they are fine, loosen {worst.name!r} in curate.checks"


def _checked_shards(
    recipe: Recipe, recipe_dir: Path | None, shard_set: ShardSet, summary: CurateSummary, cache: CheckedCache
) -> Iterator[CheckedShard]:
    """Each shard after the row checks, in shard order: kept from an unfinished run (`cache`), or
    checked here or on Ray workers (`runtime.executor`), then kept."""
    if recipe.runtime.executor == "ray":
        yield from _checked_on_ray(recipe, recipe_dir, shard_set, summary, cache)
        return
    checker: ShardChecker | None = None  # set up (models loaded) at the first shard not kept
    try:
        for path, table in shard_set.tables():
            shard = cache.get(path)
            if shard is None:
                checker = checker or ShardChecker(recipe, recipe_dir)
                shard = checker.check(table)
                cache.put(path, shard)
            yield shard
    finally:
        if checker is not None:
            checker.close()


class CurateWorker(Worker):
    """A `ShardChecker` on a Ray worker: its checks set up once, then shard after shard."""

    def build(self, recipe: Recipe, recipe_dir: Path | None, sources: dict[str, bytes] | None = None) -> ShardChecker:
        """`sources`: the user's check modules from the driver (`check_sources`), for a node that has
        neither the recipe's folder nor the driver's."""
        install_sources(sources or {})
        return ShardChecker(recipe, recipe_dir)

    def check(self, table: pa.Table | None) -> CheckedShard | None:
        """The checked shard; None for None (a shard the driver kept from an unfinished run)."""
        return None if table is None else self.tool.check(table)


def _checked_on_ray(
    recipe: Recipe, recipe_dir: Path | None, shard_set: ShardSet, summary: CurateSummary, cache: CheckedCache
) -> Iterator[CheckedShard]:
    """Row checks and dedup keys on a pool of Ray workers; results are handed on in shard order, so the
    global dedup and selection (here) see exactly what a local run sees. A shard kept from an unfinished
    run is not sent to a worker (its payload is None) but read from `cache`; one whose kept file turns
    out unreadable is checked here."""
    from synth.cluster import ActorPool, node_resources, ray_session, replica_count, worker_gpus, worker_runtime_env

    spec = recipe.runtime.ray
    paths = shard_set.paths
    kept = {p for p in paths if cache.has(p)}
    with ray_session(spec) as ray:
        resources = ray.cluster_resources()
        gpus = worker_gpus(recipe.runtime, None, 0, resources.get("GPU", 0))  # none unless runtime.ray.num_gpus
        replicas = replica_count(spec, node_resources(ray), gpus, max(1, len(paths) - len(kept)))
        python = [c.function for c in recipe.curate.checks if c.type == "python"]
        args = (os.getcwd(), recipe, recipe_dir, check_sources(python, recipe_dir))
        pool = ActorPool(ray, CurateWorker, args, replicas, spec.num_cpus, gpus, spec, worker_runtime_env(recipe))
        summary.workers = replicas
        here: ShardChecker | None = None
        try:
            payload = lambda i: None if paths[i] in kept else shard_set.rows(paths[i])  # noqa: E731
            for i, shard in pool.map("check", len(paths), payload, lambda i: str(paths[i]), ordered=True):
                if shard is None:  # kept from an unfinished run
                    shard = cache.get(paths[i])
                    if shard is not None:
                        yield shard
                        continue
                    here = here or ShardChecker(recipe, recipe_dir)
                    shard = here.check(shard_set.rows(paths[i]))
                cache.put(paths[i], shard)
                yield shard
        finally:
            summary.shards_redone = pool.redone
            pool.close()
            if here is not None:
                here.close()


CHECKED_COLUMNS = [
    "id",
    "prompt_id",
    "sample_index",
    "prompt",
    "completion",
    "finish_reason",
    "completion_tokens",
    "meta",
    "error",
    "verdicts",
]


def _rows(table: pa.Table) -> list[Row]:
    """The columns checks read, as one dict per row; the other columns stay in Arrow."""
    data = [table.column(c).to_pylist() for c in CHECKED_COLUMNS]
    return [dict(zip(CHECKED_COLUMNS, values, strict=True)) for values in zip(*data, strict=True)]


def _set(table: pa.Table, name: str, values: list[Any], type_: pa.DataType) -> pa.Table:
    column = pa.array(values, type=type_)
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, column)
    return table.append_column(name, column)


def _with_decisions(table: pa.Table, rows: list[Row]) -> pa.Table:
    """The shard with each row's verdicts so far and, if rejected, by which check and why."""
    table = _set(table, "verdicts", [r["verdicts"] for r in rows], REJECTED_SCHEMA.field("verdicts").type)
    table = _set(table, "rejected_by", [r["rejected_by"] for r in rows], pa.string())
    return _set(table, "reason", [r["reason"] for r in rows], pa.string())


def _write_outputs(
    work: Path,
    out: Path,
    late: dict[str, list[dict[str, Any]]],
    late_rejected: dict[str, tuple[str, str]],
    curator: Curator,
) -> tuple[int, int]:
    """Stream the work parts into kept.parquet (TRL prompt-completion format) and rejected.parquet."""
    kept_n = rejected_n = 0
    kept_per_prompt = curator.kept_per_prompt = dict.fromkeys(curator.prompts, 0)
    with (
        pq.ParquetWriter(out / "kept.parquet", KEPT_SCHEMA) as kept_w,
        pq.ParquetWriter(out / "rejected.parquet", REJECTED_SCHEMA) as rej_w,
    ):
        for path in sorted(work.glob("part-*.parquet")):
            part = pq.read_table(path)
            ids = part.column("id").to_pylist()
            verdicts = part.column("verdicts").to_pylist()
            rejected_by = part.column("rejected_by").to_pylist()
            reasons = part.column("reason").to_pylist()
            for i, row_id in enumerate(ids):
                verdicts[i] = verdicts[i] + late.get(row_id, [])
                if rejected_by[i] is None and row_id in late_rejected:
                    rejected_by[i], reasons[i] = late_rejected[row_id]
                    text = completion_text({"completion": part.column("completion")[i].as_py()})
                    curator.stats[rejected_by[i]].example(row_id, text, reasons[i])
            part = _set(part, "verdicts", verdicts, REJECTED_SCHEMA.field("verdicts").type)
            part = _set(part, "rejected_by", rejected_by, pa.string())
            part = _set(part, "reason", reasons, pa.string())
            keep = pa.array([rb is None for rb in rejected_by], type=pa.bool_())
            kept = part.filter(keep)
            kept = _set(kept, "score", [curator.alive[i][0] for i in kept.column("id").to_pylist()], pa.float64())
            for pid in kept.column("prompt_id").to_pylist():
                kept_per_prompt[pid] += 1
            rejected = part.filter(pa.compute.invert(keep))
            no_original = KEPT_SCHEMA.field("original_completion").type
            kept = _set(kept, "original_completion", [None] * kept.num_rows, no_original)
            rejected = _set(rejected, "original_completion", [None] * rejected.num_rows, no_original)
            if kept.num_rows:
                kept_w.write_table(kept.select(KEPT_SCHEMA.names).cast(KEPT_SCHEMA))
            if rejected.num_rows:
                rej_w.write_table(rejected.select(REJECTED_SCHEMA.names).cast(REJECTED_SCHEMA))
            kept_n += kept.num_rows
            rejected_n += rejected.num_rows
    return kept_n, rejected_n


def summary_table(s: CurateSummary) -> Table:
    """The table printed at the end of `synth curate`."""
    rows: list[list[object] | None] = [
        [st.name, st.type, st.evaluated, st.failed, f"{st.evaluated / st.seconds:,.0f}" if st.seconds > 0 else "-"]
        for st in s.stats.values()
    ]
    rows += [
        tables.SECTION,
        ["kept", "", s.kept, "", ""],
        ["rejected", "", s.rejected, "", ""],
        ["total", f"{s.seconds:.1f} s", s.rows_in, "", f"{s.rows_per_s:,.0f}"],
    ]
    if s.workers:
        rows.append([f"on {s.workers} Ray workers", f"{s.shards_redone} shards redone", "", "", ""])
    columns = ("check", "type", "evaluated", "rejected", "rows/s")
    return tables.summary_table(f"synth curate: {s.run_dir / 'curated'}", columns, rows, left={"type"})
