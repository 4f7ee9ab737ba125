"""The curate stage as a whole: determinism, crash safety, the CLI after `synth generate`, TRL input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from synth.curate.stage import run_curate
from synth.recipe import load_recipe
from tests.conftest import RECIPE, ROOT, run_cli, shard_rows
from tests.curate_helpers import recipe_text, rows_for, write_run

CHECKS = [
    {"type": "empty"},
    {"type": "length", "min_chars": 3},
    {"type": "exact_dedup"},
    {"type": "near_dedup", "threshold": 0.8},
]


def _run(tmp_path: Path) -> Path:
    shards = [
        rows_for(f"prompt {i}", [f"answer number {i} is here", "x", f"answer number {i} is here"]) for i in range(6)
    ]
    return write_run(tmp_path / "run", shards)


def test_rerun_is_byte_identical_and_every_row_lands_once(tmp_path: Path) -> None:
    run = _run(tmp_path)
    (tmp_path / "r.yaml").write_text(recipe_text(CHECKS))
    recipe = load_recipe(tmp_path / "r.yaml")
    s = run_curate(recipe, run)
    first = (run / "curated" / "kept.parquet").read_bytes()
    kept = pq.read_table(run / "curated" / "kept.parquet").to_pylist()
    rejected = pq.read_table(run / "curated" / "rejected.parquet").to_pylist()
    assert s.kept == len(kept) == 6 and s.rejected == len(rejected) == 12
    assert sorted(r["id"] for r in kept + rejected) == sorted(r["id"] for r in shard_rows(run))
    run_curate(recipe, run)
    assert (run / "curated" / "kept.parquet").read_bytes() == first
    assert not list(run.glob(".curated*"))


def test_killed_curate_leaves_the_previous_output_whole(tmp_path: Path) -> None:
    run = _run(tmp_path)
    (tmp_path / "r.yaml").write_text(recipe_text(CHECKS))
    run_curate(load_recipe(tmp_path / "r.yaml"), run)
    before = {p.name: p.read_bytes() for p in (run / "curated").iterdir()}
    # A user check that kills its own process half-way through the rows.
    (tmp_path / "killer.py").write_text(
        "import os, signal\nseen = 0\n"
        "def check(row):\n    global seen\n    seen += 1\n"
        "    if seen == 5:\n        os.kill(os.getpid(), signal.SIGKILL)\n    return True\n"
    )
    (tmp_path / "k.yaml").write_text(recipe_text([*CHECKS, {"type": "python", "function": "killer:check"}]))
    proc = subprocess.run(
        [sys.executable, "-m", "synth.cli", "curate", str(tmp_path / "k.yaml"), "--run-dir", str(run)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": f"{ROOT}:{tmp_path}", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == -signal.SIGKILL
    assert {p.name: p.read_bytes() for p in (run / "curated").iterdir()} == before
    assert list(run.glob(".curated.*.tmp"))  # the half-done work sits in a temp folder...
    run_curate(load_recipe(tmp_path / "r.yaml"), run)
    assert not list(run.glob(".curated*"))  # ...which the next run sweeps away


def test_a_killed_curate_resumes_without_checking_its_finished_shards_again(tmp_path: Path) -> None:
    """A check's calls are what a judge would bill: after a kill, the shards already checked are
    reused, the output is what an uninterrupted run writes, and the kept checks go once it is written."""
    import shutil

    run = _run(tmp_path)
    fresh = tmp_path / "fresh"
    shutil.copytree(run, fresh)
    calls = tmp_path / "calls.txt"
    (tmp_path / "counted.py").write_text(
        "import os, signal\n"
        f"CALLS = {str(calls)!r}\n"
        "def check(row):\n"
        "    with open(CALLS, 'a') as f:\n        f.write('x')\n"
        "    if os.environ.get('KILL_AT') and os.path.getsize(CALLS) == int(os.environ['KILL_AT']):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return True\n"
    )
    (tmp_path / "k.yaml").write_text(recipe_text([*CHECKS, {"type": "python", "function": "counted:check"}]))

    def curate(folder: Path, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "synth.cli", "curate", str(tmp_path / "k.yaml"), "--run-dir", str(folder)],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
            env={"PYTHONPATH": f"{ROOT}:{tmp_path}", "PATH": "/usr/bin:/bin", **env},
        )  # fmt: skip

    # 6 shards, 2 rows each reach the python check; killed at its 7th call, in the 4th shard
    assert curate(run, KILL_AT="7").returncode == -signal.SIGKILL
    assert list((run / ".curate-cache").rglob("*.pkl"))
    done = curate(run)
    assert done.returncode == 0, done.stderr
    assert calls.read_text() == "x" * (7 + 6)  # the rerun checked only the last 3 shards' 6 rows
    assert "reused the checks of 3 shard(s)" in done.stderr + done.stdout
    assert not (run / ".curate-cache").exists()
    calls.unlink()
    assert curate(fresh).returncode == 0 and calls.read_text() == "x" * 12
    for name in ("kept.parquet", "rejected.parquet"):
        assert (run / "curated" / name).read_bytes() == (fresh / "curated" / name).read_bytes()


def test_kept_checks_are_not_reused_once_the_checks_change(tmp_path: Path) -> None:
    from synth.curate.cache import CheckedCache

    run = _run(tmp_path)
    (tmp_path / "a.yaml").write_text(recipe_text(CHECKS))
    (tmp_path / "b.yaml").write_text(recipe_text([*CHECKS[:1], {"type": "length", "min_chars": 4}, *CHECKS[2:]]))
    a, b = load_recipe(tmp_path / "a.yaml"), load_recipe(tmp_path / "b.yaml")
    shard = sorted((run / "generations").glob("*.parquet"))[0]
    CheckedCache(run, a, tmp_path).put(shard, {"checked": "with a"})
    assert CheckedCache(run, a, tmp_path).get(shard) == {"checked": "with a"}
    assert CheckedCache(run, b, tmp_path).get(shard) is None  # and a's folder is swept as stale
    assert CheckedCache(run, a, tmp_path).get(shard) is None
    run_curate(b, run)
    assert (run / "curated" / "kept.parquet").is_file()


@pytest.mark.slow
def test_cli_generate_then_curate_feeds_trl_sft(tmp_path: Path) -> None:
    run = tmp_path / "run"
    gen = run_cli(
        "synth",
        "generate",
        str(RECIPE),
        "--limit",
        "6",
        "generate.n=3",
        "generate.max_new_tokens=24",
        "--run-dir",
        str(run),
    )
    assert gen.returncode == 0, gen.stderr
    res = run_cli(
        "synth",
        "curate",
        str(RECIPE),
        "curate.select.strategy=all",
        "curate.checks.6.min_confidence=0.5",
        "--run-dir",
        str(run),
    )
    assert res.returncode == 0, res.stderr
    assert "kept" in res.stdout and "french" in res.stdout
    report = json.loads((run / "curated" / "report.json").read_text())
    assert report["rows_in"] == 18 and report["kept"] + report["rejected"] == 18
    assert [c["name"] for c in report["checks"]][:3] == ["generate", "empty", "length"]
    assert (run / "curated" / "report.md").read_text().startswith("# Curate report")
    rejected = pq.read_table(run / "curated" / "rejected.parquet").to_pylist()
    assert all(r["reason"] and r["rejected_by"] for r in rejected)
    kept = datasets.load_dataset("parquet", data_files=str(run / "curated" / "kept.parquet"), split="train")
    assert report["kept"] == len(kept) > 0, "no French answers kept from 18 samples"
    for r in kept:
        assert r["prompt"][0]["role"] == "user" and r["completion"][0]["role"] == "assistant"
        assert [v["name"] for v in r["verdicts"]][-1] == "select"

    # TRL's SFTTrainer takes kept.parquet as it is: one real optimisation step on the real model.
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from synth.models import embedded_model_dir

    path = embedded_model_dir()
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(path),
        processing_class=AutoTokenizer.from_pretrained(path),
        train_dataset=kept,
        args=SFTConfig(
            output_dir=str(tmp_path / "sft"),
            max_steps=1,
            per_device_train_batch_size=2,
            max_length=128,
            report_to=[],
            bf16=False,
            gradient_checkpointing=False,
            save_strategy="no",
            use_cpu=True,
        ),
    )
    out = trainer.train()
    assert out.global_step == 1 and out.training_loss > 0
    sample = trainer.train_dataset[0]
    labels = sample["labels"]  # loss on the completion only: the prompt's positions are -100
    assert labels[0] == -100 and labels[-1] != -100
