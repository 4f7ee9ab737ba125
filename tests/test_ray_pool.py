"""The Ray worker pool on a real local cluster: what happens when a worker raises, hangs, or cannot be
placed. Each case ends in seconds with one line naming the shard, or goes on; none hangs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from synth.cluster import ActorPool, Worker
from synth.engines.base import Engine, SamplingParams
from synth.errors import UserError
from synth.generate import GenerateWorker
from synth.recipe import load_recipe
from synth.records import PromptItem, prompt_id_for
from synth.specs import RaySpec
from tests.conftest import RECIPE

pytestmark = pytest.mark.slow


class EchoWorker(Worker):
    """Returns its payload; raises for "raise", sleeps on the first try of "hang" (a marker file says)."""

    def build(self, recipe: Any, marker: str) -> str:
        return marker

    def work(self, payload: str) -> str:
        if payload == "raise":
            raise ValueError("no such temperature")
        if payload == "hang" and not Path(self.tool).exists():
            Path(self.tool).touch()
            time.sleep(600)
        return payload.upper()


def _pool(ray: Any, marker: Path, **spec: Any) -> ActorPool:
    return ActorPool(ray, EchoWorker, (".", load_recipe(RECIPE), str(marker)), 2, 1, 0, RaySpec(**spec))


def test_a_worker_exception_is_one_line_naming_the_shard(ray_cluster: str, tmp_path: Path) -> None:
    import ray

    pool = _pool(ray, tmp_path / "marker")
    payloads = ["a", "raise", "b"]
    try:
        with pytest.raises(UserError) as err:
            list(pool.map("work", 3, payloads.__getitem__, lambda i: f"shard {i}"))
    finally:
        pool.close()
    assert err.value.message.startswith("shard 1: its worker raised ValueError: no such temperature")


def test_a_hung_shard_is_redone_on_a_restarted_worker(ray_cluster: str, tmp_path: Path) -> None:
    import ray

    pool = _pool(ray, tmp_path / "marker", shard_timeout_s=3)
    payloads = ["a", "hang", "b"]
    start = time.monotonic()
    try:
        got = dict(pool.map("work", 3, payloads.__getitem__, lambda i: f"shard {i}"))
    finally:
        pool.close()
    assert got == {0: "A", 1: "HANG", 2: "B"} and pool.redone == 1
    assert time.monotonic() - start < 120


def test_workers_that_cannot_be_placed_fail_at_the_start_deadline(ray_cluster: str, tmp_path: Path) -> None:
    import ray

    start = time.monotonic()
    with pytest.raises(UserError) as err:  # one GPU each, on a cluster without GPUs: never placed
        ActorPool(ray, EchoWorker, (".", load_recipe(RECIPE), str(tmp_path)), 2, 1, 1, RaySpec(start_timeout_s=3))
    assert time.monotonic() - start < 60
    assert "2 of 2 Ray workers were not ready after 3 s" in err.value.message
    assert "1 CPU(s) and 1 GPU(s) on one node" in err.value.message


class BrokenEngine(Engine):
    name = "broken"

    def generate(self, prompts: list, params: SamplingParams, on_progress: Any = None) -> list:
        raise ValueError("temperature 3.0 is out of range")


def test_an_engine_exception_fails_the_shards_rows_not_the_run() -> None:
    worker = GenerateWorker.__new__(GenerateWorker)
    worker.tool = BrokenEngine("m")
    msgs = [{"role": "user", "content": f"q{i}"} for i in range(3)]
    chunk = [PromptItem(prompt_id_for([m], [m]), [m], [m], {}) for m in msgs]
    teacher = {"model": "m", "revision": None, "engine": "broken", "sampling": {}}
    result = worker.shard((chunk, SamplingParams(n=2), teacher, "h"))
    errors = result.table["error"].to_pylist()
    assert len(errors) == 3 and result.engine_failures == 3  # one failed row per prompt, retried by --retry-failed
    assert all(e.startswith("the teacher engine on a Ray worker raised ValueError: temperature 3.0") for e in errors)
