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


def _run(script: str, tmp_path: Path, **env: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env},
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


# A head killed with kill -9 leaves /tmp/ray/ray_current_cluster behind, naming a dead address: Ray's
# own default (`ray.init()` with no address) reads it and tries to join that cluster. Distillery's
# session with no address starts a new local cluster instead.
STALE = """
import time
from synth.cluster import ray_session
from synth.specs import RaySpec

start = time.monotonic()
with ray_session(RaySpec(local_cpus=1)) as ray:
    print("local cluster:", ray.cluster_resources().get("CPU"), "CPU in", round(time.monotonic() - start), "s")
"""


def test_a_stale_cluster_file_does_not_hang_a_run_without_an_address(tmp_path: Path) -> None:
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))  # short: Ray's socket paths have a length limit
    try:
        (root / "ray").mkdir()
        (root / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")  # nothing listens there
        out = _run(STALE, tmp_path, RAY_TMPDIR=str(root))
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    assert "local cluster: 1.0 CPU in" in out


# The node under a running shard is lost (its raylet killed, as when a machine goes away) while another
# node has room. Ray notices within seconds (health checks every 0.5 s here), restarts the worker on the
# other node, and the pool sends the shard again: every result comes back, from the other node, long
# before the shard deadline. (Adding the second node after the loss, from another thread, hung in
# `Cluster.add_node` itself, which is why it joins before.)
NODE_LOSS = """
import threading, time
from pathlib import Path
from ray.cluster_utils import Cluster
import ray
from synth.cluster import ActorPool, Worker
from synth.recipe import load_recipe
from synth.specs import RaySpec

class Slow(Worker):
    def build(self, recipe):
        return None

    def work(self, payload):
        node = ray.get_runtime_context().get_node_id()
        Path(f"started-{payload}-{node}").touch()
        time.sleep(3)
        return node

health = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 3}
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": health})
lost = cluster.add_node(num_cpus=1)
ray.init(address=cluster.address)
cluster.wait_for_nodes()
pool = ActorPool(ray, Slow, (str(Path.cwd()), load_recipe(RECIPE)), 1, 1, 0, RaySpec(shard_timeout_s=300))
cluster.add_node(num_cpus=1)  # room for the restarted worker (the only worker sits on `lost`)
cluster.wait_for_nodes()

def lose_the_node():
    while not list(Path(".").glob(f"started-0-{lost.node_id}")):
        time.sleep(0.1)
    cluster.remove_node(lost, allow_graceful=False)

killer = threading.Thread(target=lose_the_node)
killer.start()
start = time.monotonic()
results = dict(pool.map("work", 2, lambda i: i, lambda i: f"shard {i}"))
killer.join()
print("results:", sorted(results), "redone:", pool.redone, "seconds:", round(time.monotonic() - start))
print("on the lost node:", sum(node == lost.node_id for node in results.values()))
print("shard 0 started on the lost node:", bool(list(Path(".").glob(f"started-0-{lost.node_id}"))))
pool.close()
ray.shutdown()
cluster.shutdown()
"""


def test_a_lost_node_under_a_running_shard(tmp_path: Path) -> None:
    out = _run(f"RECIPE = {str(RECIPE)!r}\n" + textwrap.dedent(NODE_LOSS), tmp_path)
    assert "results: [0, 1] redone: 1" in out
    assert "on the lost node: 0" in out and "shard 0 started on the lost node: True" in out
    seconds = int(out.split("seconds: ")[1].split()[0])
    assert seconds < 120  # noticed by Ray's health checks, not by the 300 s shard deadline
