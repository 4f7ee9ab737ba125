"""`synth probe`: does the teacher show the recipe's behaviour at all? Learn it in minutes, not an hour.

A new recipe's costliest surprise is a full `synth generate` whose answers the behaviour check never
passes (the model ignores the system prompt, or every answer is cut at the token budget). The probe
samples the recipe's own teacher, through the same engine and `generate_shard` as `synth generate`,
on the first N prompts with one sample each, runs every curate check on every answer (each check on
its own, not only on the survivors of the ones before it, so each rate says what that check thinks),
and prints the rates with 95% intervals, three answers to read, and what to change when the
behaviour is rare.

It never writes where later stages look: no `generations/`, no `curated/`, no `recipe.resolved.yaml`.
The answers and rates go to RUN_DIR/probe/ only, replaced by the next probe.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from synth import tables
from synth.curate.base import Row, Verdict, snippet
from synth.curate.stage import CHECKED_COLUMNS, ShardChecker
from synth.engines import Engine, SamplingParams, build_engine, sampling_params
from synth.errors import UserError
from synth.generate import generate_shard, progress_bar
from synth.io import atomic_write_parquet, atomic_write_text
from synth.prompts import load_prompts
from synth.recipe import Recipe, behaviour_checks
from synth.records import REJECTED_SCHEMA, PromptItem, completion_text
from synth.redact import excerpt, redact
from synth.stats import bootstrap_ci, with_interval

DEFAULT_PROMPTS = 16
LOW_BEHAVIOUR = 0.10
"""Advice when even the upper end of the behaviour's 95% interval is below this: fewer than one
answer in ten, so a full run would spend most of its time on answers curate throws away."""
MANY_CUT = 0.5
"""Share of answers stopped by max_new_tokens from which the token budget is the first suspect."""
EXAMPLES = 3
EXAMPLE_CHARS = 240
PROBE_DIR = "probe"


@dataclass(frozen=True)
class Rate:
    """`passed` of `total` answers, with a 95% bootstrap interval over prompts (None when total is 0)."""

    passed: int
    total: int
    ci: tuple[float, float] | None

    @property
    def value(self) -> float:
        return self.passed / self.total if self.total else 0.0

    def shown(self) -> str:
        """`0.250 [0.06, 0.50]`, the way every rate in Distillery is printed."""
        return with_interval(self.value, self.ci) if self.total else "-"


def rate_of(flags: list[bool], groups: list[str]) -> Rate:
    """The share of True in `flags`, its interval resampling whole prompts (`groups`), as `sft eval` does."""
    ci = bootstrap_ci([float(f) for f in flags], groups)
    return Rate(sum(flags), len(flags), ci)


@dataclass
class ProbeResult:
    """What one probe found: the answers, each check's verdicts on them, and the rates built from those."""

    probe_dir: Path
    prompts: int
    table: pa.Table  # every row sampled, failed ones included, in prompt file order: generate's schema
    rows: list[Row]  # the same rows as curate's checks read them
    verdicts: dict[str, list[Verdict]]  # check label -> one verdict per answered row, recipe order
    kept: list[bool]  # per answered row: curate would keep it (every check, in curate's order)
    check_types: dict[str, str]
    behaviour_checks: list[str]
    max_new_tokens: int
    teacher: str
    seconds: float = 0.0

    @property
    def answered(self) -> list[Row]:
        """Rows the teacher answered; failed ones (an empty prompt, a server error) are not judged."""
        return [r for r in self.rows if r["error"] is None]

    @property
    def failed(self) -> int:
        return len(self.rows) - len(self.answered)

    def flags(self, name: str) -> list[bool]:
        return [v.passed for v in self.verdicts[name]]

    def behaviour_flags(self) -> list[bool]:
        """An answer shows the behaviour when every behaviour check passes it (as in `sft eval`)."""
        per_check = [self.flags(n) for n in self.behaviour_checks]
        return [all(passes) for passes in zip(*per_check, strict=True)] if per_check else []

    def cut_flags(self) -> list[bool]:
        return [r["finish_reason"] == "length" for r in self.answered]

    def rate(self, flags: list[bool]) -> Rate:
        """A share of the answered rows, its interval resampling prompts."""
        return rate_of(flags, [r["prompt_id"] for r in self.answered])

    @cached_property
    def check_rates(self) -> dict[str, Rate]:
        """Each check's pass rate, in the recipe's order."""
        return {name: self.rate(self.flags(name)) for name in self.verdicts}

    @cached_property
    def behaviour(self) -> Rate:
        return self.rate(self.behaviour_flags())

    @cached_property
    def cut(self) -> Rate:
        """Answers stopped by max_new_tokens (finish reason `length`)."""
        return self.rate(self.cut_flags())

    @cached_property
    def kept_rate(self) -> Rate:
        return self.rate(self.kept)


def probe_params(recipe: Recipe) -> SamplingParams:
    """The recipe's own sampling settings with one sample per prompt: the probe asks how often the
    teacher shows the behaviour, and n samples of one prompt would mostly measure that prompt."""
    return replace(sampling_params(recipe), n=1)


def probe_prompts(recipe: Recipe, recipe_dir: Path | None, n: int) -> list[PromptItem]:
    """The first `n` prompts in file order (after the repeats generate drops, within `prompts.limit`)."""
    limit = min(n, recipe.prompts.limit) if recipe.prompts.limit else n
    items, _ = load_prompts(recipe.prompts, recipe.teacher, recipe_dir, limit)
    return items


def sample(
    engine: Engine, items: list[PromptItem], params: SamplingParams, recipe_hash: str, console: Console
) -> pa.Table:
    """Rows exactly as `synth generate` builds them (`generate_shard`: its schema, its failed rows), in
    the order of `items` (file order: generate's longest-first sort is for its batches); nothing is
    written."""
    with progress_bar(console) as progress:
        task = progress.add_task("probing", total=len(items) * params.n, tokens=0)

        def on_progress(rows: int, tokens: int) -> None:
            progress.update(task, advance=rows, tokens=progress.tasks[task].fields["tokens"] + tokens)

        result = generate_shard(engine, items, params, engine.provenance(params), recipe_hash, on_progress)
        progress.update(task, completed=len(items) * params.n)
    return result.table


def judge(recipe: Recipe, checker: ShardChecker, rows: list[Row]) -> tuple[dict[str, list[Verdict]], list[bool]]:
    """Every curate check's verdict on every answered row, each check on its own; and which rows curate
    would keep (before its per-prompt selection).

    Row checks run with curate's own set-up instances (`ShardChecker`); a row check decides each row
    alone, so curate's order (a row's first failure rejects it) only matters for the keep list. Dedup
    checks index every row and resolve twice: over all rows (their own rate) and, as curate does,
    over the rows still kept (the keep list). Which member of a cluster is kept does not
    change how many pass, so rows rank by file order.
    """
    row_checks = {c.name: c for c in checker.row_checks}
    groups = {g.name: g for g in checker.group_checks}
    ids = [r["id"] for r in rows]
    verdicts = {name: check.run(rows) if rows else [] for name, check in row_checks.items()}
    position = {row_id: n for n, row_id in enumerate(ids)}
    kept = {row_id for n, row_id in enumerate(ids) if all(vs[n].passed for vs in verdicts.values())}
    rank = lambda row_id: (0.0, 0, position[row_id])  # noqa: E731
    for name, group in groups.items():  # in curate's order: each dedup sees what the one before left
        group.insert(ids, group.keys(rows))
        alone = group.resolve(set(ids), rank)
        verdicts[name] = [alone[row_id] for row_id in ids]
        duplicates = {row_id for row_id, v in group.resolve(kept, rank).items() if not v.passed}
        kept -= duplicates
    ordered = {spec.label: verdicts[spec.label] for spec in recipe.curate.checks}
    return ordered, [row_id in kept for row_id in ids]


def run_probe(
    recipe: Recipe,
    run_dir: Path,
    recipe_dir: Path | None = None,
    prompts: int = DEFAULT_PROMPTS,
    console: Console | None = None,
    engine: Engine | None = None,
) -> ProbeResult:
    """Sample, judge and rate; write RUN_DIR/probe/ only. Checks and names are set up before the
    teacher loads, so a recipe mistake fails in seconds, not after the sampling."""
    console = console or Console(stderr=True)
    items = probe_prompts(recipe, recipe_dir, prompts)
    behaviour = behaviour_checks(recipe, {c.label for c in recipe.curate.checks if c.per_row})
    params = probe_params(recipe)
    checker = ShardChecker(recipe, recipe_dir)  # loads models, eval sets and user code, as curate does
    own_engine = engine is None
    engine = engine or build_engine(recipe)
    try:
        start = time.perf_counter()
        table = sample(engine, items, params, recipe.content_hash(), console)
        seconds = time.perf_counter() - start
        rows = table.select(CHECKED_COLUMNS).to_pylist()  # what curate's checks read, as curate gives it
        answered = [r for r in rows if r["error"] is None]
        if not answered:
            first = next((r["error"] for r in rows if r["error"]), "no answer")
            raise UserError(
                f"the teacher answered none of the {len(rows)} probe prompts; the first error: {first}",
                "fix the cause (the server's URL, the model name, the prompts), then probe again",
            )
        verdicts, kept = judge(recipe, checker, answered)
    finally:
        checker.close()
        if own_engine:
            engine.close()
    result = ProbeResult(
        probe_dir=run_dir / PROBE_DIR,
        prompts=len(items),
        table=table,
        rows=rows,
        verdicts=verdicts,
        kept=kept,
        check_types={c.label: c.type for c in recipe.curate.checks},
        behaviour_checks=behaviour,
        max_new_tokens=params.max_new_tokens,
        teacher=f"{engine.model_id} ({engine.name})",
        seconds=seconds,
    )
    write_probe(result)
    return result


def write_probe(result: ProbeResult) -> None:
    """RUN_DIR/probe/answers.parquet and report.json (the rates and advice), each atomically.

    answers.parquet holds every row exactly as a generation shard would (the same schema), plus the
    answer's text, each check's verdict (`checks`), `behaviour` and `kept` (null for a failed row), so
    the answers can be read, or curated, without a second sampling. No other stage reads this folder.
    """
    position = {r["id"]: n for n, r in enumerate(result.answered)}
    flags = result.behaviour_flags()
    checks, behaviour, kept = [], [], []
    for r in result.rows:
        n = position.get(r["id"])
        checks.append([] if n is None else [_verdict(name, vs[n]) for name, vs in result.verdicts.items()])
        behaviour.append(None if n is None else flags[n])
        kept.append(None if n is None else result.kept[n])
    table = result.table
    for name, values, type_ in (
        ("answer", [completion_text(r) for r in result.rows], pa.string()),
        ("checks", checks, REJECTED_SCHEMA.field("verdicts").type),
        ("behaviour", behaviour, pa.bool_()),
        ("kept", kept, pa.bool_()),
    ):
        table = table.append_column(name, pa.array(values, type=type_))
    atomic_write_parquet(result.probe_dir / "answers.parquet", table)
    report = {
        "prompts": result.prompts,
        "answered": len(result.answered),
        "failed": result.failed,
        "teacher": result.teacher,
        "max_new_tokens": result.max_new_tokens,
        "behaviour_checks": result.behaviour_checks,
        "seconds": round(result.seconds, 1),
        "checks": {name: _rate_json(r) for name, r in result.check_rates.items()},
        "behaviour": _rate_json(result.behaviour),
        "cut_at_max_new_tokens": _rate_json(result.cut),
        "passes_every_check": _rate_json(result.kept_rate),
        "advice": advice(result),
    }
    atomic_write_text(result.probe_dir / "report.json", json.dumps(redact(report), indent=2) + "\n")


def _rate_json(r: Rate) -> dict[str, Any]:
    return {"passed": r.passed, "total": r.total, "rate": r.value, "ci": list(r.ci) if r.ci else None}


def _verdict(name: str, v: Verdict) -> dict[str, Any]:
    """A verdict as curate stores it in a row's `verdicts`."""
    return {"name": name, "passed": v.passed, "score": v.score, "reason": v.reason}


def advice(result: ProbeResult) -> list[str]:
    """What to change before a full run when the behaviour is rare; nothing when it is not.

    Cut answers come first: an answer stopped at max_new_tokens may not have reached the part that
    shows the behaviour, and the fix is one field. A brevity behaviour is the exception (its cut
    answers are simply too long), so the teacher is named as well. Cut answers are not flagged when
    the behaviour is common: a recipe such as concise-answers drops them on purpose.
    """
    behaviour, cut = result.behaviour, result.cut
    if not is_low(behaviour):
        return []
    named = " + ".join(result.behaviour_checks)
    head = f"the behaviour ({named}) shows in {behaviour.passed} of {behaviour.total} answers"
    teacher = "another teacher (teacher.path, teacher.engine) or another request (teacher.system_prompt)"
    if cut.value >= MANY_CUT:
        return [
            f"{head}, and {cut.passed} of {cut.total} answers stop at the token budget before they can show it: "
            f"raise generate.max_new_tokens (now {result.max_new_tokens}), "
            f"e.g. generate.max_new_tokens={2 * result.max_new_tokens}, and probe again",
            f"if the behaviour is to be brief, cut answers are just too long: try {teacher} instead",
        ]
    return [
        f"{head}, and most answers end on their own: the teacher does not do it when asked this way",
        f"try {teacher}; read the answers below in case the check ({named}) misses what they do",
    ]


def is_low(behaviour: Rate) -> bool:
    """Too rare to be worth a full run: never seen, or even the interval's upper end under LOW_BEHAVIOUR."""
    return behaviour.passed == 0 or (behaviour.ci is not None and behaviour.ci[1] < LOW_BEHAVIOUR)


def examples(result: ProbeResult, k: int = EXAMPLES) -> list[str]:
    """The first `k` answers, cut to one short line each, marked with what the behaviour check said."""
    flags = result.behaviour_flags()
    out = []
    for r, shows in list(zip(result.answered, flags, strict=True))[:k]:
        prompt = excerpt(" ".join(m["content"] for m in r["prompt"] if m["role"] == "user"), 80)
        mark = "behaviour" if shows else "no behaviour"
        cut = ", cut at max_new_tokens" if r["finish_reason"] == "length" else ""
        answer = excerpt(snippet(completion_text(r), EXAMPLE_CHARS), EXAMPLE_CHARS)
        out.append(f"[{mark}{cut}] {prompt}\n    → {answer}")
    return out


def report_table(result: ProbeResult) -> Table:
    """Each check's pass rate on the probe's answers, then behaviour, cut share and every-check share."""
    behaviour = set(result.behaviour_checks)
    rows: list[list[object] | None] = []
    for name in result.verdicts:
        r = result.check_rates[name]
        label = f"{name} (behaviour)" if name in behaviour else name
        rows.append([label, result.check_types[name], f"{r.passed}/{r.total}", r.shown()])
    b, c, e = result.behaviour, result.cut, result.kept_rate
    rows += [
        tables.SECTION,
        ["behaviour", " + ".join(result.behaviour_checks), f"{b.passed}/{b.total}", b.shown()],
        ["cut at max_new_tokens", f"finish length, {result.max_new_tokens}", f"{c.passed}/{c.total}", c.shown()],
        ["passes every check", "curate would keep", f"{e.passed}/{e.total}", e.shown()],
    ]
    if result.failed:
        rows.append(["generation failed", "not judged", f"{result.failed}/{len(result.rows)}", ""])
    title = f"synth probe: {len(result.answered)} answers of {result.teacher}, one per prompt"
    caption = (
        f"{result.seconds:.1f} s of sampling; 95% bootstrap intervals over prompts; "
        f"answers in {result.probe_dir}; nothing written to generations/ or curated/"
    )
    columns = ("check", "type", "passed", "pass rate [95% CI]")
    return tables.summary_table(title, columns, rows, caption=caption, left={"type"}, no_wrap=True)


def print_probe(result: ProbeResult, console: Console) -> None:
    """The table, three answers to read, and the advice (or the next command when there is none)."""
    console.print(report_table(result))
    console.print("\n[bold]Example answers[/]", highlight=False)
    for text in examples(result):
        console.print(escape(text), highlight=False, soft_wrap=True)
    tips = advice(result)
    if tips:
        console.print("\n[bold yellow]advice:[/]", highlight=False)
        for tip in tips:
            console.print(f"  - {escape(tip)}", highlight=False, soft_wrap=True)
    else:
        b, k = result.behaviour, result.kept_rate
        console.print(
            f"\nThe teacher shows the behaviour in {b.passed} of {b.total} answers and curate would keep "
            f"{k.passed}: go on with `synth generate` and the same recipe.",
            highlight=False,
        )
