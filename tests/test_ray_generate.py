"""`runtime.executor: ray` for generate, on a real local Ray cluster and the real SmolLM2.

The promise is the local executor's: the same rows (a worker runs the same `generate_shard` on the
same shards), every row exactly once, complete shards only, resume after any kill.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pytest

from synth.generate import run_generate
from synth.recipe import load_recipe
from synth.shards import ShardSet
from tests.conftest import RECIPE, ROOT, run_cli

pytestmark = pytest.mark.slow

PROMPTS = 12
N = 2
# runtime.threads=1 on both executors: float sums in another thread count could change a sampled token
ARGS = [
    f"prompts.limit={PROMPTS}",
    f"generate.n={N}",
    "generate.max_new_tokens=12",
    "generate.prompts_per_shard=2",
    "runtime.threads=1",
]
ON_RAY = ["runtime.executor=ray", "runtime.ray.replicas=2"]


def _rows(run: Path) -> pa.Table:
    return ShardSet(run / "generations").table().sort_by("id")


def _no_temp_files(run: Path) -> bool:
    return not [p for p in (run / "generations").iterdir() if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("local") / "run"
    run_generate(load_recipe(RECIPE, ARGS), run, recipe_dir=RECIPE.parent)
    return run


def _kill_first_busy_worker(killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first Ray worker seen generating a shard (its process title says so)."""
    while not stop.is_set() and not killed:
        for proc in psutil.process_iter(["cmdline"]):
            if (proc.info["cmdline"] or [""])[0].startswith("ray::GenerateWorker.shard"):
                os.kill(proc.pid, signal.SIGKILL)
                killed.append(proc.pid)
                return
        time.sleep(0.05)


def test_ray_gives_the_local_rows_and_survives_a_killed_worker(
    ray_cluster: str, local_run: Path, tmp_path: Path
) -> None:
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_busy_worker, args=(killed, stop), daemon=True)
    killer.start()
    run = tmp_path / "run"
    try:
        summary = run_generate(load_recipe(RECIPE, [*ARGS, *ON_RAY]), run, recipe_dir=RECIPE.parent)
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker was seen generating a shard"
    assert summary.workers == 2 and summary.shards_redone >= 1
    assert summary.rows_written == PROMPTS * N and len(summary.shards_written) == PROMPTS // 2
    got, want = _rows(run), _rows(local_run)
    assert got.num_rows == PROMPTS * N and len(set(got["id"].to_pylist())) == PROMPTS * N  # each row once
    assert got.equals(want)  # the same rows, byte for byte in every column, as the local executor
    assert sorted(p.name for p in (run / "generations").glob("shard-*")) == sorted(
        p.name for p in (local_run / "generations").glob("shard-*")
    )
    assert _no_temp_files(run)
    manifest = json.loads((run / "generations" / "_manifest.json").read_text())
    assert manifest["complete"] and manifest["rows"] == PROMPTS * N


def test_killed_driver_resumes_on_ray(ray_cluster: str, local_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [*ARGS, *ON_RAY, "--run-dir", str(run)]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster}
    proc = subprocess.Popen(
        [sys.executable, "-m", "synth.cli", "generate", str(RECIPE), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while len(list((run / "generations").glob("shard-*.parquet"))) < 1:
        assert proc.poll() is None, f"generate ended early: {proc.communicate()[1][-2000:]}"
        assert time.time() < deadline, "no shard appeared in time"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    partial = len(list((run / "generations").glob("shard-*.parquet")))
    assert 1 <= partial < PROMPTS // 2, "the driver should have been killed mid-run"
    res = run_cli("synth", "generate", str(RECIPE), *args, env={"RAY_ADDRESS": ray_cluster})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Ray workers" in res.stdout
    got = _rows(run)
    assert got.num_rows == PROMPTS * N and len(set(got["id"].to_pylist())) == PROMPTS * N
    assert got.equals(_rows(local_run))
    assert _no_temp_files(run)


def test_unreachable_cluster_is_one_line(tmp_path: Path) -> None:
    res = run_cli(
        "synth",
        "generate",
        str(RECIPE),
        *ARGS,
        "runtime.executor=ray",
        "runtime.ray.address=127.0.0.1:1",
        "--run-dir",
        str(tmp_path / "run"),
        timeout=300,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "127.0.0.1:1" in res.stderr and "ray start --head" in " ".join(res.stderr.split())
