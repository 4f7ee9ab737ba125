"""How many Ray workers, and what each reserves (no cluster needed for these decisions)."""

from __future__ import annotations

import importlib.util

import pytest

from synth.cluster import (
    check_reachable,
    cluster_address,
    loopback_warning,
    refuse_stray_address,
    replica_bundles,
    replica_count,
    spans_nodes,
    worker_env,
    worker_gpus,
)
from synth.errors import UserError
from synth.recipe import load_recipe
from synth.specs import RaySpec, RuntimeSpec
from tests.conftest import RECIPE


def test_replicas_fill_the_cluster_but_never_more_than_fits_or_shards() -> None:
    cpus = [{"CPU": 8.0}]
    assert replica_count(RaySpec(), cpus, 0, shards=100) == 8
    assert replica_count(RaySpec(num_cpus=2), cpus, 0, shards=100) == 4
    assert replica_count(RaySpec(replicas=3), cpus, 0, shards=100) == 3
    assert replica_count(RaySpec(replicas=64), cpus, 0, shards=100) == 8  # the rest would wait forever
    assert replica_count(RaySpec(), cpus, 0, shards=2) == 2
    gpus = [{"CPU": 64.0, "GPU": 8.0}]
    assert replica_count(RaySpec(), gpus, 2, shards=100) == 4  # tensor parallel 2 on 8 GPUs
    assert replica_count(RaySpec(num_cpus=4), [{"CPU": 16.0, "GPU": 8.0}], 1, shards=100) == 4  # CPUs bind first
    with pytest.raises(UserError, match=r"room for no worker: each needs 1 CPU\(s\) and 4 GPU"):
        replica_count(RaySpec(), [{"CPU": 8.0, "GPU": 2.0}], 4, shards=10)


def test_a_worker_fits_on_one_node_not_on_the_sum_of_nodes() -> None:
    two_single_gpu_nodes = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}]
    with pytest.raises(UserError, match=r"on one node, the nodes have 1 GPU\(s\) \+ 8 CPU\(s\), 1 GPU"):
        replica_count(RaySpec(), two_single_gpu_nodes, 2, shards=10)  # tensor parallel 2: summed, it "fit" one
    assert replica_count(RaySpec(), two_single_gpu_nodes, 1, shards=10) == 2
    # three CPUs left on each of two nodes fit two 2-CPU workers, not three
    assert replica_count(RaySpec(num_cpus=2), [{"CPU": 3.0}, {"CPU": 3.0}], 0, shards=10) == 2


def test_a_vllm_replica_larger_than_any_node_spans_nodes_in_one_placement_group() -> None:
    """tensor x pipeline parallel 16 on nodes of 8 GPUs: one placement group of 16 one-GPU bundles per
    replica, as many replicas as the cluster's GPUs hold; only an engine that can span nodes (vLLM) may."""
    nodes = [{"CPU": 32.0, "GPU": 8.0}] * 4
    assert spans_nodes(nodes, 16) and not spans_nodes(nodes, 8) and not spans_nodes(nodes, 40)
    assert not spans_nodes(nodes, 8.5) and not spans_nodes([{"CPU": 8.0}], 2)
    assert replica_count(RaySpec(), nodes, 16, shards=100, span=True) == 2
    with pytest.raises(UserError, match="room for no worker"):
        replica_count(RaySpec(), nodes, 16, shards=100)  # a transformers worker cannot be cut over nodes
    bundles = replica_bundles(RaySpec(num_cpus=2), 16)
    assert len(bundles) == 16 and bundles[0] == {"GPU": 1.0, "CPU": 2.0} and bundles[1:] == [{"GPU": 1.0}] * 15


def test_over_nodes_gives_vllm_its_ray_executor_unless_the_recipe_chose() -> None:
    from synth.generate import over_nodes

    vllm = load_recipe(RECIPE, ["teacher.engine=vllm", "teacher.vllm.tensor_parallel_size=8"])
    assert over_nodes(vllm).teacher.vllm.engine_args == {"distributed_executor_backend": "ray"}
    assert vllm.teacher.vllm.engine_args == {}  # the driver's recipe is unchanged
    chosen = load_recipe(RECIPE, ["teacher.engine=vllm", "teacher.vllm.engine_args={distributed_executor_backend: mp}"])
    assert over_nodes(chosen).teacher.vllm.engine_args == {"distributed_executor_backend": "mp"}


def test_check_modules_beside_the_recipe_travel_with_the_workers(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The source of a python check module in the recipe's folder (a file, or its whole package for a
    dotted name or a package named alone) goes to the curate workers; an installed module does not
    (every node has its own). Installed on the other side, it imports from a folder put first on
    sys.path, as the recipe's folder is for the driver."""
    import sys

    from synth.curate.checks.verifiers import check_sources, install_sources

    (tmp_path / "mine.py").write_text("def ok(row):\n    return 'mine'\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "checks.py").write_text("from pkg.util import VALUE\ndef ok(row):\n    return VALUE\n")
    (tmp_path / "pkg" / "util.py").write_text("VALUE = 'pkg'\n")
    (tmp_path / "alone").mkdir()
    (tmp_path / "alone" / "__init__.py").write_text("def ok(row):\n    return 'alone'\n")
    monkeypatch.chdir(tmp_path.parent)
    sources = check_sources(["mine:ok", "pkg.checks:ok", "alone:ok", "json:loads"], tmp_path)
    assert sorted(sources) == ["alone/__init__.py", "mine.py", "pkg/__init__.py", "pkg/checks.py", "pkg/util.py"]
    folder = install_sources(sources)
    try:
        assert folder is not None and sys.path[0] == str(folder)
        import importlib

        assert importlib.import_module("pkg.checks").ok({}) == "pkg"
        assert importlib.import_module("mine").__file__.startswith(str(folder))
    finally:
        sys.path.remove(str(folder))
        for name in ("mine", "pkg", "pkg.checks", "pkg.util", "alone"):
            sys.modules.pop(name, None)


def test_worker_gpus_follow_the_engine() -> None:
    assert worker_gpus(RuntimeSpec(), "vllm", 4, cluster_gpus=8) == 4
    assert worker_gpus(RuntimeSpec(), "vllm", 4, cluster_gpus=0) == 0  # vLLM's CPU build on a CPU cluster
    assert worker_gpus(RuntimeSpec(), "transformers", 1, cluster_gpus=8) == 1
    assert worker_gpus(RuntimeSpec(), "transformers", 1, cluster_gpus=0) == 0
    assert worker_gpus(RuntimeSpec(device="cpu"), "transformers", 1, cluster_gpus=8) == 0
    assert worker_gpus(RuntimeSpec(), "openai", 1, cluster_gpus=8) == 0
    assert worker_gpus(RuntimeSpec(ray=RaySpec(num_gpus=0.5)), "transformers", 1, cluster_gpus=8) == 0.5


def test_address_mistakes_are_one_line_before_any_cluster_starts() -> None:
    with pytest.raises(UserError, match="has no port"):
        check_reachable("notahost")
    # an address with the local executor would run locally without a word
    with pytest.raises(UserError, match=r"set runtime\.executor: ray"):
        load_recipe(RECIPE, ["runtime.ray.address=head:6379"])
    assert load_recipe(RECIPE, ["runtime.ray.address=head:6379", "runtime.executor=ray"]).runtime.ray.address


def test_no_address_means_a_new_local_cluster_and_ray_address_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_address(RaySpec()) == "local"  # never Ray's default, which reads /tmp/ray/ray_current_cluster
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    assert cluster_address(RaySpec()) == "head:6379"
    assert cluster_address(RaySpec(address="other:6379")) == "other:6379"
    with pytest.raises(UserError, match=r"\$RAY_ADDRESS is 'head:6379' but runtime.executor is 'local'"):
        refuse_stray_address(load_recipe(RECIPE).runtime)
    refuse_stray_address(load_recipe(RECIPE, ["runtime.executor=ray"]).runtime)


def test_a_web_server_at_the_address_is_not_taken_for_a_ray_head() -> None:
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"127.0.0.1:{server.server_address[1]}"
        with pytest.raises(UserError, match="answers, but not as a Ray head"):
            check_reachable(address)
    finally:
        server.shutdown()


@pytest.mark.skipif(importlib.util.find_spec("grpc") is not None, reason="Ray Client is installed here")
def test_ray_client_without_its_extra_is_one_line() -> None:
    with pytest.raises(UserError, match=r"needs grpcio"):
        check_reachable("ray://head:10001")


def test_workers_get_the_keys_the_recipe_reads_and_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "sk-secret-1")
    monkeypatch.setenv("JUDGE_KEY", "sk-secret-2")
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    monkeypatch.setenv("UNRELATED", "no")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    recipe = load_recipe(
        RECIPE,
        [
            "teacher.engine=openai",
            "teacher.openai.api_key_env=MY_KEY",
            "runtime.ray.env=[EXTRA]",
            "curate.checks=[{type: llm_judge, model: {engine: openai, openai: {api_key_env: JUDGE_KEY}}}]",
            "curate.score=llm_judge",
        ],
    )
    monkeypatch.setenv("EXTRA", "1")
    assert worker_env(recipe) == {"EXTRA": "1", "HF_TOKEN": "hf_x", "MY_KEY": "sk-secret-1", "JUDGE_KEY": "sk-secret-2"}
    assert "127.0.0.1:8000" in (loopback_warning(recipe, nodes=2) or "")
    assert loopback_warning(recipe, nodes=1) is None
