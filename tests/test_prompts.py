"""Prompt sources, column mapping and the two views; structural errors name file and line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synth.errors import UserError
from synth.prompts import load_prompts
from synth.recipe import PromptsSpec, TeacherSpec
from tests.conftest import ROOT, write_jsonl

TEACHER = TeacherSpec(system_prompt="Always answer in French.")


def test_shipped_prompt_sets_are_large_and_disjoint() -> None:
    seed = [json.loads(x)["prompt"] for x in (ROOT / "data/seed_prompts.jsonl").read_text().splitlines()]
    held = [json.loads(x)["prompt"] for x in (ROOT / "data/heldout_prompts.jsonl").read_text().splitlines()]
    assert len(set(seed)) >= 200 and len(set(held)) >= 100
    assert not set(seed) & set(held)


def test_jsonl_views_ids_and_meta(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": "x1", "prompt": "Hi", "topic": "t"}, {"id": "x2", "prompt": "Yo"}])
    items, repeats = load_prompts(PromptsSpec(path=str(p), meta_columns=[]), TEACHER)
    assert repeats == 0 and len(items) == 2
    a = items[0]
    assert a.prompt == [{"role": "user", "content": "Hi"}]
    assert a.teacher_prompt == [{"role": "system", "content": "Always answer in French."}, a.prompt[0]]
    assert a.meta["source_id"] == "x1"
    again, _ = load_prompts(PromptsSpec(path=str(p)), TEACHER)
    assert [i.prompt_id for i in again] == [i.prompt_id for i in items]


def test_student_system_prompt_is_kept_in_both_views(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi"}])
    items, _ = load_prompts(PromptsSpec(path=str(p), system_prompt="Be brief."), TEACHER)
    assert items[0].prompt[0] == {"role": "system", "content": "Be brief."}
    assert items[0].teacher_prompt[0]["content"] == "Always answer in French.\n\nBe brief."


def test_csv_parquet_json_and_messages_column(tmp_path: Path) -> None:
    with (tmp_path / "p.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question"])
        w.writerow(["What, if anything?"])
    items, _ = load_prompts(PromptsSpec(path=str(tmp_path / "p.csv"), prompt_column="question"), TeacherSpec())
    assert items[0].prompt[0]["content"] == "What, if anything?"
    msgs = [[{"role": "user", "content": "Hello"}], [{"role": "user", "content": "Bye"}]]
    pq.write_table(pa.table({"conv": msgs}), tmp_path / "p.parquet")
    items, _ = load_prompts(PromptsSpec(path=str(tmp_path / "p.parquet"), messages_column="conv"), TeacherSpec())
    assert [i.prompt for i in items] == msgs
    (tmp_path / "p.json").write_text(json.dumps([{"prompt": "A"}, {"prompt": "B"}, {"prompt": "C"}]))
    items, _ = load_prompts(PromptsSpec(path=str(tmp_path / "p.json"), limit=2), TeacherSpec())
    assert [i.prompt[0]["content"] for i in items] == ["A", "B"]


def test_dataset_name_through_datasets(tmp_path: Path) -> None:
    folder = tmp_path / "myset"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"instruction": "One"}, {"instruction": "Two"}])
    items, _ = load_prompts(PromptsSpec(dataset=str(folder), prompt_column="instruction"), TeacherSpec())
    assert [i.prompt[0]["content"] for i in items] == ["One", "Two"]


def test_malformed_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "ok"}\n\n{"prompt": "broken"\n{"prompt": "fine"}\n')
    msg = str(pytest.raises(UserError, load_prompts, PromptsSpec(path=str(p)), TeacherSpec()).value)
    assert f"{p}:3: not valid JSON" in msg


def test_missing_and_wrongly_typed_columns(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "p.jsonl", [{"text": "hi"}])
    msg = str(pytest.raises(UserError, load_prompts, PromptsSpec(path=str(p)), TeacherSpec()).value)
    assert f"{p}:1: no column 'prompt'" in msg and "text" in msg and "prompt_column" in msg
    p = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "ok"}, {"prompt": 42}])
    msg = str(pytest.raises(UserError, load_prompts, PromptsSpec(path=str(p)), TeacherSpec()).value)
    assert f"{p}:2: column 'prompt' must be a string, got int" in msg
    p = write_jsonl(tmp_path / "m.jsonl", [{"messages": "not a list"}])
    spec = PromptsSpec(path=str(p), messages_column="messages")
    assert "list of {role, content}" in str(pytest.raises(UserError, load_prompts, spec, TeacherSpec()).value)


def test_empty_prompt_becomes_a_rejected_item_and_repeats_drop(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "A"}, {"prompt": "  "}, {"prompt": None}, {"prompt": "A"}])
    items, repeats = load_prompts(PromptsSpec(path=str(p)), TeacherSpec())
    assert repeats == 1  # the second "A"; the two empty prompts differ in content ("  " vs "")
    assert [i.error for i in items] == [None, "empty prompt", "empty prompt"]


def test_missing_file_and_unknown_type(tmp_path: Path) -> None:
    msg = str(pytest.raises(UserError, load_prompts, PromptsSpec(path="nope.jsonl"), TeacherSpec()).value)
    assert "not found" in msg
    (tmp_path / "p.txt").write_text("x")
    msg = str(pytest.raises(UserError, load_prompts, PromptsSpec(path=str(tmp_path / "p.txt")), TeacherSpec()).value)
    assert "unsupported prompts file type" in msg
    assert "exactly one" in str(pytest.raises(UserError, load_prompts, PromptsSpec(), TeacherSpec()).value)


def test_relative_paths_resolve_against_the_recipe_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A recipe and its data move together: the recipe's folder wins over the working folder."""
    mine = tmp_path / "project"
    mine.mkdir()
    write_jsonl(mine / "p.jsonl", [{"prompt": "from the recipe's folder"}])
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    write_jsonl(elsewhere / "p.jsonl", [{"prompt": "from the working folder"}])
    monkeypatch.chdir(elsewhere)
    items, _ = load_prompts(PromptsSpec(path="p.jsonl"), TEACHER, recipe_dir=mine)
    assert items[0].prompt[0]["content"] == "from the recipe's folder"
    items, _ = load_prompts(PromptsSpec(path="p.jsonl"), TEACHER, recipe_dir=tmp_path)  # not there: working folder
    assert items[0].prompt[0]["content"] == "from the working folder"


@pytest.mark.parametrize("name", ["concise-answers.yaml", "answer-in-french.yaml"])
def test_shipped_recipes_find_their_data_from_any_folder(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from synth.recipe import load_recipe

    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(ROOT / "recipes" / name)
    items, _ = load_prompts(recipe.prompts, recipe.teacher, recipe_dir=ROOT / "recipes")
    assert len(items) == recipe.prompts.limit
    held = PromptsSpec(path=recipe.eval.prompts)
    assert len(load_prompts(held, recipe.teacher, recipe_dir=ROOT / "recipes")[0]) == 108
