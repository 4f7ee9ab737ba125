"""How many Ray workers, and what each reserves (no cluster needed for these decisions)."""

from __future__ import annotations

import pytest

from synth.cluster import ray_session, replica_count, worker_gpus
from synth.errors import UserError
from synth.recipe import load_recipe
from synth.specs import RaySpec, RuntimeSpec
from tests.conftest import RECIPE


def test_replicas_fill_the_cluster_but_never_more_than_fits_or_shards() -> None:
    cpus = {"CPU": 8.0}
    assert replica_count(RaySpec(), cpus, 0, shards=100) == 8
    assert replica_count(RaySpec(num_cpus=2), cpus, 0, shards=100) == 4
    assert replica_count(RaySpec(replicas=3), cpus, 0, shards=100) == 3
    assert replica_count(RaySpec(replicas=64), cpus, 0, shards=100) == 8  # the rest would wait forever
    assert replica_count(RaySpec(), cpus, 0, shards=2) == 2
    gpus = {"CPU": 64.0, "GPU": 8.0}
    assert replica_count(RaySpec(), gpus, 2, shards=100) == 4  # tensor parallel 2 on 8 GPUs
    assert replica_count(RaySpec(num_cpus=4), {"CPU": 16.0, "GPU": 8.0}, 1, shards=100) == 4  # CPUs bind first
    with pytest.raises(UserError, match=r"room for no worker: each needs 1 CPU\(s\) and 4 GPU"):
        replica_count(RaySpec(), {"CPU": 8.0, "GPU": 2.0}, 4, shards=10)


def test_worker_gpus_follow_the_engine() -> None:
    assert worker_gpus(RuntimeSpec(), "vllm", 4, cluster_gpus=8) == 4
    assert worker_gpus(RuntimeSpec(), "vllm", 4, cluster_gpus=0) == 0  # vLLM's CPU build on a CPU cluster
    assert worker_gpus(RuntimeSpec(), "transformers", 1, cluster_gpus=8) == 1
    assert worker_gpus(RuntimeSpec(), "transformers", 1, cluster_gpus=0) == 0
    assert worker_gpus(RuntimeSpec(device="cpu"), "transformers", 1, cluster_gpus=8) == 0
    assert worker_gpus(RuntimeSpec(), "openai", 1, cluster_gpus=8) == 0
    assert worker_gpus(RuntimeSpec(ray=RaySpec(num_gpus=0.5)), "transformers", 1, cluster_gpus=8) == 0.5


def test_address_mistakes_are_one_line_before_any_cluster_starts() -> None:
    with pytest.raises(UserError, match="has no port"), ray_session(RaySpec(address="notahost")):
        pass
    # an address with the local executor would run locally without a word
    with pytest.raises(UserError, match=r"set runtime\.executor: ray"):
        load_recipe(RECIPE, ["runtime.ray.address=head:6379"])
    assert load_recipe(RECIPE, ["runtime.ray.address=head:6379", "runtime.executor=ray"]).runtime.ray.address
