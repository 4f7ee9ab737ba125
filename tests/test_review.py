"""`synth review push/pull` against a real argilla-server, with reviewers answering through its API."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from synth.records import completion_text
from tests.conftest import RECIPE, run_cli

pytestmark = pytest.mark.slow
rg = pytest.importorskip("argilla")

OVERRIDES = ["prompts.limit=8", "generate.n=3", "generate.max_new_tokens=24"]


@pytest.fixture(scope="module")
def curated_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real generate + curate run of the default recipe on 8 prompts (SmolLM2, 3 samples each)."""
    run = tmp_path_factory.mktemp("review") / "run"
    for stage in ("generate", "curate"):
        out = run_cli("synth", stage, str(RECIPE), *OVERRIDES, "--run-dir", str(run))
        assert out.returncode == 0, out.stderr
    return run


def _env(server: Any, key: str | None = None) -> dict[str, str]:
    return {"ARGILLA_API_URL": server.url, "ARGILLA_API_KEY": key or server.api_key}


def _review(run: Path, action: str, server: Any, *extra: str, key: str | None = None) -> Any:
    return run_cli(
        "synth", "review", action, str(RECIPE), *OVERRIDES, "--run-dir", str(run), *extra, env=_env(server, key)
    )


def _rows(path: Path) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in pq.read_table(path).to_pylist()}


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _text(row: dict[str, Any]) -> str:
    return completion_text(row)


class Reviewer:
    """An annotator answering records the way Argilla's web UI does (its `me` search and responses endpoints)."""

    def __init__(self, server: Any, owner: Any, workspace: Any, name: str) -> None:
        user = rg.User(username=name, password=f"{name}-password-1", role="annotator", client=owner).create()
        user.add_to_workspace(workspace)
        key = owner.http_client.get(f"/api/v1/users/{user.id}").json()["api_key"]
        self.http = httpx.Client(base_url=server.url, headers={"X-Argilla-Api-Key": key}, timeout=30)

    def pending(self, dataset_id: Any) -> dict[str, str]:
        """row id -> server record id of the records this reviewer has not answered."""
        body = {
            "filters": {
                "and": [{"type": "terms", "scope": {"entity": "response", "property": "status"}, "values": ["pending"]}]
            }
        }
        r = self.http.post(f"/api/v1/me/datasets/{dataset_id}/records/search", params={"limit": 1000}, json=body)
        r.raise_for_status()
        return {i["record"]["external_id"]: i["record"]["id"] for i in r.json()["items"]}

    def answer(self, record_id: str, status: str = "submitted", **values: Any) -> None:
        payload = {"values": {k: {"value": v} for k, v in values.items()}, "status": status}
        self.http.post(f"/api/v1/records/{record_id}/responses", json=payload).raise_for_status()


def test_review_loop_end_to_end(curated_run: Path, argilla_server: Any, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(curated_run, run)
    kept0, rejected0 = _rows(run / "curated" / "kept.parquet"), _rows(run / "curated" / "rejected.parquet")
    assert len(kept0) >= 5 and len(rejected0) >= 2, "the real run should keep and reject some rows"

    # push, twice: the second adds nothing
    first = _review(run, "push", argilla_server, "--rejected", "2")
    assert first.returncode == 0, first.stderr
    again = _review(run, "push", argilla_server, "--rejected", "2")
    assert again.returncode == 0, again.stderr
    assert re.search(r"new records\W+0\W", again.stdout), again.stdout
    owner = rg.Argilla(api_url=argilla_server.url, api_key=argilla_server.api_key)
    ds = owner.datasets("answer-in-french")
    records = list(ds.records(with_suggestions=True))
    ids = [r.id for r in records]
    assert len(ids) == len(set(ids)) == len(kept0) + 2
    assert set(kept0) <= set(ids)
    pushed_rejected = [i for i in ids if i in rejected0]
    assert len(pushed_rejected) == 2
    assert {f.name for f in ds.settings.fields} == {"prompt", "teacher_prompt", "completion"}
    some = next(r for r in records if r.id in kept0)
    assert some.fields["completion"] == _text(kept0[some.id])
    system = some.fields["teacher_prompt"][0]
    assert (system.role, system.content) == ("system", "Always answer in French.")
    assert some.metadata["curate"] == "kept" and some.metadata["teacher_model"] == kept0[some.id]["teacher"]["model"]
    assert some.metadata["score_french"] == pytest.approx(kept0[some.id]["score"])
    sugg = {s.question_name: s for s in some.suggestions}
    assert sugg["decision"].value == "keep" and sugg["decision"].agent == "french"
    assert sugg["quality"].agent == "french" and 1 <= sugg["quality"].value <= 5
    rej = next(r for r in records if r.id in rejected0)
    assert {s.question_name: s.value for s in rej.suggestions}["decision"] == "discard"
    assert rej.metadata["curate"] == rejected0[rej.id]["rejected_by"]

    # reviewers answer
    ws = owner.workspaces(ds.workspace.name)
    alice, bob = (Reviewer(argilla_server, owner, ws, n) for n in ("alice", "bob"))
    todo = alice.pending(ds.id)
    assert set(todo) == set(ids)  # the search plugin answers the UI's query
    k = sorted(kept0)
    discard, correct, ui_discard, draft, rated = k[:5]
    rescue = pushed_rejected[0]
    fixed = "Bonjour ! Voici une réponse corrigée par une personne."
    alice.answer(todo[discard], decision="discard", quality=1)
    alice.answer(todo[correct], decision="keep", quality=5, corrected_completion=fixed, note="fixed the tone")
    bob.answer(todo[ui_discard], status="discarded")  # the web UI's Discard button
    alice.answer(todo[draft], status="draft", decision="discard")  # drafts do not count
    alice.answer(todo[rated], decision="keep", quality=3)
    bob.answer(todo[rated], decision="keep", quality=4)
    alice.answer(todo[rescue], decision="keep", quality=4)
    assert len(alice.pending(ds.id)) == len(ids) - 5

    pulled = _review(run, "pull", argilla_server)
    assert pulled.returncode == 0, pulled.stderr
    kept, rejected = _rows(run / "curated" / "kept.parquet"), _rows(run / "curated" / "rejected.parquet")
    assert set(kept) | set(rejected) == set(kept0) | set(rejected0) and not set(kept) & set(rejected)
    for row_id in (discard, ui_discard):
        assert rejected[row_id]["rejected_by"] == "human" and rejected[row_id]["reason"] == "human: discard"
    assert _text(kept[correct]) == fixed and kept[correct]["original_completion"] == kept0[correct]["completion"]
    human = {v["name"]: v for v in kept[correct]["verdicts"]}["human"]
    assert human["score"] == 5.0 and "fixed the tone" in human["reason"]
    assert {v["name"]: v for v in kept[rated]["verdicts"]}["human"]["score"] == 3.5
    assert rescue in kept and {v["name"]: v for v in kept[rescue]["verdicts"]}["human"]["passed"]
    untouched = (set(kept0) - {discard, correct, ui_discard, rated}) | (set(rejected0) - {rescue})
    for row_id in untouched:  # nobody reviewed them (the draft counts as nobody): the automatic decision stands
        before = kept0.get(row_id) or rejected0[row_id]
        after = kept.get(row_id) or rejected[row_id]
        assert (row_id in kept) == (row_id in kept0)
        assert after["verdicts"] == before["verdicts"] and after["completion"] == before["completion"]
    responses = pq.read_table(run / "review" / "responses.parquet").to_pylist()
    assert {(r["user"], r["status"]) for r in responses} >= {("alice", "draft"), ("bob", "discarded")}
    assert len(responses) == 7
    report = (run / "review" / "report.json").read_text()
    assert '"discarded": 2' in report and '"rescued": 1' in report and '"corrected": 1' in report

    # pull is idempotent
    snapshot = _digest(run / "curated")
    again = _review(run, "pull", argilla_server)
    assert again.returncode == 0, again.stderr
    assert _digest(run / "curated") == snapshot

    # a reviewer changes their mind: the row comes back
    alice.http.put(
        f"/api/v1/responses/{_response_id(owner, todo[discard], alice)}",
        json={"values": {"decision": {"value": "keep"}}, "status": "submitted"},
    ).raise_for_status()
    assert _review(run, "pull", argilla_server).returncode == 0
    assert discard in _rows(run / "curated" / "kept.parquet")

    # the key never lands in a file or the output
    for out in (first, again, pulled):
        assert argilla_server.api_key not in out.stdout + out.stderr
    for path in run.rglob("*"):
        if path.is_file():
            assert argilla_server.api_key.encode() not in path.read_bytes(), path


def _response_id(owner: Any, record_id: str, reviewer: Reviewer) -> str:
    me = reviewer.http.get("/api/v1/me").json()["id"]
    rec = owner.http_client.get(f"/api/v1/records/{record_id}", params={"include": ["responses"]}).json()
    return next(r["id"] for r in rec["responses"] if r["user_id"] == me)


@pytest.mark.parametrize(
    ("url", "key", "message"),
    [
        ("http://127.0.0.1:9", None, "cannot reach the Argilla server"),
        (None, "not-the-key", "refused ARGILLA_API_KEY"),
    ],
)
def test_unreachable_server_or_wrong_key_changes_nothing(
    curated_run: Path, argilla_server: Any, tmp_path: Path, url: str | None, key: str | None, message: str
) -> None:
    run = tmp_path / "run"
    shutil.copytree(curated_run, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    env = {"ARGILLA_API_URL": url or argilla_server.url, "ARGILLA_API_KEY": key or argilla_server.api_key}
    for action in ("push", "pull"):
        out = run_cli("synth", "review", action, str(RECIPE), *OVERRIDES, "--run-dir", str(run), env=env)
        assert out.returncode == 2, out.stderr
        assert message in out.stderr and "Traceback" not in out.stderr
        assert env["ARGILLA_API_KEY"] not in out.stdout + out.stderr
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_missing_key_is_a_clear_error(curated_run: Path, tmp_path: Path) -> None:
    out = run_cli(
        "synth",
        "review",
        "pull",
        str(RECIPE),
        "--run-dir",
        str(curated_run),
        env={"ARGILLA_API_KEY": "", "ARGILLA_API_URL": "http://127.0.0.1:9"},
    )
    assert out.returncode == 2 and "ARGILLA_API_KEY is not set" in out.stderr
