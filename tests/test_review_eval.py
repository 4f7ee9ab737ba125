"""Blind side-by-side preference on eval answers, against a real argilla-server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from synth.review.compare import slots_for, win_rates
from tests.conftest import run_cli
from tests.eval_helpers import answer_rows, report_for, write_eval

MODELS = ["teacher", "base_student", "sft"]


def test_win_rates_map_choices_back_to_models() -> None:
    mapping = {"r1": {1: "sft", 2: "teacher"}, "r2": {1: "teacher", 2: "sft"}, "r3": {1: "sft", 2: "teacher"}}
    rates = win_rates([("r1", "answer_1"), ("r2", "answer_2"), ("r3", "tie"), ("other", "answer_1")], mapping)
    assert rates["sft"]["rate"] == pytest.approx(2 / 3) and rates["sft"]["n"] == 3
    assert rates["teacher"]["rate"] == 0.0
    assert slots_for("p1", MODELS, 0) == slots_for("p1", MODELS, 0)
    assert len({tuple(slots_for(f"p{i}", MODELS, 0)) for i in range(20)}) > 1  # shuffled per prompt


def _eval_run(tmp_path: Path) -> tuple[Path, Path]:
    """A run folder with eval answers of three models on 6 prompts (sft's answers say 'SFT')."""
    run = tmp_path / "run"
    rows = []
    for m in MODELS:
        rows += answer_rows(
            m, [(True, True, f"Answer {i} by {'SFT' if m == 'sft' else 'another model'}.") for i in range(6)]
        )
    write_eval(run / "eval", rows, report_for(rows, MODELS))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({"name": "cmp"}))
    return run, recipe


@pytest.mark.slow
def test_eval_answers_review_end_to_end(argilla_server: Any, tmp_path: Path) -> None:
    rg = pytest.importorskip("argilla")
    from tests.test_review import Reviewer

    run, recipe = _eval_run(tmp_path)
    env = {"ARGILLA_API_URL": argilla_server.url, "ARGILLA_API_KEY": argilla_server.api_key}
    out = run_cli("synth", "review", "push", str(recipe), "--eval", "--run-dir", str(run), env=env)
    assert out.returncode == 0, out.stderr
    assert "pushed 6 blind comparisons of 3 models" in out.stdout

    owner = rg.Argilla(api_url=argilla_server.url, api_key=argilla_server.api_key)
    ds = owner.datasets("cmp-eval")
    records = list(ds.records())
    assert len(records) == 6
    for rec in records:
        shown = [rec.fields[f"answer_{i}"] for i in (1, 2, 3)]
        assert sorted(s.split(" by ")[1] for s in shown) == ["SFT.", "another model.", "another model."]
        assert not any(m in json.dumps(rec.metadata or {}) for m in MODELS)  # blind: no model names
    sft_slots = {next(i for i in (1, 2, 3) if "SFT" in r.fields[f"answer_{i}"]) for r in records}
    assert len(sft_slots) > 1  # the order is shuffled per prompt

    # a reviewer picks the SFT answer on 4 records, a tie on 1, and leaves a draft on the last
    ws = owner.workspaces(ds.workspace.name)
    carol = Reviewer(argilla_server, owner, ws, "carol")
    pending = carol.pending(ds.id)
    by_id = {r.id: r for r in records}
    for n, (ext, rid) in enumerate(sorted(pending.items())):
        slot = next(i for i in (1, 2, 3) if "SFT" in by_id[ext].fields[f"answer_{i}"])
        if n < 4:
            carol.answer(rid, best=f"answer_{slot}")
        elif n == 4:
            carol.answer(rid, best="tie")
        else:
            carol.answer(rid, status="draft", best=f"answer_{slot % 3 + 1}")
    out = run_cli("synth", "review", "pull", str(recipe), "--eval", "--run-dir", str(run), env=env)
    assert out.returncode == 0, out.stderr
    rep = json.loads((run / "eval" / "report.json").read_text())
    assert rep["win_rates"]["sft"]["rate"] == pytest.approx(0.8) and rep["win_rates"]["sft"]["n"] == 5
    assert rep["win_rates"]["teacher"]["rate"] == 0.0 and rep["win_rates"]["base_student"]["n"] == 5
    md = (run / "eval" / "report.md").read_text()
    assert md.count("## Human preference") == 1 and "| sft | 0.800" in md
    again = run_cli("synth", "review", "pull", str(recipe), "--eval", "--run-dir", str(run), env=env)
    assert again.returncode == 0 and (run / "eval" / "report.md").read_text() == md  # idempotent
