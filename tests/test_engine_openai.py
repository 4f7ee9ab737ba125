"""The openai engine against a real llama.cpp server process serving the embedded SmolLM2 GGUF."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from synth.engines.base import SamplingParams
from synth.engines.openai import OpenAIEngine
from synth.errors import UserError
from synth.models import embedded_gguf
from synth.recipe import OpenAISettings
from synth.records import completion_text
from tests.conftest import RECIPE, run_cli, shard_rows
from tests.servers import FaultProxy, LlamaServer, free_port

pytestmark = pytest.mark.slow
SECRET = "sk-test-d0-not-leak-4242"
MSG = [{"role": "user", "content": "Write one sentence about a cat."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    s = LlamaServer(embedded_gguf(), tmp_path_factory.mktemp("llama-server"), slots=2)
    yield s
    s.stop()


def generate_openai(base_url: str, prompts: Path, run: Path, *extra: str, env: dict[str, str] | None = None):
    """`synth generate` with the default recipe on the openai engine at `base_url`."""
    return run_cli(
        "synth",
        "generate",
        str(RECIPE),
        "teacher.engine=openai",
        f"teacher.openai.base_url={base_url}",
        f"prompts.path={prompts}",
        *extra,
        "--run-dir",
        str(run),
        env=env,
    )


def engine_for(url: str, **kw: object) -> OpenAIEngine:
    settings = OpenAISettings(base_url=url, backoff_s=0.01, **kw)  # type: ignore[arg-type]
    return OpenAIEngine(settings, model_id="smollm2")


def test_cli_openai_engine_n_logprobs_and_no_secret_leak(
    tmp_path: Path, server: LlamaServer, prompts_file: Path
) -> None:
    run = tmp_path / "run"
    # n=3 exceeds the server's 2 slots: llama.cpp answers 400, and the engine falls back to one sample
    # per request with different seeds.
    res = generate_openai(
        server.base_url,
        prompts_file,
        run,
        "generate.n=3",
        "generate.max_new_tokens=12",
        "generate.logprobs=2",
        "generate.temperature=1.0",
        env={"OPENAI_API_KEY": SECRET},
    )
    assert res.returncode == 0, res.stderr
    files = sorted((run / "generations").glob("shard-*.parquet"))
    rows = shard_rows(run)
    assert len(rows) == 9 and all(r["error"] is None for r in rows)
    assert all(r["teacher"]["engine"] == "openai" for r in rows)
    by_prompt: dict[str, list[dict]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    assert sorted(len(v) for v in by_prompt.values()) == [3, 3, 3]
    for samples in by_prompt.values():
        assert sorted(r["sample_index"] for r in samples) == [0, 1, 2]
    assert any(len({completion_text(r) for r in v}) > 1 for v in by_prompt.values()), "samples are copies"
    for r in rows:
        assert r["completion_tokens"] == len(r["logprobs"]) > 0
        assert all(len(t["top_tokens"]) == 2 for t in r["logprobs"])
        # llama.cpp's server gives token ids too: stored exactly, no string mapping needed at training
        assert all(len(t["top_ids"]) == 2 and isinstance(t["token_id"], int) for t in r["logprobs"])
    everything = res.stdout + res.stderr + "".join(Path(f).read_bytes().decode("latin-1") for f in files)
    everything += "".join(p.read_text() for p in run.rglob("*.json")) + (run / "recipe.resolved.yaml").read_text()
    assert SECRET not in everything


def test_n_within_server_limit_is_one_request(server: LlamaServer) -> None:
    proxy = FaultProxy(server.base_url, lambda n: None)
    try:
        out = engine_for(proxy.base_url).generate([MSG], SamplingParams(n=2, temperature=1.0, max_new_tokens=6))
    finally:
        proxy.stop()
    assert len(out[0]) == 2 and all(c.error is None for c in out[0])
    assert proxy.posts == 1


def test_retries_429_5xx_and_timeouts_then_succeeds(server: LlamaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    plan = {1: 429, 2: 503, 3: ("sleep", 3.0), 4: 500}
    proxy = FaultProxy(server.base_url, lambda n: plan.get(n))
    try:
        eng = engine_for(proxy.base_url, max_retries=5, timeout_s=1.5)
        out = eng.generate([MSG], SamplingParams(n=1, max_new_tokens=6))
    finally:
        proxy.stop()
    assert out[0][0].error is None and out[0][0].text
    assert proxy.posts == 5  # four failures, then the answer
    assert all(h.get("Authorization") == f"Bearer {SECRET}" for h in proxy.headers)


def test_gives_up_records_the_reason_then_retry_failed(tmp_path: Path, server: LlamaServer, prompts_file: Path) -> None:
    proxy = FaultProxy(server.base_url, lambda n: 503)
    try:
        res = generate_openai(
            proxy.base_url,
            prompts_file,
            tmp_path / "run",
            "teacher.openai.max_retries=2",
            "teacher.openai.backoff_s=0.01",
            "generate.n=2",
        )
    finally:
        proxy.stop()
    assert res.returncode == 2 and "every one of the 6 rows asked of the teacher failed" in res.stderr, (
        res.stderr
    )  # kept, though
    rows = shard_rows(tmp_path / "run")
    assert len(rows) == 6 and all(r["error"].startswith("gave up after 3 tries: HTTP 503") for r in rows)
    assert proxy.posts == 3 * 3  # three prompts, three tries each
    assert json.loads((tmp_path / "run/generations/_manifest.json").read_text())["failures"] == 6

    # The server is healthy again: --retry-failed generates exactly the failed prompts, once.
    again = generate_openai(server.base_url, prompts_file, tmp_path / "run", "generate.n=2", "--retry-failed")
    assert again.returncode == 0, again.stderr
    assert re.search(r"failed prompts retried\s*│\s*3\s*│", again.stdout), again.stdout
    rows = shard_rows(tmp_path / "run")
    assert len(rows) == 6 and len({r["id"] for r in rows}) == 6 and all(r["error"] is None for r in rows)
    assert json.loads((tmp_path / "run/generations/_manifest.json").read_text())["failures"] == 0


def test_server_down_is_a_clear_error(tmp_path: Path, prompts_file: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    res = generate_openai(url, prompts_file, tmp_path / "run")
    assert res.returncode == 2 and "cannot reach the OpenAI-compatible server" in res.stderr
    assert "Traceback" not in res.stderr
    assert not list((tmp_path / "run").glob("generations/shard-*"))
    with pytest.raises(UserError):
        engine_for(url)


def test_eval_teacher_through_the_openai_engine(tmp_path: Path, server: LlamaServer, prompts_file: Path) -> None:
    """`sft eval` honours teacher.engine: the teacher answers through the server, with real finish reasons."""
    import datasets

    from sft.evaluation.run import run_eval
    from synth.recipe import load_recipe

    proxy = FaultProxy(server.base_url, lambda n: None)  # counts the requests that reach the server
    try:
        body = {
            "name": "ev",
            "teacher": {"engine": "openai", "system_prompt": "Answer briefly.", "openai": {"base_url": proxy.base_url}},
            "curate": {"checks": [{"type": "length", "min_tokens": 2}, {"type": "truncated", "name": "short"}]},
            "eval": {"prompts": str(prompts_file), "max_new_tokens": 12, "behaviour_check": "short"},
        }
        (tmp_path / "r.yaml").write_text(json.dumps(body))
        rep = run_eval(load_recipe(tmp_path / "r.yaml"), tmp_path / "run")
    finally:
        proxy.stop()
    assert list(rep["models"]) == ["teacher", "base_student"]
    assert proxy.posts >= 3  # one chat completion per prompt at least
    rows = datasets.load_dataset("parquet", data_files=str(tmp_path / "run/eval/answers.parquet"), split="train")
    teacher = [r for r in rows if r["model"] == "teacher"]
    assert len(teacher) == 3 and all(r["error"] is None and r["answer"] for r in teacher)
    assert all(r["seen_prompt"][0] == {"role": "system", "content": "Answer briefly."} for r in teacher)
    # the server's own finish reasons and token counts, so `truncated` and `min_tokens` judge real values
    assert all(r["finish_reason"] in ("stop", "length") and r["completion_tokens"] for r in teacher)
    for r in teacher:
        short = next(v for v in r["verdicts"] if v["name"] == "short")
        assert short["passed"] == (r["finish_reason"] == "stop") == r["behaviour"]
