"""vLLM inside Ray workers (`runtime.executor: ray`, `teacher.engine: vllm`) on the real vLLM CPU build:
the rows the local executor writes with the same engine settings, every row once, with two shards in
flight per worker running together in one engine."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from synth.generate import run_generate
from synth.recipe import load_recipe
from synth.shards import ShardSet
from tests.conftest import RECIPE

PROMPTS = 8


def _recipe(model: Path, *extra: str):
    return load_recipe(
        RECIPE,
        [
            "teacher.engine=vllm",
            f"teacher.path={model}",
            "teacher.dtype=float32",
            "teacher.vllm.max_model_len=1024",
            "teacher.vllm.engine_args={enforce_eager: true}",
            f"prompts.limit={PROMPTS}",
            "generate.n=2",
            "generate.max_new_tokens=16",
            "generate.prompts_per_shard=2",
            *extra,
        ],
    )


def _rows(run: Path) -> list[tuple]:
    table: pa.Table = ShardSet(run / "generations").table().sort_by("id")
    return list(zip(table["id"].to_pylist(), table["completion"].to_pylist(), table["error"].to_pylist(), strict=True))


def test_vllm_in_ray_workers_writes_the_local_executors_rows(smollm2_dir: Path, tmp_path: Path) -> None:
    import ray

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    local = run_generate(_recipe(smollm2_dir), tmp_path / "local", recipe_dir=RECIPE.parent)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = run_generate(
            _recipe(
                smollm2_dir,
                "runtime.executor=ray",
                "runtime.ray.replicas=1",
                "runtime.ray.shards_in_flight=2",
                "runtime.ray.env=[VLLM_CPU_KVCACHE_SPACE]",
            ),
            tmp_path / "ray",
            recipe_dir=RECIPE.parent,
        )
    finally:
        ray.shutdown()
    assert on_ray.workers == 1 and on_ray.shards_redone == 0
    assert on_ray.rows_written == local.rows_written == PROMPTS * 2
    want, got = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert [r[2] for r in got] == [None] * len(got)
    assert got == want
