"""Shared fixtures: the real embedded SmolLM2 model, CLI runners, and prompt files."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "answer-in-french.yaml"

# tests/vllm/ runs on the real vLLM, in its own virtualenv (`make test-vllm`); elsewhere it is not collected
collect_ignore = [] if importlib.util.find_spec("vllm") else ["vllm"]


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct as a safetensors folder (converted once, then cached)."""
    from synth.models import embedded_model_dir

    return embedded_model_dir()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A new local Ray cluster of 2 CPUs for the session (about 5 s to start; `address="local"`, never
    a cluster named by a stale /tmp/ray/ray_current_cluster); yields its address, which a
    `synth` subprocess reaches through $RAY_ADDRESS. In-process runs reuse this session."""
    import ray

    context = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield context.address_info["gcs_address"]
    ray.shutdown()


def run_cli(
    program: str, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """Run `synth` or `sft` as a user would, in a subprocess; returns the finished process."""
    module = {"synth": "synth.cli", "sft": "sft.cli"}[program]
    full_env = {
        **os.environ,
        "COLUMNS": "160",
        "DISTILLERY_THREADS": os.environ.get("DISTILLERY_THREADS", "2"),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tiny_llama(vocab_size: int, layers: int = 2, seed: int = 0, **config: Any) -> Any:
    """A random Llama (hidden 32) for fast unit tests, in eval mode; `config` adds LlamaConfig fields."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    shape = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2}
    llama = LlamaConfig(vocab_size=vocab_size, num_hidden_layers=layers, max_position_embeddings=256, **shape, **config)
    return LlamaForCausalLM(llama).eval()


def shard_rows(run: Path) -> list[dict]:
    """Every row of a run's generation shards, in shard order."""
    import pyarrow.parquet as pq

    return [r for f in sorted((run / "generations").glob("shard-*.parquet")) for r in pq.read_table(f).to_pylist()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    """Three short real prompts."""
    return write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"id": "a", "prompt": "Name a colour."},
            {"id": "b", "prompt": "Say hello to a friend."},
            {"id": "c", "prompt": "What is two plus two?"},
        ],
    )


@pytest.fixture(scope="session")
def misbehaving_server(tmp_path_factory: pytest.TempPathFactory):
    """tests/misbehaving_server.py on 127.0.0.1 (one process, a behaviour per URL path), stopped at the end."""
    from tests.servers import MisbehavingServer

    server = MisbehavingServer(tmp_path_factory.mktemp("misbehaving"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def argilla_server(tmp_path_factory: pytest.TempPathFactory):
    """A real argilla-server on 127.0.0.1 for the whole test run (owner key below), stopped at the end."""
    from tests.servers import ArgillaServer

    server = ArgillaServer(tmp_path_factory.mktemp("argilla"), api_key="owner.test-api-key")
    yield server
    server.stop()
