"""`synth probe`: rates that agree with curate's own checks, advice that names the field to change,
and nothing written where `synth generate` or `synth curate` look."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from rich.console import Console

from synth.curate.base import Context, Verdict
from synth.curate.stage import CHECKED_COLUMNS, ShardChecker, run_curate
from synth.errors import UserError
from synth.io import atomic_write_parquet
from synth.probe import ProbeResult, advice, judge
from synth.recipe import Recipe, load_recipe
from synth.records import SCHEMA, Completion, PromptItem, make_rows, prompt_id_for, rows_to_table
from tests.conftest import RECIPE, ROOT, run_cli, write_jsonl

CONCISE = ROOT / "recipes" / "concise-answers.yaml"
# A cheap, model-free curate section: a cut answer, a long one and a repeat are each rejected by one check.
CHEAP_CHECKS = [
    "curate.checks=[{type: truncated}, {type: word_count, name: concise, max_words: 5}, {type: exact_dedup}]",
    "curate.score=null",
    "eval.behaviour_check=concise",
]


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The printed table as {first cell: cells}, read from rich's box characters."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            out[cells[0]] = cells
    return out


def check_counts(recipe: Recipe, rows: list[dict]) -> dict[str, int]:
    """How many of `rows` each row check of the recipe passes, run as curate runs it (set up, then `run`)."""
    counts = {}
    for spec in recipe.curate.checks:
        if spec.per_row:
            check = spec.runner(spec)
            check.setup(Context(recipe, RECIPE.parent))
            counts[spec.label] = sum(v.passed for v in check.run([dict(r) for r in rows]))
    return counts


@pytest.mark.slow
def test_probe_rates_agree_with_curate_and_nothing_lands_where_generate_looks(tmp_path: Path) -> None:
    # Four prompts, one of them empty (a failed row, not judged); 2 new tokens: every answer is cut,
    # and `length` (at least 20 characters) as the behaviour is one no 2-token answer passes.
    prompts = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"id": "a", "prompt": "Name a colour."},
            {"id": "b", "prompt": ""},
            {"id": "c", "prompt": "What is two plus two?"},
            {"id": "d", "prompt": "Say hello to a friend."},
            {"id": "e", "prompt": "Not probed: only the first four prompts are."},
        ],
    )
    overrides = [f"prompts.path={prompts}", "generate.max_new_tokens=2", "eval.behaviour_check=length"]
    res = run_cli("synth", "probe", str(RECIPE), *overrides, "--prompts", "4", cwd=tmp_path)
    assert res.returncode == 0, res.stderr

    run = tmp_path / "runs" / "answer-in-french"
    written = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    assert written == ["probe/answers.parquet", "probe/report.json"]  # no generations/, curated/, resolved recipe

    rows = pq.read_table(run / "probe" / "answers.parquet").to_pylist()
    assert [json.loads(r["meta"])["source_id"] for r in rows] == ["a", "b", "c", "d"]  # first 4, file order
    assert rows[1]["error"] == "empty prompt"
    answered = [{k: r[k] for k in CHECKED_COLUMNS} for r in rows if r["error"] is None]
    assert len(answered) == 3 and all(r["teacher"]["sampling"]["n"] == 1 for r in rows)

    recipe = load_recipe(RECIPE, overrides)
    table = table_rows(res.stdout)
    report = json.loads((run / "probe" / "report.json").read_text())
    for label, passed in check_counts(recipe, answered).items():
        shown = label + (" (behaviour)" if label == "length" else "")
        assert table[shown][2] == f"{passed}/3", (label, table[shown])
        assert table[shown][3].startswith(f"{passed / 3:.3f} ["), (label, table[shown])
        assert report["checks"][label]["passed"] == passed and report["checks"][label]["total"] == 3
    assert set(report["checks"]) == {c.label for c in recipe.curate.checks}  # dedup checks too
    assert table["generation failed"][2] == "1/4"

    # "passes every check" is what `synth curate` itself keeps of these rows (one per prompt: top-2 keeps all)
    elsewhere = tmp_path / "elsewhere"
    atomic_write_parquet(
        elsewhere / "generations" / "shard-00000.parquet",
        pq.read_table(run / "probe" / "answers.parquet", columns=SCHEMA.names),
    )
    with contextlib.suppress(UserError):  # curate may also say, in an error, that it kept nothing
        run_curate(recipe, elsewhere, recipe_dir=RECIPE.parent, console=Console(quiet=True))
    kept = pq.read_table(elsewhere / "curated" / "kept.parquet").num_rows
    assert table["passes every check"][2] == f"{kept}/3" == f"{report['passes_every_check']['passed']}/3"

    # The behaviour never shows and every answer is cut: the advice names the budget's field and value.
    assert report["behaviour"]["passed"] == 0 and report["cut_at_max_new_tokens"]["passed"] == 3
    assert table["behaviour"][2] == "0/3" and table["cut at max_new_tokens"][2] == "3/3"
    assert "advice:" in res.stdout and "generate.max_new_tokens (now 2)" in res.stdout
    assert "generate.max_new_tokens=4" in res.stdout
    assert res.stdout.count("→") == 3  # three example answers


def test_probe_mistakes_end_in_one_line_before_any_model_loads(tmp_path: Path) -> None:
    res = run_cli("synth", "probe", str(RECIPE), "eval.behaviour_check=no_such_check", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.count("error:") == 1 and "eval.behaviour_check names 'no_such_check'" in res.stderr
    assert not (tmp_path / "runs").exists()
    zero = run_cli("synth", "probe", str(RECIPE), "--prompts", "0", cwd=tmp_path)
    assert zero.returncode == 2 and "--prompts" in zero.stderr
    helped = run_cli("synth", "probe", "--help")
    assert helped.returncode == 0
    text = " ".join(helped.stdout.split())
    assert "Nothing is written where synth generate or synth curate look" in text and "--prompts" in text


def _row(i: int, text: str, finish: str = "stop") -> dict:
    """One generated row as `synth generate` builds it, for prompt number `i`."""
    prompt = [{"role": "user", "content": f"question {i}"}]
    item = PromptItem(prompt_id_for(prompt, prompt), prompt, prompt, {"source_id": str(i)})
    teacher = {"model": "m", "revision": None, "engine": "transformers", "sampling": {"n": 1}}
    return make_rows(item, [Completion(text, finish, 3, 5)], teacher, "hash")[0]


def test_judge_keeps_exactly_what_curate_keeps(tmp_path: Path) -> None:
    recipe = load_recipe(CONCISE, CHEAP_CHECKS)
    generated = [
        _row(0, "Blue."),
        _row(1, "Red and green, and also a few more words here."),  # too long
        _row(2, "Blue."),  # a repeat of row 0
        _row(3, "Yellow is", "length"),  # cut
        _row(4, "Four."),
    ]
    atomic_write_parquet(tmp_path / "generations" / "shard-00000.parquet", rows_to_table(generated))
    summary = run_curate(recipe, tmp_path, console=Console(quiet=True))

    rows = [{k: r[k] for k in CHECKED_COLUMNS} for r in generated]
    checker = ShardChecker(recipe, None)
    verdicts, kept = judge(recipe, checker, rows)
    assert sum(kept) == summary.kept == 2
    assert {k: sum(v.passed for v in vs) for k, vs in verdicts.items()} == {
        "truncated": 4,
        "concise": 4,  # "Yellow is" is short: each check judges every row, not only the survivors
        "exact_dedup": 4,
    }


def _result(behaviour: list[bool], cut: list[bool]) -> ProbeResult:
    """A probe's outcome without a model: one answer per prompt, `concise` the behaviour check."""
    rows = [
        {"id": f"r{i}", "prompt_id": f"p{i}", "error": None, "finish_reason": "length" if c else "stop"}
        for i, c in enumerate(cut)
    ]
    return ProbeResult(
        probe_dir=Path("runs/x/probe"),
        prompts=len(rows),
        table=rows_to_table([]),
        rows=rows,
        verdicts={"concise": [Verdict(b) for b in behaviour]},
        kept=behaviour,
        check_types={"concise": "word_count"},
        behaviour_checks=["concise"],
        max_new_tokens=96,
        teacher="m (transformers)",
    )


def test_advice_names_the_budget_when_answers_are_cut_else_the_teacher() -> None:
    never = [False] * 16
    cut = advice(_result(never, [True] * 12 + [False] * 4))
    assert "generate.max_new_tokens (now 96)" in cut[0] and "0 of 16" in cut[0] and "12 of 16" in cut[0]
    ended = " ".join(advice(_result(never, [True] * 2 + [False] * 14)))
    assert "teacher.path" in ended and "teacher.system_prompt" in ended and "max_new_tokens" not in ended

    often = [True, False] * 8
    assert advice(_result(often, [False] * 16)) == []
    assert advice(_result(often, [True] * 16)) == []  # cut answers alone are no reason: concise drops them


def test_rates_use_the_answered_rows_and_a_rare_behaviour_is_low() -> None:
    rare = _result([True] + [False] * 49, [False] * 50)
    assert (rare.behaviour.passed, rare.behaviour.total) == (1, 50)
    assert rare.behaviour.value == pytest.approx(0.02) and rare.behaviour.ci is not None
    assert rare.behaviour.ci[1] < 0.1 and advice(rare)  # even the interval's upper end is under 1 in 10
    some = _result([True, False, False, False] * 4, [False] * 16)
    assert some.behaviour.shown().startswith("0.250 [") and advice(some) == []
