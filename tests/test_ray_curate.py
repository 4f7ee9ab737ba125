"""`runtime.executor: ray` for curate, on a real local Ray cluster: row checks and dedup keys run on
workers, dedup and selection on the driver; the output is byte for byte the local executor's, also
when a worker is killed mid-shard."""

from __future__ import annotations

import json
import random
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from synth.curate.stage import run_curate
from synth.errors import UserError
from synth.recipe import load_recipe
from tests.conftest import run_cli
from tests.curate_helpers import recipe_text, rows_for, write_run

pytestmark = pytest.mark.slow

# The user's check kills its own worker the first time it runs (no marker yet): SIGKILL mid-shard.
CHECK_MODULE = """
import os, signal
from collections.abc import Iterator
from pathlib import Path

def score(row):
    marker = Path(__file__).with_name("killed")
    if not marker.exists():
        marker.write_text("killed")
        os.kill(os.getpid(), signal.SIGKILL)
    return 1.0 + (len(row["completion"][0]["content"]) % 7) / 10
"""


def _generations(run: Path, evals: Path) -> Path:
    rng = random.Random(0)
    words = [
        "the",
        "a",
        "river",
        "bird",
        "stone",
        "light",
        "cold",
        "warm",
        "north",
        "song",
        "field",
        "over",
        "under",
        "quick",
        "slow",
    ]
    shards = []
    for s in range(6):
        rows = []
        for p in range(8):
            base = " ".join(rng.choice(words) for _ in range(14))
            answers = [base, base + " indeed", " ".join(rng.choice(words) for _ in range(12)), ""]
            rows += rows_for(f"prompt {s}-{p}", answers)
        shards.append(rows)
    shards[2] += rows_for("leak", ["as asked: " + evals.read_text().split('"')[3]])
    return write_run(run, shards)


@pytest.fixture
def forget_check_module() -> Iterator[None]:
    """The local run imports the user's check module into this process: forget it afterwards."""
    yield
    sys.modules.pop("ray_kill_check", None)


def test_ray_curate_is_byte_identical_to_local_even_after_a_killed_worker(
    ray_cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forget_check_module: None
) -> None:
    evals = tmp_path / "eval.jsonl"
    evals.write_text(
        json.dumps({"prompt": "name the thirteen longest rivers that flow north into the arctic sea"}) + "\n"
    )
    (tmp_path / "ray_kill_check.py").write_text(CHECK_MODULE)
    checks = [
        {"type": "empty"},
        {"type": "decontaminate", "ngram": 8, "eval_sets": [{"path": str(evals), "columns": ["prompt"]}]},
        {"type": "python", "function": "ray_kill_check:score"},
        {"type": "exact_dedup"},
        {"type": "near_dedup", "threshold": 0.7},
    ]
    (tmp_path / "r.yaml").write_text(recipe_text(checks, select={"strategy": "top_k", "k": 1}))
    monkeypatch.chdir(tmp_path)  # users keep check modules beside the recipe: workers look there too
    marker = tmp_path / "killed"
    local = _generations(tmp_path / "local", evals)
    on_ray = tmp_path / "ray"
    shutil.copytree(local, on_ray)

    marker.write_text("no kill in the local run")
    run_curate(load_recipe(tmp_path / "r.yaml"), local)
    marker.unlink()
    recipe = load_recipe(tmp_path / "r.yaml", ["runtime.executor=ray", "runtime.ray.replicas=2"])
    summary = run_curate(recipe, on_ray)

    assert marker.exists() and summary.workers == 2 and summary.shards_redone == 1
    for name in ("kept.parquet", "rejected.parquet"):
        assert (on_ray / "curated" / name).read_bytes() == (local / "curated" / name).read_bytes()
    want = json.loads((local / "curated" / "report.json").read_text())
    got = json.loads((on_ray / "curated" / "report.json").read_text())
    for key in (
        "rows_in",
        "kept",
        "rejected",
        "rejections",
        "examples",
        "kept_per_prompt",
        "scores",
        "decontamination",
    ):
        assert got[key] == want[key], key
    assert got["rejections"].keys() >= {"empty", "decontaminate", "near_dedup", "select"}
    assert [m["rows"] for m in got["decontamination"]] == [1]
    assert not list(on_ray.glob(".curated*"))


def test_a_worker_set_up_error_is_one_line(ray_cluster: str, tmp_path: Path) -> None:
    """A check that cannot be set up fails on the workers, not the driver: still one line, exit 2."""
    run = write_run(tmp_path / "run", [rows_for("p", ["an answer"])])
    (tmp_path / "r.yaml").write_text(recipe_text([{"type": "python", "function": "no_such_module:score"}]))
    res = run_cli(
        "synth",
        "curate",
        str(tmp_path / "r.yaml"),
        "runtime.executor=ray",
        "--run-dir",
        str(run),
        env={"RAY_ADDRESS": ray_cluster},
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "no module 'no_such_module'" in res.stderr and "beside the recipe" in res.stderr
    assert not (run / "curated").exists()


def test_a_check_module_beside_the_recipe_reaches_workers_that_cannot_see_that_folder(
    ray_cluster: str, tmp_path: Path
) -> None:
    """A worker on another machine has neither the recipe's folder nor the driver's: the python check
    module beside the recipe travels with the worker's arguments. Here the workers are given folders
    that do not exist, so only the shipped copy can be imported."""
    import ray

    from synth.cluster import ActorPool
    from synth.curate.checks.verifiers import check_sources
    from synth.curate.stage import CurateWorker
    from synth.shards import ShardSet
    from synth.specs import RaySpec

    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "shipped_check.py").write_text("def score(row):\n    return len(row['completion'][0]['content'])\n")
    (folder / "r.yaml").write_text(recipe_text([{"type": "python", "function": "shipped_check:score"}]))
    recipe = load_recipe(folder / "r.yaml")
    sources = check_sources(["shipped_check:score"], folder)
    run = write_run(tmp_path / "run", [rows_for("p", ["an answer", "a longer answer"])])
    table = ShardSet(run / "generations").table()
    gone = str(tmp_path / "not-on-this-node")
    for shipped, ok in ((sources, True), ({}, False)):
        try:
            pool = ActorPool(ray, CurateWorker, (gone, recipe, Path(gone), shipped), 1, 1, 0, RaySpec())
        except UserError as exc:
            assert not ok and "no module 'shipped_check'" in exc.message
            continue
        try:
            [(_, checked)] = list(pool.map("check", 1, lambda i: table, str))
        finally:
            pool.close()
        assert ok and checked.table.num_rows == 2
