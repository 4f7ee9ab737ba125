"""Recipe validation: errors name file, line, field path and what is allowed; overrides; hashing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from synth.errors import UserError
from synth.recipe import dump_resolved, load_recipe
from tests.conftest import RECIPE


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_default_recipe_loads_and_overrides_apply() -> None:
    r = load_recipe(RECIPE)
    assert r.name == "answer-in-french" and r.teacher.path == "self"
    r2 = load_recipe(RECIPE, ["generate.n=7", "prompts.path=my.jsonl", "teacher.system_prompt=null"])
    assert (r2.generate.n, r2.prompts.path, r2.teacher.system_prompt) == (7, "my.jsonl", None)
    assert r.content_hash() == load_recipe(RECIPE).content_hash()
    assert r.content_hash() != r2.content_hash()
    # where it runs is not what it makes: a run moved to a Ray cluster keeps its hash
    moved = load_recipe(RECIPE, ["runtime.executor=ray", "runtime.threads=1", "runtime.ray.replicas=4"])
    assert moved.content_hash() == r.content_hash()


def test_unknown_field_names_file_line_and_allowed(tmp_path: Path) -> None:
    p = write(tmp_path, "name: x\ngenerate:\n  n: 2\n  temprature: 0.5\n")
    with pytest.raises(UserError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert f"{p}:4: generate.temprature: unknown field" in msg
    assert "temperature" in msg  # the allowed fields are listed


def test_out_of_range_and_wrong_type(tmp_path: Path) -> None:
    p = write(tmp_path, "name: x\ngenerate:\n  n: 0\n  temperature: hot\n")
    msg = str(pytest.raises(UserError, load_recipe, p).value)
    assert f"{p}:3: generate.n: Input should be greater than or equal to 1 (got 0)" in msg
    assert f"{p}:4: generate.temperature:" in msg and "'hot'" in msg


def test_unknown_engine_lists_allowed(tmp_path: Path) -> None:
    p = write(tmp_path, "name: x\nteacher:\n  engine: llamafile\n")
    msg = str(pytest.raises(UserError, load_recipe, p).value)
    assert "teacher.engine" in msg and "'transformers', 'openai' or 'vllm'" in msg


def test_override_errors_are_checked_like_the_file(tmp_path: Path) -> None:
    msg = str(pytest.raises(UserError, load_recipe, RECIPE, ["generate.nn=3"]).value)
    assert "generate.nn: unknown field" in msg
    msg = str(pytest.raises(UserError, load_recipe, RECIPE, ["generate.n"]).value)
    assert "key.path=value" in msg
    msg = str(pytest.raises(UserError, load_recipe, RECIPE, ["name.sub=1"]).value)
    assert "name is a value, not a section" in msg


def test_secret_in_recipe_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path, "name: x\nteacher:\n  openai:\n    api_key: sk-123\n")
    msg = str(pytest.raises(UserError, load_recipe, p).value)
    assert "secrets never go in a recipe" in msg and "sk-123" not in msg


@pytest.mark.parametrize(
    ("override", "home"),
    [
        ("teacher.openai.api_key=sk-live-77aa", "name it in teacher.openai.api_key_env"),
        ("review.api_key=argilla.key.77aa", "ARGILLA_API_KEY"),
        ("publish.token=hf_live77aaBB", "HF_TOKEN"),
    ],
)
def test_a_secret_given_as_an_override_is_never_echoed_and_the_hint_names_its_variable(
    override: str, home: str
) -> None:
    msg = str(pytest.raises(UserError, load_recipe, RECIPE, [override]).value)
    key, secret = override.split("=")
    assert secret not in msg and f"override {key}=***" in msg
    assert "secrets never go in a recipe" in msg and home in msg
    # the other override errors show the text too: masked there as well
    msg = str(pytest.raises(UserError, load_recipe, RECIPE, [override.replace(".", ".0.", 1)]).value)
    assert secret not in msg


def test_a_key_where_a_variable_name_belongs_is_refused_without_echo(tmp_path: Path) -> None:
    for value in ("sk-proj-AbC123xyz", "hf_AbCdEfGh123456", "my key with spaces"):
        p = write(tmp_path, f"name: x\nteacher:\n  openai:\n    api_key_env: {value}\n")
        msg = str(pytest.raises(UserError, load_recipe, p).value)
        assert value not in msg and f"{p}:4: teacher.openai.api_key_env: " in msg, msg
        assert "not an environment variable name" in msg
        msg = str(pytest.raises(UserError, load_recipe, RECIPE, [f"teacher.openai.api_key_env={value}"]).value)
        assert value not in msg and "api_key_env=***" in msg
    for name in ("MY_TEACHER_KEY", "API_KEY", "together_api_key"):  # names, however spelt, are accepted
        assert load_recipe(RECIPE, [f"teacher.openai.api_key_env={name}"]).teacher.openai.api_key_env == name


def test_a_key_in_a_url_query_never_reaches_the_resolved_recipe(tmp_path: Path) -> None:
    r = load_recipe(RECIPE, ["teacher.openai.base_url=http://127.0.0.1:9/v1?api_key=sk-q-123456&x=1"])
    dump_resolved(r, tmp_path / "recipe.resolved.yaml")
    resolved = (tmp_path / "recipe.resolved.yaml").read_text()
    assert "sk-q-123456" not in resolved and "http://127.0.0.1:9/v1?api_key=***&x=1" in resolved


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    p = write(tmp_path, "name: x\ngenerate: [1, 2\n")
    msg = str(pytest.raises(UserError, load_recipe, p).value)
    assert "not valid YAML" in msg and f"{p}:" in msg
    assert "not found" in str(pytest.raises(UserError, load_recipe, tmp_path / "nope.yaml").value)
    p2 = write(tmp_path, "- a\n- b\n")
    assert "YAML mapping" in str(pytest.raises(UserError, load_recipe, p2).value)


def test_resolved_recipe_round_trips_with_hash(tmp_path: Path) -> None:
    r = load_recipe(RECIPE, ["generate.n=3"])
    digest = dump_resolved(r, tmp_path / "recipe.resolved.yaml")
    assert digest == r.content_hash()
    again = load_recipe(tmp_path / "recipe.resolved.yaml")
    assert again.content_hash() == digest and again.generate.n == 3
    resolved = (tmp_path / "recipe.resolved.yaml").read_text()
    assert resolved.startswith("recipe_hash: ") and yaml.safe_load(resolved)["recipe_hash"] == digest


def test_overrides_index_lists() -> None:
    r = load_recipe(RECIPE, ["curate.checks.6.min_confidence=0.5", "curate.select.k=3"])
    assert r.curate.checks[6].min_confidence == 0.5 and r.curate.select.k == 3
    msg = str(pytest.raises(UserError, load_recipe, RECIPE, ["curate.checks.99.name=x"]).value)
    assert "curate.checks.99: the list has" in msg


def test_unknown_field_inside_a_check_lists_that_checks_fields(tmp_path: Path) -> None:
    p = write(tmp_path, "name: x\ncurate:\n  checks:\n    - type: near_dedup\n      thresold: 0.9\n")
    msg = str(pytest.raises(UserError, load_recipe, p).value)
    assert f"{p}:5: curate.checks.0.near_dedup.thresold: unknown field; allowed here:" in msg
    assert "threshold" in msg and "num_perm" in msg


def test_a_model_folder_beside_the_recipe_is_found_from_any_folder(tmp_path: Path, monkeypatch) -> None:
    """One rule for relative paths (`PATHS_RULE`): models follow it as prompt files do."""
    from synth.models import resolve_model
    from synth.recipe import PATHS_RULE

    recipes, elsewhere = tmp_path / "recipes", tmp_path / "elsewhere"
    (recipes / "student").mkdir(parents=True)
    (recipes / "student" / "config.json").write_text("{}")
    (elsewhere / "runs" / "made").mkdir(parents=True)
    (elsewhere / "runs" / "made" / "config.json").write_text("{}")
    body = {"name": "t", "model": {"path": "student"}, "teacher": {"path": "runs/made"}}
    (recipes / "r.yaml").write_text(json.dumps(body))
    monkeypatch.chdir(elsewhere)
    r = load_recipe(recipes / "r.yaml")
    assert Path(resolve_model(r.model.path)[0]).resolve() == (recipes / "student").resolve()
    assert r.model.path == "../recipes/student"  # still relative: no home folder in a resolved recipe
    assert r.teacher.path == "runs/made"  # not beside the recipe: the folder you run in
    assert load_recipe(recipes / "r.yaml", ["model.path=smollm2"]).model.path == "smollm2"
    assert "beside the recipe first" in PATHS_RULE


def test_every_shipped_recipe_is_valid() -> None:
    """A recipe in recipes/ that no command has run yet (the GPU one) must still parse and validate."""
    from tests.conftest import ROOT

    shipped = sorted((ROOT / "recipes").glob("*.yaml"))
    assert len(shipped) >= 4
    for path in shipped:
        recipe = load_recipe(path)
        assert recipe.name == path.stem, path
