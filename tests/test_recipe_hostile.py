"""Malformed recipes and overrides, generated from a seed: each is refused with one line naming the
file:line or the override and the field, or it loads; never another exception."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from synth.errors import UserError
from synth.recipe import load_recipe
from tests.conftest import ROOT, run_cli

BASE = yaml.safe_load((ROOT / "recipes" / "concise-answers.yaml").read_text(encoding="utf-8"))
JUNK: list[Any] = [None, "", "abc", -1, 0, 1e309, [], {}, [1, "x"], {"a": {"b": None}}, True, "1e5", "∞", "\x00"]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every field path in a recipe dict (list items by index)."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out += [(*prefix, k), *_paths(v, (*prefix, k))]
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += [(*prefix, i), *_paths(v, (*prefix, i))]
    return out


def _set(data: Any, path: tuple[Any, ...], value: Any) -> None:
    for p in path[:-1]:
        data = data[p]
    data[path[-1]] = value


def _mutants(rng: random.Random, n: int) -> list[tuple[str, str, bool]]:
    """(kind, recipe text, whether it must be refused)."""
    out: list[tuple[str, str, bool]] = []
    paths = _paths(BASE)
    while len(out) < n:
        kind = rng.choice(["junk-value", "unknown-key", "drop-section", "bad-yaml", "not-a-mapping", "swap"])
        data = yaml.safe_load(yaml.safe_dump(BASE))
        if kind == "junk-value":
            _set(data, rng.choice(paths), rng.choice(JUNK))
            out.append((kind, yaml.safe_dump(data, allow_unicode=True), False))  # may or may not be valid
        elif kind == "unknown-key":
            section = rng.choice(["model", "teacher", "generate", "curate", "train", "eval", "prompts", "runtime"])
            data.setdefault(section, {})[rng.choice(["nn", "tempreature", "api_key", "hub_token", "x"])] = 1
            out.append((kind, yaml.safe_dump(data), True))
        elif kind == "drop-section":
            data.pop("name")
            out.append((kind, yaml.safe_dump(data), True))
        elif kind == "bad-yaml":
            text = yaml.safe_dump(data).splitlines()
            i = rng.randrange(1, len(text))
            text.insert(i, rng.choice(["  - : :", "\tbad: tab", "key: [unclosed", "{", "generate: *nope"]))
            out.append((kind, "\n".join(text), True))
        elif kind == "not-a-mapping":
            out.append((kind, rng.choice(["- a\n- b\n", "just text\n", "42\n", "null\n"]), True))
        else:  # a section replaced by a scalar or a list
            _set(data, (rng.choice(["generate", "curate", "train", "teacher"]),), rng.choice(["x", [1, 2], 3]))
            out.append((kind, yaml.safe_dump(data), True))
    return out


MUTANTS = _mutants(random.Random(0), 60)


@pytest.mark.parametrize(("kind", "text", "must_fail"), MUTANTS, ids=[f"{i}-{m[0]}" for i, m in enumerate(MUTANTS)])
def test_malformed_recipe_is_refused_clearly_or_loads(tmp_path: Path, kind: str, text: str, must_fail: bool) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_recipe(path)
    except UserError as exc:
        assert str(path) in exc.message, exc.message
        lines = [ln for ln in exc.message.splitlines() if ln.strip()]
        problems = lines[1:] if len(lines) > 1 else lines
        assert all(str(path) in ln for ln in problems), exc.message  # each problem names the file (and line)
    else:
        assert not must_fail, f"{kind} loaded:\n{text}"


@pytest.mark.parametrize(
    "override",
    ["generate.n=lots", "generate=3", "curate.checks.9.threshold=1", "no_such.section=1", "generate.n", "a..b=1"],
)
def test_bad_override_is_refused_naming_the_override(override: str) -> None:
    with pytest.raises(UserError) as info:
        load_recipe(ROOT / "recipes" / "concise-answers.yaml", [override])
    assert override.split("=")[0] in info.value.message
    assert "concise-answers.yaml:" not in info.value.message  # the recipe's lines are not to blame


def test_cli_refuses_a_sample_of_them_in_one_line(tmp_path: Path) -> None:
    refused = [m for m in MUTANTS if m[2]][:6]
    for i, (_, text, _) in enumerate(refused):
        path = tmp_path / f"r{i}.yaml"
        path.write_text(text, encoding="utf-8")
        res = run_cli("synth", "generate", str(path), "--run-dir", str(tmp_path / "run"))
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert str(path) in res.stderr.splitlines()[0 if res.stderr.count("\n") == 1 else 1], res.stderr
    assert not (tmp_path / "run" / "generations").exists()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("name: a\nname: b\n", "appears twice"),
        ("name: a\nx: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
        (
            'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
            + "".join(f"{c}: &{c} [{','.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True))
            + "name: bomb\n",
            "aliases",
        ),
        ("name: a\nx: {[1]: 2}\n", "plain value"),
    ],
    ids=["duplicate-key", "deep", "alias-bomb", "unhashable-key"],
)
def test_hostile_yaml_is_refused_quickly(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_recipe(path)
    assert says in info.value.message and str(path) in info.value.message
