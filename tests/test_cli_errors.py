"""A user's mistake gets a clear message and exit status 2, never a traceback, and nothing is written."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import RECIPE, run_cli


def _fails(res, *needles: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    for n in needles:
        assert n in res.stderr, res.stderr


def test_malformed_jsonl_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": oops}\n')
    res = run_cli("synth", "generate", str(RECIPE), f"prompts.path={bad}", "--run-dir", str(tmp_path / "r"))
    _fails(res, f"{bad}:2: not valid JSON")
    assert not list((tmp_path / "r").glob("generations/shard-*"))


def test_bad_recipe_values_and_files(tmp_path: Path) -> None:
    _fails(run_cli("synth", "generate", str(RECIPE), "teacher.engine=tgi"), "teacher.engine", "'openai'")
    _fails(run_cli("synth", "generate", str(tmp_path / "none.yaml")), "not found")
    _fails(
        run_cli("synth", "generate", str(RECIPE), "prompts.path=missing.jsonl", "--run-dir", str(tmp_path)),
        "missing.jsonl not found",
    )
    _fails(
        run_cli("synth", "generate", str(RECIPE), "model.path=./no/such/model", "--run-dir", str(tmp_path)),
        "model './no/such/model'",
    )


def test_help_explains_every_command() -> None:
    for prog, args in [
        ("synth", ["--help"]),
        ("synth", ["generate", "--help"]),
        ("sft", ["--help"]),
        ("sft", ["run", "--help"]),
        ("sft", ["eval", "--help"]),
    ]:
        res = run_cli(prog, *args)
        assert res.returncode == 0 and "Usage" in res.stdout, res.stderr
    out = run_cli("synth", "generate", "--help").stdout
    for option in ("--limit", "--run-dir", "generate.n=4"):
        assert option in out
