"""A simulated multi-node Ray cluster (`ray.cluster_utils.Cluster`: several raylets on this machine,
GPUs declared as resources): replicas are sized node by node. It runs in its own process, since the
test session may already hold a Ray connection of its own."""

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
