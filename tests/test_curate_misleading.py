"""Curate never looks fine when it is not: an unfinished or running generation, nothing kept, a user
check that fails on every row; and a check module beside the recipe is found."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from filelock import FileLock
from rich.console import Console

from synth.curate.stage import run_curate
from synth.errors import UserError
from synth.recipe import load_recipe
from tests.curate_helpers import recipe_text, rows_for, write_run


def _run(tmp_path: Path) -> Path:
    return write_run(
        tmp_path / "run", [rows_for(f"prompt {i}", [f"answer {i}", f"other answer {i}"]) for i in range(4)]
    )


def _recipe(folder: Path, checks: list[dict], score: str | None = None) -> object:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "r.yaml").write_text(recipe_text(checks, score=score))
    return load_recipe(folder / "r.yaml")


def _module(folder: Path, name: str, body: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(body)
    sys.modules.pop(name, None)
    return f"{name}:check"


def test_a_check_that_raises_on_every_row_is_an_error_not_a_verdict(tmp_path: Path) -> None:
    broken = _module(tmp_path, "broken_check", "def check(row):\n    return row['meta']['score'] > 1\n")
    recipe = _recipe(tmp_path, [{"type": "python", "function": broken, "name": "mine"}])
    with pytest.raises(UserError) as err:
        run_curate(recipe, _run(tmp_path), recipe_dir=tmp_path)
    assert "curate check 'mine': broken_check:check raised on every one of 8 rows (TypeError: " in err.value.message
    assert "TypeError: string indices" in err.value.message and "taken for a bug: fix it" in err.value.hint
    assert not (tmp_path / "run" / "curated").exists()
    # raising on some rows is a verdict on those rows: rejected with the exception as the reason
    picky = _module(
        tmp_path,
        "picky_check",
        "def check(row):\n    assert 'other' in row['completion'][0]['content']\n    return True\n",
    )
    s = run_curate(_recipe(tmp_path, [{"type": "python", "function": picky}]), _run(tmp_path), recipe_dir=tmp_path)
    assert s.kept == 4 and s.rejected == 4
    report = json.loads((tmp_path / "run" / "curated" / "report.json").read_text())
    assert report["raised"] == {"python": [{"exception": "AssertionError:", "rows": 4}]}
    assert report["decontamination"] == []  # what a function raised is not an eval item found in the data


def test_a_check_module_beside_the_recipe_is_found_from_any_folder(tmp_path: Path, monkeypatch) -> None:
    recipes = tmp_path / "recipes"
    ref = _module(recipes, "beside_recipe_check", "def check(row):\n    return True\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(sys, "path", list(sys.path))
    s = run_curate(_recipe(recipes, [{"type": "python", "function": ref}]), _run(tmp_path), recipe_dir=recipes)
    assert s.kept == 8
    with pytest.raises(UserError) as err:
        run_curate(_recipe(recipes, [{"type": "python", "function": "nowhere_check:check"}]), _run(tmp_path), recipes)
    assert f"no module 'nowhere_check' in {recipes.resolve()}" in err.value.message
    assert "beside the recipe" in err.value.hint


def test_nothing_kept_is_an_error_whose_advice_fits_the_cause(tmp_path: Path) -> None:
    # the behaviour check (curate.score) rejects everything: the teacher does not show the behaviour
    behaviour = {"type": "regex", "pattern": "^Great question", "name": "opening"}
    recipe = _recipe(tmp_path, [{"type": "empty"}, behaviour], score="opening")
    with pytest.raises(UserError) as err:
        run_curate(recipe, _run(tmp_path), recipe_dir=tmp_path)
    assert err.value.message.startswith("curate kept 0 of 8 rows: 'opening' rejected 8 of the 8 rows")
    assert "does not show the behaviour" in err.value.hint and "generate.max_new_tokens" in err.value.hint
    assert (tmp_path / "run" / "curated" / "report.md").is_file()  # the report says why, row by row
    # another check: read its rejections, then loosen it
    recipe = _recipe(tmp_path, [{"type": "length", "min_chars": 500}])
    with pytest.raises(UserError) as err:
        run_curate(recipe, _run(tmp_path), recipe_dir=tmp_path)
    assert "loosen 'length'" in err.value.hint and "synth probe" not in err.value.hint


def test_an_unfinished_or_running_generation_is_named(tmp_path: Path) -> None:
    run = _run(tmp_path)
    recipe = _recipe(tmp_path, [{"type": "empty"}])
    gen = run / "generations"
    (gen / "_manifest.json").write_text(json.dumps({"complete": False, "prompts": 4, "prompts_in_source": 10}))
    out = io.StringIO()
    run_curate(recipe, run, recipe_dir=tmp_path, console=Console(file=out, width=300))
    assert "generation is unfinished (4 of 10 prompts)" in out.getvalue()
    (gen / "_manifest.json").write_text(json.dumps({"complete": True, "prompts": 10, "prompts_in_source": 10}))
    out = io.StringIO()
    run_curate(recipe, run, recipe_dir=tmp_path, console=Console(file=out, width=300))
    assert "unfinished" not in out.getvalue()
    with FileLock(gen / ".generate.lock"), pytest.raises(UserError) as err:
        run_curate(recipe, run, recipe_dir=tmp_path)
    assert "`synth generate` is writing" in err.value.message
