"""A simulated multi-node Ray cluster (`ray.cluster_utils.Cluster`: several raylets on this machine,
GPUs declared as resources): replicas are sized node by node. It runs in its own process, since the
test session may already hold a Ray connection of its own."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import RECIPE, ROOT

pytestmark = pytest.mark.slow

SIZING = """
from ray.cluster_utils import Cluster
import ray
from synth.cluster import node_resources, replica_count
from synth.errors import UserError
from synth.specs import RaySpec

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 1})
cluster.add_node(num_cpus=1, num_gpus=1)
ray.init(address=cluster.address)
cluster.wait_for_nodes()
nodes = node_resources(ray)
print("nodes", sorted((n.get("CPU"), n.get("GPU")) for n in nodes))
print("one GPU each:", replica_count(RaySpec(), nodes, 1, shards=8))
try:
    replica_count(RaySpec(), nodes, 2, shards=8)
except UserError as exc:
    print("two GPUs each:", exc.message)
ray.shutdown()
cluster.shutdown()
"""


# Two nodes of one (declared) GPU each, and a replica that needs two (tensor x pipeline parallel): it runs
# in a placement group with a bundle on each node, the worker in the first bundle without a GPU of its
# own; its child tasks (vLLM's Ray workers) land in the group. One that needs three cannot be placed.
SPANNING = """
import time
from ray.cluster_utils import Cluster
import ray
from synth.cluster import ActorPool, Worker, node_resources, replica_bundles, replica_count, spans_nodes
from synth.errors import UserError
from synth.recipe import load_recipe
from synth.specs import RaySpec

@ray.remote(num_gpus=1, num_cpus=0)
def shard_node():
    time.sleep(1)  # both hold their GPU at once, as an engine's workers do
    return ray.get_runtime_context().get_node_id()

class Probe(Worker):
    def build(self, recipe):
        return None

    def where(self, _):
        group = ray.util.get_current_placement_group()
        nodes = ray.get([shard_node.remote() for _ in range(2)])  # like vLLM's two GPU workers
        return group is not None, len(set(nodes)), ray.get_gpu_ids()

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 1})
cluster.add_node(num_cpus=1, num_gpus=1)
ray.init(address=cluster.address)
cluster.wait_for_nodes()
nodes = node_resources(ray)
spec = RaySpec(start_timeout_s=20)
print("spans:", spans_nodes(nodes, 2), spans_nodes(nodes, 1), spans_nodes(nodes, 3))
print("replicas of two GPUs:", replica_count(spec, nodes, 2, shards=8, span=True))
recipe = load_recipe(RECIPE)
pool = ActorPool(ray, Probe, (".", recipe), 1, 1, 2, spec, bundles=replica_bundles(spec, 2))
print("in group, nodes, worker's own GPUs:", list(pool.map("where", 1, lambda i: None, str))[0][1])
pool.close()
try:
    ActorPool(ray, Probe, (".", recipe), 1, 1, 2, RaySpec(start_timeout_s=5), bundles=replica_bundles(spec, 3))
except UserError as exc:
    print("three GPUs:", exc.message)
ray.shutdown()
cluster.shutdown()
"""


def _run(script: str, tmp_path: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_a_replica_larger_than_a_node_runs_in_a_placement_group_over_nodes(tmp_path: Path) -> None:
    out = _run(f"RECIPE = {str(RECIPE)!r}\n" + textwrap.dedent(SPANNING), tmp_path)
    assert "spans: True False False" in out
    assert "replicas of two GPUs: 1" in out
    assert "in group, nodes, worker's own GPUs: (True, 2, [])" in out
    assert "three GPUs: 1 of 1 Ray workers were not ready after 5 s" in out
    assert "each needs 1 CPU(s) and 3 GPU(s) in one placement group over several nodes" in out


def test_replicas_are_counted_per_node_on_a_two_node_cluster(tmp_path: Path) -> None:
    out = _run(SIZING, tmp_path)
    assert "nodes [(1.0, 1.0), (1.0, 1.0)]" in out
    assert "one GPU each: 2" in out
    assert "two GPUs each: the Ray cluster has room for no worker: each needs 1 CPU(s) and 2 GPU(s) on one node" in out
