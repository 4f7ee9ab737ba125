"""A simulated multi-node Ray cluster (`ray.cluster_utils.Cluster`: several raylets on this machine,
GPUs declared as resources): replicas are sized node by node, and a node lost mid-shard has its shard
redone on another. Each scenario runs in its own process, since the test session may already hold a
Ray connection of its own."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT

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

NODE_LOSS = """
import threading, time
from pathlib import Path
from ray.cluster_utils import Cluster
import ray
from synth.cluster import ActorPool
from synth.recipe import load_recipe
from synth.specs import RaySpec
from tests.conftest import RECIPE
from tests.test_ray_pool import EchoWorker

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # workers on the other nodes only
nodes = [cluster.add_node(num_cpus=1), cluster.add_node(num_cpus=1)]
ray.init(address=cluster.address)
cluster.wait_for_nodes()
marker = Path("MARKER")
# one replica per node; "hang" blocks on its first try, on whichever node, until that node is removed
pool = ActorPool(ray, EchoWorker, (".", load_recipe(RECIPE), str(marker)), 2, 1, 0, RaySpec(shard_timeout_s=300))

def remove_when_hanging():
    while not marker.exists() or not marker.read_text():
        time.sleep(0.1)
    time.sleep(1)
    cluster.add_node(num_cpus=1)  # where the lost replica restarts
    cluster.remove_node(next(n for n in nodes if n.unique_id == marker.read_text()))

threading.Thread(target=remove_when_hanging, daemon=True).start()
payloads = ["a", "hang", "b", "c"]
start = time.monotonic()
got = dict(pool.map("work", 4, payloads.__getitem__, lambda i: f"shard {i}"))
print("results", sorted(got.items()), "redone", pool.redone, "seconds", round(time.monotonic() - start))
pool.close()
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


def test_replicas_are_counted_per_node_on_a_two_node_cluster(tmp_path: Path) -> None:
    out = _run(SIZING, tmp_path)
    assert "nodes [(1.0, 1.0), (1.0, 1.0)]" in out
    assert "one GPU each: 2" in out
    assert "two GPUs each: the Ray cluster has room for no worker: each needs 1 CPU(s) and 2 GPU(s) on one node" in out


def test_a_node_lost_mid_shard_has_its_shard_redone(tmp_path: Path) -> None:
    import re

    out = _run(NODE_LOSS, tmp_path)
    assert "results [(0, 'A'), (1, 'HANG'), (2, 'B'), (3, 'C')]" in out
    redone, seconds = map(int, re.search(r"redone (\d+) seconds (\d+)", out).groups())  # type: ignore[union-attr]
    assert redone >= 1 and seconds < 300  # redone because its node went, not at the shard deadline
