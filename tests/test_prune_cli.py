"""`sft prune RECIPE` as a user runs it: the recipe's prune: section, the folder model.path names, and
one-line errors for the mistakes (no section, writing over the source, a ratio that removes nothing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, run_cli, write_jsonl
from tests.test_train_reliability import one_error_line


def _recipe(tmp_path: Path, **prune: Any) -> Path:
    """A recipe whose prune: section writes tmp_path/student, the folder its model.path names."""
    write_jsonl(
        tmp_path / "cal.jsonl", [{"prompt": q} for q in ("Name a colour.", "Say hello.", "Why is the sky blue?")]
    )
    body: dict[str, Any] = {"name": "p", "model": {"path": str(tmp_path / "student")}, "teacher": {"path": "smollm2"}}
    body["prune"] = {"out": str(tmp_path / "student"), "calibration": {"path": "cal.jsonl"}, **prune}
    (tmp_path / "r.yaml").write_text(json.dumps(body))
    return tmp_path / "r.yaml"


def test_sft_prune_writes_the_student_model_path_names(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from synth.errors import UserError
    from synth.models import resolve_model

    recipe = _recipe(tmp_path, drop=15)
    # before pruning, the student's folder does not exist: the error says so, not "not a Hub id"
    with pytest.raises(UserError, match="no such folder") as info:
        resolve_model(str(tmp_path / "student"))
    assert "sft prune" in (info.value.hint or "")
    res = run_cli("sft", "prune", str(recipe), "--run-dir", str(tmp_path / "run"), cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "30 → 15" in res.stdout and "134.5M → 81.4M" in res.stdout
    record = json.loads((tmp_path / "student" / "prune.json").read_text())
    assert record["layers_before"] == 30 and len(record["kept"]) == 15 and record["calibration_prompts"] == 3
    assert record["kept"][0] == 0 and record["kept"][-1] == 29  # the first and last layers stay
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "student")  # plain transformers, no Distillery
    assert model.config.num_hidden_layers == 15

    # depth and width: the demo's 28% student, its new sizes in the summary and the folder
    recipe = _recipe(tmp_path, drop=18, hidden_size=384, intermediate_size=1024, kv_heads=2)
    res = run_cli("sft", "prune", str(recipe), "--run-dir", str(tmp_path / "run"), cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "576 → 384" in res.stdout and "1536 → 1024" in res.stdout and "134.5M → 37.8M" in res.stdout
    c = AutoModelForCausalLM.from_pretrained(tmp_path / "student").config
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_key_value_heads) == (12, 384, 1024, 2)


def test_prune_mistakes_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "none.yaml").write_text(json.dumps({"name": "p"}))
    one_error_line(run_cli("sft", "prune", str(tmp_path / "none.yaml"), "--run-dir", str(tmp_path / "r")), "prune:")
    recipe = _recipe(tmp_path, keep_ratio=0.99)
    one_error_line(run_cli("sft", "prune", str(recipe), "--run-dir", str(tmp_path / "r")), "removes none")
    recipe = _recipe(tmp_path, drop=2, source=str(tmp_path / "student"))
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "config.json").write_text("{}")
    one_error_line(run_cli("sft", "prune", str(recipe), "--run-dir", str(tmp_path / "r")), "is the model being pruned")
    recipe = _recipe(tmp_path, drop=2, keep_ratio=0.5)
    one_error_line(
        run_cli("sft", "prune", str(recipe), "--run-dir", str(tmp_path / "r")), "prune", "drop or keep_ratio"
    )
