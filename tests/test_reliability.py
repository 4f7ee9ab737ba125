"""Hostile input and misbehaving servers: exit 2 with one line naming the culprit, no traceback,
no lost row, no secret on disk.

The teacher here is tests/misbehaving_server.py, a real HTTP server process that answers like an
OpenAI-compatible server and misbehaves in one way per base_url, for the prompts that contain BAD.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from synth.records import completion_text
from tests.conftest import ROOT, run_cli, shard_rows, write_jsonl

SECRET = "sk-TOPSECRET-4f9a1c"
ENV = {"OPENAI_API_KEY": SECRET}
PROMPTS = [
    {"id": "1", "prompt": "Name a colour."},
    {"id": "2", "prompt": "BAD: say hello."},
    {"id": "3", "prompt": "What is two plus two?"},
    {"id": "4", "prompt": "BAD: count to three."},
]


@pytest.fixture(scope="module")
def server(misbehaving_server: Any) -> Any:
    return misbehaving_server


def recipe(tmp_path: Path, base_url: str, **sections: Any) -> Path:
    """A recipe on the openai engine at `base_url`, 2 samples of the 4 PROMPTS, plain checks."""
    write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    body: dict[str, Any] = {
        "name": "hostile",
        "teacher": {
            "engine": "openai",
            "openai": {"base_url": base_url, "model": "served-model", "max_retries": 1, "backoff_s": 0.01},
        },
        "prompts": {"path": "prompts.jsonl", "id_column": "id"},
        "generate": {"n": 2, "max_new_tokens": 16, "prompts_per_shard": 2},
        "curate": {"checks": [{"type": "empty"}, {"type": "exact_dedup"}], "select": {"strategy": "all"}},
    }
    for key, value in sections.items():
        body[key] = {**body.get(key, {}), **value}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return path


def cli(prog: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(prog, *args, env={**ENV, **(env or {})}, timeout=300)


def fails_with(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2, no traceback, exactly one line on stderr, naming every needle; returns that line."""
    out = res.stdout + res.stderr
    assert res.returncode == 2, (res.returncode, out[-3000:])
    assert "Traceback" not in out, out[-3000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, res.stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def no_secret_under(*places: Path, text: str = "") -> None:
    """The API key appears in no file (binary too) under `places` and not in `text`."""
    assert SECRET not in text
    for place in places:
        for f in place.rglob("*"):
            if f.is_file():
                assert SECRET.encode() not in f.read_bytes(), f


# --- 2. malformed answers: the row keeps what was wrong, the shard's good rows are kept ----------


@pytest.mark.parametrize(
    ("mode", "says"),
    [
        ("not-object", "not an object"),
        ("choices-not-objects", "not an object"),
        ("no-choices", "no `choices`"),
        ("content-not-string", "not a string"),
        ("html", "not JSON"),
        ("bad-logprobs", "logprobs"),
        ("content-filter", "content_filter"),
        ("deep-json", "not JSON"),
        ("multiline", "line one line two red"),  # flattened to one line, escape codes dropped
    ],
)
def test_malformed_answers_become_row_errors(tmp_path: Path, server: Any, mode: str, says: str) -> None:
    r = recipe(tmp_path, server.url(mode), generate={"logprobs": 2} if mode == "bad-logprobs" else {})
    res = cli("synth", "generate", str(r), "--run-dir", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    rows = shard_rows(tmp_path / "run")
    assert len(rows) == len(PROMPTS) * 2  # every row present
    for row in rows:
        bad = "BAD" in row["prompt"][-1]["content"]
        assert (row["error"] is not None) == bad, row
        if bad:
            assert says in row["error"], row["error"]
        else:
            assert completion_text(row).startswith("Answer")


def test_usage_garbage_alone_keeps_the_answer(tmp_path: Path, server: Any) -> None:
    r = recipe(tmp_path, server.url("usage-garbage"), generate={"n": 1})
    res = cli("synth", "generate", str(r), "--run-dir", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr[-2000:]
    rows = shard_rows(tmp_path / "run")
    assert all(row["error"] is None and completion_text(row).startswith("Answer") for row in rows)
    bad = [row for row in rows if "BAD" in row["prompt"][-1]["content"]]
    assert bad and all(row["prompt_tokens"] is None and row["completion_tokens"] is None for row in bad)


# --- 3. a run in which every row failed ----------------------------------------------------------


def test_all_failed_run_exits_non_zero_and_keeps_rows_for_retry(tmp_path: Path, server: Any) -> None:
    run = tmp_path / "run"
    res = cli("synth", "generate", str(recipe(tmp_path, server.url("fail-all"))), "--run-dir", str(run))
    fails_with(res, "every one of the 8 rows", "HTTP 400", "--retry-failed")
    assert "failed rows" in res.stdout  # the summary table is still printed
    assert len(shard_rows(run)) == 8
    again = cli("synth", "generate", str(recipe(tmp_path, server.url("ok"))), "--run-dir", str(run), "--retry-failed")
    assert again.returncode == 0, again.stderr[-2000:]
    rows = shard_rows(run)
    assert len(rows) == 8 and all(r["error"] is None for r in rows)


def test_preflight_catches_a_base_url_without_v1_and_an_unknown_model(tmp_path: Path, server: Any) -> None:
    no_v1 = server.url("ok").removesuffix("/v1")
    fails_with(cli("synth", "generate", str(recipe(tmp_path, no_v1)), "--run-dir", str(tmp_path / "a")), no_v1, "/v1")
    r = recipe(tmp_path, server.url("ok"), teacher={"openai": {"base_url": server.url("ok"), "model": "gpt-typo"}})
    fails_with(cli("synth", "generate", str(r), "--run-dir", str(tmp_path / "b")), "'gpt-typo'", "served-model")
    assert not list(tmp_path.glob("*/generations/shard-*"))


# --- 1. secrets -------------------------------------------------------------------------------------


def test_no_secret_reaches_disk_output_or_cards(tmp_path: Path, server: Any) -> None:
    r = recipe(
        tmp_path,
        server.url("echo-auth"),
        train={"args": {"hub_token": SECRET}},
        publish={"repo_id": "tester/hostile"},
    )
    data = yaml.safe_load(r.read_text())
    data["teacher"]["vllm"] = {"engine_args": {"hf_token": SECRET, "nested": {"password": SECRET}}}
    r.write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    gen = cli("synth", "generate", str(r), "--run-dir", str(run))
    assert gen.returncode == 0, gen.stderr[-2000:]
    failed = [row for row in shard_rows(run) if row["error"]]
    assert failed and all("Bearer ***" in row["error"] for row in failed)  # the echo was there, scrubbed
    cur = cli("synth", "curate", str(r), "--run-dir", str(run))
    assert cur.returncode == 0, cur.stderr[-2000:]
    pub = cli("synth", "publish", str(r), "--run-dir", str(run), "--dry-run", "--what", "all")
    assert pub.returncode == 0, pub.stderr[-2000:]
    resolved = yaml.safe_load((run / "recipe.resolved.yaml").read_text())
    assert resolved["train"]["args"]["hub_token"] == "***"
    assert resolved["teacher"]["vllm"]["engine_args"] == {"hf_token": "***", "nested": {"password": "***"}}
    no_secret_under(run, text=gen.stdout + gen.stderr + cur.stdout + cur.stderr + pub.stdout + pub.stderr)


def test_redaction_rules() -> None:
    from synth.redact import redact, register_secret, scrub

    register_secret("zz-key-123456")
    assert (
        scrub("echo: zz-key-123456 and Authorization: Bearer abc.def-ghi") == "echo: *** and Authorization: Bearer ***"
    )
    masked = redact({"api_key_env": "MY_KEY", "max_new_tokens": 5, "args": {"hub_token": "x1", "pad_token": "<p>"}})
    assert masked == {"api_key_env": "MY_KEY", "max_new_tokens": 5, "args": {"hub_token": "***", "pad_token": "<p>"}}
    # a key pasted where a variable's name belongs is not a name: masked, whatever the key is called
    assert redact({"api_key_env": "sk-live-9f8e7d", "token_env": "hf_AbCdEf123", "x_env": "MY_KEY"}) == {
        "api_key_env": "***",
        "token_env": "***",
        "x_env": "MY_KEY",
    }
    # a key in a URL's query string, named by its parameter; other parameters stay readable
    url = "http://h:8/v1/chat?model=m&api_key=sk-abc123&max_tokens=5;access_token=t0k3n#x ?key=k9&page=2"
    assert scrub(url) == "http://h:8/v1/chat?model=m&api_key=***&max_tokens=5;access_token=***#x ?key=***&page=2"


# --- 5. the same rows in two shards ---------------------------------------------------------------


def test_copied_shard_is_used_once_by_every_stage(tmp_path: Path, server: Any) -> None:
    r = recipe(tmp_path, server.url("ok"))
    run = tmp_path / "run"
    assert cli("synth", "generate", str(r), "--run-dir", str(run)).returncode == 0
    first = sorted((run / "generations").glob("shard-*.parquet"))[0]
    shutil.copy(first, run / "generations" / "shard-00000 (copy).parquet")
    again = cli("synth", "generate", str(r), "--run-dir", str(run))
    assert again.returncode == 0 and "repeats 4 row(s) of shard-00000.parquet" in again.stderr, again.stderr
    manifest = json.loads((run / "generations" / "_manifest.json").read_text())
    assert manifest["rows"] == 8 and manifest["prompts"] == 4
    cur = cli("synth", "curate", str(r), "--run-dir", str(run))
    assert cur.returncode == 0 and "shard-00000 (copy).parquet" in cur.stderr, cur.stderr
    kept = pq.read_table(run / "curated" / "kept.parquet").column("id").to_pylist()
    rejected = pq.read_table(run / "curated" / "rejected.parquet").column("id").to_pylist()
    assert len(kept) == len(set(kept)) and not set(kept) & set(rejected)
    assert sorted(kept + rejected) == sorted({row["id"] for row in shard_rows(run)})  # none lost, none twice


# --- 6. every field that shapes what the teacher saw ----------------------------------------------


@pytest.mark.parametrize("field", ["teacher.system_prompt", "prompts.system_prompt"])
def test_changed_context_in_an_existing_run_is_refused(tmp_path: Path, server: Any, field: str) -> None:
    r = recipe(tmp_path, server.url("ok"))
    run = tmp_path / "run"
    assert cli("synth", "generate", str(r), "--run-dir", str(run), "--limit", "2").returncode == 0
    res = cli("synth", "generate", str(r), f"{field}=Be terse.", "--run-dir", str(run))
    fails_with(res, str(run / "generations"))
    assert len(shard_rows(run)) == 4  # nothing mixed in
    (run / "generations" / "_manifest.json").unlink()  # killed before any manifest: the rows still tell
    if field == "teacher.system_prompt":
        fails_with(cli("synth", "generate", str(r), f"{field}=Be terse.", "--run-dir", str(run)), "context")


# --- 8. corrupt or foreign files, run folders, disks -----------------------------------------------


def test_corrupt_and_foreign_parquet_name_the_file(tmp_path: Path, server: Any) -> None:
    r = recipe(tmp_path, server.url("ok"))
    run = tmp_path / "run"
    assert cli("synth", "generate", str(r), "--run-dir", str(run)).returncode == 0
    shard = sorted((run / "generations").glob("shard-*.parquet"))[-1]
    good = shard.read_bytes()
    shard.write_bytes(good[: len(good) // 2])
    for prog, cmd in [("synth", "generate"), ("synth", "curate")]:
        fails_with(cli(prog, cmd, str(r), "--run-dir", str(run)), shard.name)
    pq.write_table(pa.table({"x": [1, 2]}), shard)
    fails_with(cli("synth", "curate", str(r), "--run-dir", str(run)), shard.name, "not a generation shard")
    shard.write_bytes(good)
    assert cli("synth", "curate", str(r), "--run-dir", str(run)).returncode == 0
    kept = run / "curated" / "kept.parquet"
    kept.write_bytes(b"PAR1 garbage")
    fails_with(cli("synth", "publish", str(r), "--run-dir", str(run), "--dry-run", "--repo-id", "a/b"), "kept.parquet")


def test_run_dir_that_is_a_file(tmp_path: Path, server: Any) -> None:
    (tmp_path / "afile").write_text("x")
    r = recipe(tmp_path, server.url("ok"))
    fails_with(cli("synth", "generate", str(r), "--run-dir", str(tmp_path / "afile")), "afile", "is a file")
    fails_with(cli("synth", "curate", str(r), "--run-dir", str(tmp_path / "afile" / "sub")), "is a file")


def _limit_file_size(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_disk_full_during_a_write_keeps_complete_shards(tmp_path: Path, server: Any) -> None:
    r = recipe(tmp_path, server.url("ok"))
    run = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "synth.cli", "generate", str(r), "--run-dir", str(run)],
        cwd=ROOT,
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: _limit_file_size(6000),  # the resolved recipe (~2.5 kB) fits; a shard (~11 kB) does not
    )
    fails_with(res, str(run / "generations"), "ulimit")
    assert not list((run / "generations").glob("shard-*")) and not list((run / "generations").glob(".*.tmp"))
    assert cli("synth", "generate", str(r), "--run-dir", str(run)).returncode == 0
    assert len(shard_rows(run)) == 8


# --- curate checks given bad settings or bad user code -------------------------------------------


def _generated(tmp_path: Path, server: Any, **sections: Any) -> tuple[Path, Path]:
    r = recipe(tmp_path, server.url("ok"), **sections)
    run = tmp_path / "run"
    assert cli("synth", "generate", str(r), "--run-dir", str(run)).returncode == 0
    return r, run


def test_curate_settings_errors_name_the_check(tmp_path: Path, server: Any) -> None:
    r, run = _generated(tmp_path, server)
    schema = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}
    check = f"curate.checks=[{{type: json_schema, schema: {json.dumps(schema)}}}]"
    fails_with(
        cli("synth", "curate", str(r), "--run-dir", str(run), check), "curate.checks.0.schema", "#/$defs/missing"
    )
    res = cli("synth", "curate", str(r), "--run-dir", str(run), "curate.checks=[{type: language, languages: [french]}]")
    fails_with(res, "curate.checks.0.languages", "'french'")
    res = cli(
        "synth", "curate", str(r), "--run-dir", str(run),
        "curate.checks=[{type: decontaminate, eval_sets: [{path: nowhere.jsonl}]}]",
    )  # fmt: skip
    fails_with(res, "curate.checks.0.eval_sets.0.path", "nowhere.jsonl")
    unreachable = "http://127.0.0.1:9/v1"
    judge = {"type": "llm_judge", "model": {"engine": "openai", "openai": {"base_url": unreachable}}}
    res = cli("synth", "curate", str(r), "--run-dir", str(run), f"curate.checks=[{json.dumps(judge)}]")
    line = fails_with(res, unreachable, "curate.checks.0.model.openai.base_url")
    assert "teacher.openai" not in line
    assert not (run / "curated").exists()


def test_python_check_values_are_read_strictly(tmp_path: Path, server: Any) -> None:
    (tmp_path / "user_checks.py").write_text(
        "def nan(row):\n    return float('nan')\n\ndef says_no(row):\n    return {'passed': 'no', 'score': 1}\n",
        encoding="utf-8",
    )
    r, run = _generated(tmp_path, server)
    for fn, says in [("nan", "finite number"), ("says_no", "passed='no'")]:
        check = f"curate.checks=[{{type: python, function: 'user_checks:{fn}'}}]"
        res = run_cli("synth", "curate", str(r), "--run-dir", str(run), check, cwd=tmp_path, env=ENV)
        # nothing kept is an error now, but curated/ is written with every row's reason
        assert res.returncode == 2 and "curate kept 0 of 8 rows" in res.stderr, res.stderr[-2000:]
        rejected = pq.read_table(run / "curated" / "rejected.parquet").to_pylist()
        assert len(rejected) == 8 and all(says in row["reason"] for row in rejected), rejected[0]["reason"]


# --- 9. silent or misleading -------------------------------------------------------------------------


def test_override_errors_blame_the_override_not_a_recipe_line(tmp_path: Path, server: Any) -> None:
    r = recipe(tmp_path, server.url("ok"))
    line = fails_with(cli("synth", "generate", str(r), "generate.n=lots"), "override generate.n=lots", "generate.n")
    assert f"{r}:" not in line


# --- servers that refuse, fail, or are not what the URL says ---------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.servers import HubServer

    s = HubServer(tmp_path_factory.mktemp("hub"), "hf_test_token_123456")
    yield s
    s.stop()


def _hub_env(url: str, tmp: Path) -> dict[str, str]:
    return {
        "HF_ENDPOINT": url,
        "HF_TOKEN": "hf_test_token_123456",
        "HF_HOME": str(tmp / "hf"),
        "HF_HUB_DISABLE_XET": "1",
    }


def test_hub_refusals_and_non_hub_urls_are_one_line(tmp_path: Path, server: Any, hub: Any) -> None:
    r, run = _generated(tmp_path, server)
    assert cli("synth", "curate", str(r), "--run-dir", str(run)).returncode == 0
    publish = ("synth", "publish", str(r), "--run-dir", str(run), "--repo-id")
    env = _hub_env(hub.url, tmp_path)
    fails_with(cli(*publish, "tester/forbidden-data", env=env), hub.url, "403", "write")
    fails_with(cli(*publish, "tester/broken-data", env=env), hub.url, "500")
    not_hub = f"http://127.0.0.1:{server.port}"
    fails_with(cli(*publish, "tester/data", env=_hub_env(not_hub, tmp_path)), not_hub, "HF_ENDPOINT")
    assert cli(*publish, "tester/data", env=env).returncode == 0  # the same run publishes to a real Hub


def test_review_url_that_is_not_argilla(tmp_path: Path, server: Any) -> None:
    r, run = _generated(tmp_path, server)
    assert cli("synth", "curate", str(r), "--run-dir", str(run)).returncode == 0
    for url in (server.url("ok"), f"http://127.0.0.1:{server.port}"):
        env = {"ARGILLA_API_URL": url, "ARGILLA_API_KEY": "argilla.key-123456"}
        fails_with(cli("synth", "review", "push", str(r), "--run-dir", str(run), env=env), url, "Argilla")
    assert not (run / "review").exists()


def test_eval_names_a_damaged_trained_student_before_any_work(tmp_path: Path, server: Any) -> None:
    r = recipe(tmp_path, server.url("ok"))
    final = tmp_path / "run" / "train" / "sft" / "final"
    final.mkdir(parents=True)
    (final / "adapter_config.json").write_text("{}")
    (final / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")  # a save cut short
    res = cli("sft", "eval", str(r), "--run-dir", str(tmp_path / "run"), "eval.behaviour_check=empty")
    fails_with(res, str(final), "adapter_model.safetensors", "sft run")
    assert not (tmp_path / "run" / "eval").exists()


def test_a_key_cut_in_half_by_an_excerpt_is_still_scrubbed(tmp_path: Path, server: Any) -> None:
    run = tmp_path / "run"
    res = cli("synth", "generate", str(recipe(tmp_path, server.url("long-echo"))), "--run-dir", str(run))
    assert res.returncode == 0, res.stderr[-2000:]
    failed = [row["error"] for row in shard_rows(run) if row["error"]]
    assert failed and all("key ***" in e for e in failed), failed[0]
    no_secret_under(run, text=res.stdout + res.stderr)
    assert not any(SECRET[:8] in e for e in failed)  # not even its first characters


def test_command_line_mistakes_are_one_line() -> None:
    for args, says in [
        (["generate", "--bogus"], "No such option: --bogus"),
        (["generate", "r.yaml", "--limit", "abc"], "--limit"),
        (["nosuch"], "No such command"),
    ]:
        fails_with(run_cli("synth", *args), says, "--help")
    fails_with(run_cli("sft", "run"), "Missing argument")


def test_a_second_generate_on_the_same_run_is_refused(tmp_path: Path, server: Any) -> None:
    from filelock import FileLock

    r = recipe(tmp_path, server.url("ok"))
    run = tmp_path / "run"
    (run / "generations").mkdir(parents=True)
    with FileLock(run / "generations" / ".generate.lock"):  # as a running `synth generate` holds it
        fails_with(cli("synth", "generate", str(r), "--run-dir", str(run)), "another `synth generate`")
    assert cli("synth", "generate", str(r), "--run-dir", str(run)).returncode == 0


def test_a_second_curate_on_the_same_run_is_refused_and_deletes_nothing(tmp_path: Path, server: Any) -> None:
    from filelock import FileLock

    r = recipe(tmp_path, server.url("ok"))
    run = tmp_path / "run"
    assert cli("synth", "generate", str(r), "--run-dir", str(run)).returncode == 0
    with FileLock(run / "generations" / ".generate.lock"):  # a `synth generate` still writing
        fails_with(cli("synth", "curate", str(r), "--run-dir", str(run)), "`synth generate` is writing")
    staging = run / ".curated.12345.tmp"  # what a running `synth curate` is writing
    staging.mkdir()
    with FileLock(run / ".curate.lock"):  # as a running `synth curate` holds it
        fails_with(cli("synth", "curate", str(r), "--run-dir", str(run)), "another `synth curate`")
    assert staging.is_dir()  # the first curate's work is still there
    staging.rmdir()
    assert cli("synth", "curate", str(r), "--run-dir", str(run)).returncode == 0


def test_kept_parquet_of_foreign_types_is_named_by_sft_run(tmp_path: Path, server: Any) -> None:
    r = recipe(tmp_path, server.url("ok"))
    kept = tmp_path / "run" / "curated" / "kept.parquet"
    kept.parent.mkdir(parents=True)
    pq.write_table(pa.table({"prompt": [1], "completion": [2], "teacher_prompt": [3]}), kept)
    fails_with(cli("sft", "run", str(r), "--run-dir", str(tmp_path / "run")), str(kept), "other types")


def test_bad_thread_count_in_the_environment(tmp_path: Path, server: Any) -> None:
    r = recipe(tmp_path, server.url("ok"))
    res = cli("synth", "generate", str(r), "--run-dir", str(tmp_path / "run"), env={"DISTILLERY_THREADS": "abc"})
    fails_with(res, "DISTILLERY_THREADS")


def test_other_servers_normal_answers_are_kept(tmp_path: Path, server: Any) -> None:
    """A finish_reason Distillery does not know (TGI's eos_token) is a finished answer, and a gateway
    without /models still generates: strictness must not turn good answers into failures."""
    for mode in ("eos-token", "no-models"):
        run = tmp_path / mode
        res = cli("synth", "generate", str(recipe(tmp_path, server.url(mode))), "--run-dir", str(run))
        assert res.returncode == 0, res.stderr[-2000:]
        rows = shard_rows(run)
        assert len(rows) == 8 and all(r["error"] is None for r in rows), [r["error"] for r in rows]
    assert {r["finish_reason"] for r in shard_rows(tmp_path / "eos-token")} == {"stop", "eos_token"}


def test_only_blank_prompts_is_not_a_server_failure(tmp_path: Path, server: Any) -> None:
    r = recipe(tmp_path, server.url("ok"))
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": " "}, {"prompt": ""}])
    res = cli("synth", "generate", str(r), "--run-dir", str(tmp_path / "run"))
    assert res.returncode == 0 and "every one" not in res.stderr, res.stderr
    assert {row["error"] for row in shard_rows(tmp_path / "run")} == {"empty prompt"}
