"""`synth generate` end to end through the CLI on the real model: output, rejects, resume, errors."""

from __future__ import annotations

import glob
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import datasets
import pytest
import yaml

from tests.conftest import RECIPE, ROOT, run_cli, shard_rows, write_jsonl

pytestmark = pytest.mark.slow
SMALL = ["generate.n=2", "generate.max_new_tokens=8", "generate.prompts_per_shard=2"]


def load_rows(run: Path) -> datasets.Dataset:
    files = sorted(glob.glob(str(run / "generations" / "shard-*.parquet")))
    return datasets.load_dataset("parquet", data_files=files, split="train")


def test_generate_writes_readable_shards_with_rejects(tmp_path: Path) -> None:
    prompts = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"id": "a", "prompt": "Name a colour."},
            {"id": "b", "prompt": ""},
            {"id": "c", "prompt": "word " * 9000},
            {"id": "d", "prompt": "What is two plus two?"},
            {"id": "e", "prompt": "Name a colour."},
        ],
    )
    run = tmp_path / "run"
    res = run_cli("synth", "generate", str(RECIPE), f"prompts.path={prompts}", *SMALL, "--run-dir", str(run))
    assert res.returncode == 0, res.stderr
    assert "completion tokens/s" in res.stdout and "failed rows (with reason)" in res.stdout
    ds = load_rows(run)
    assert {
        "id",
        "prompt_id",
        "prompt",
        "teacher_prompt",
        "completion",
        "teacher",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "logprobs",
        "verdicts",
        "meta",
    } <= set(ds.column_names)
    assert len(set(ds["id"])) == len(ds) == 2 * 2 + 2  # two good prompts x n=2, two rejected prompts
    by_source = {json.loads(r["meta"])["source_id"]: r for r in ds}
    assert by_source["b"]["error"] == "empty prompt" and by_source["b"]["verdicts"][0]["passed"] is False
    assert by_source["c"]["error"].startswith("prompt too long")
    good = ds.filter(lambda r: r["error"] is None)
    assert len(good) == 4
    for r in good:
        assert r["prompt"][-1]["role"] == "user" and len(r["prompt"]) == 1  # student's view: no system prompt
        assert r["teacher_prompt"][0] == {"role": "system", "content": "Always answer in French."}
        assert r["teacher"]["engine"] == "transformers" and r["teacher"]["sampling"]["n"] == 2
        assert r["finish_reason"] in {"stop", "length"} and r["completion_tokens"] > 0
    manifest = json.loads((run / "generations" / "_manifest.json").read_text())
    assert manifest["rows"] == 6 and manifest["complete"] and manifest["failures"] == 2
    resolved = (run / "recipe.resolved.yaml").read_text()
    # a hash of digits only is quoted by YAML: compare what it loads as, not the text
    assert resolved.startswith("recipe_hash: ") and "max_new_tokens: 8" in resolved
    assert yaml.safe_load(resolved)["recipe_hash"] == manifest["recipe_hash"]

    # A second run does nothing new; another teacher setting in the same folder is refused.
    again = run_cli("synth", "generate", str(RECIPE), f"prompts.path={prompts}", *SMALL, "--run-dir", str(run))
    assert again.returncode == 0 and len(load_rows(run)) == 6
    assert re.search(r"rows written now\s*│\s*0\s*│", again.stdout), again.stdout
    more = run_cli(
        "synth",
        "generate",
        str(RECIPE),
        f"prompts.path={prompts}",
        *SMALL,
        "generate.temperature=1.0",
        "--run-dir",
        str(run),
    )
    assert more.returncode == 2 and "another teacher or other sampling" in more.stderr


def _start(args: list[str]) -> subprocess.Popen[str]:
    env_cmd = [sys.executable, "-m", "synth.cli", "generate", str(RECIPE), *args]
    # A suite started in the background by a non-interactive shell inherits SIGINT as ignored, and so
    # would this child: give it Ctrl-C's default, as in a terminal.
    return subprocess.Popen(
        env_cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for_shards(run: Path, proc: subprocess.Popen[str], count: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while len(list((run / "generations").glob("shard-*.parquet"))) < count:
        assert proc.poll() is None, f"generate ended early: {proc.communicate()}"
        assert time.time() < deadline, "no shards appeared in time"
        time.sleep(0.2)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_interrupted_run_resumes_with_every_row_once(tmp_path: Path, sig: signal.Signals) -> None:
    run = tmp_path / "run"
    args = ["--limit", "12", *SMALL, "generate.prompts_per_shard=1", "--run-dir", str(run)]
    proc = _start(args)
    _wait_for_shards(run, proc, 2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    partial = len(list((run / "generations").glob("shard-*.parquet")))
    assert 2 <= partial < 12, "the run should have been stopped mid-way"
    if sig == signal.SIGINT:
        assert (
            proc.returncode == 130 and "run the same command again" in " ".join(err.split()) and "Traceback" not in err
        )
    res = run_cli("synth", "generate", str(RECIPE), *args)
    assert res.returncode == 0, res.stderr
    ds = load_rows(run)
    assert len(ds) == 24 and len(set(ds["id"])) == 24  # 12 prompts x n=2: none lost, none twice
    assert len(set(ds["prompt_id"])) == 12
    assert not list((run / "generations").glob(".*.tmp"))
    manifest = json.loads((run / "generations" / "_manifest.json").read_text())
    assert manifest["complete"] and manifest["rows"] == 24


def test_limit_takes_the_first_prompts_in_file_order_so_a_larger_limit_extends_them(
    tmp_path: Path, misbehaving_server: Any
) -> None:
    """--limit 3, then --limit 5 in the same run: the 5 are the file's first 5 and hold the first 3, even
    though generate batches by length (the longest prompts here come last in the file)."""
    prompts = [{"id": str(i), "prompt": "Say something" + " more" * (i * 5)} for i in range(8)]
    write_jsonl(tmp_path / "prompts.jsonl", prompts)
    recipe = {
        "name": "limit",
        "teacher": {"engine": "openai", "openai": {"base_url": misbehaving_server.url("ok"), "model": "served-model"}},
        "prompts": {"path": "prompts.jsonl", "id_column": "id"},
        "generate": {"n": 1, "max_new_tokens": 8, "prompts_per_shard": 2},
    }
    (tmp_path / "recipe.yaml").write_text(json.dumps(recipe), encoding="utf-8")
    run = tmp_path / "run"

    def generated(limit: int) -> list[str]:
        res = run_cli("synth", "generate", str(tmp_path / "recipe.yaml"), "--limit", str(limit), "--run-dir", str(run))
        assert res.returncode == 0, res.stderr
        # stderr is a pipe here, not a terminal: progress comes as plain lines, the last one at the end
        assert re.search(r"generating: done, \d+/\d+ rows", res.stderr), res.stderr
        return sorted(json.loads(r["meta"])["source_id"] for r in shard_rows(run))

    first = generated(3)
    assert first == ["0", "1", "2"]
    extended = generated(5)
    assert set(first) <= set(extended) and extended == ["0", "1", "2", "3", "4"]
