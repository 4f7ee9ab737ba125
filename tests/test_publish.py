"""`synth publish` / `sft publish` against the test Hub, checked with the real clients (datasets, huggingface_hub, PEFT)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli
from tests.curate_helpers import rows_for, write_run
from tests.eval_helpers import answer_rows, report_for, write_eval

pytestmark = pytest.mark.slow
TOKEN = "hf_distillery_test_token_123456"
RECIPE_TEXT = """
name: pub
description: A tiny published run.
prompts: {path: data/seed_prompts.jsonl}
curate:
  checks: [{type: length, min_chars: 12}, {type: language, name: french, languages: [fr], min_confidence: 0.5}]
  select: {strategy: all}
publish: {license: apache-2.0, language: [en, fr], tags: [unit-test]}
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory):
    from tests.servers import HubServer

    server = HubServer(tmp_path_factory.mktemp("hub"), TOKEN)
    yield server
    server.stop()


def _env(hub: Any, tmp: Path, token: str | None = TOKEN) -> dict[str, str]:
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(tmp / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_TOKEN": token or "",
    }
    return env


def _client(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `code` with the real Hub clients in a fresh interpreter (they read HF_ENDPOINT at import)."""
    import os

    full = {**os.environ, **env}
    if not env.get("HF_TOKEN"):
        full.pop("HF_TOKEN", None)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=300)


def _curated_run(tmp: Path) -> tuple[Path, Path]:
    recipe = tmp / "pub.yaml"
    recipe.write_text(RECIPE_TEXT)
    run = write_run(
        tmp / "run",
        [
            rows_for("Say hello.", ["Bonjour, comment allez-vous aujourd'hui ?", "Hello there, how are you today?"]),
            rows_for("Name a fruit.", ["La pomme est un fruit délicieux et sucré.", "ok"]),
        ],
    )
    out = run_cli("synth", "curate", str(recipe), "--run-dir", str(run))
    assert out.returncode == 0, out.stderr
    (run / "review").mkdir()
    (run / "review" / "report.json").write_text(json.dumps({"counts": {"responses": 3, "discarded": 1}}))
    return recipe, run


def test_publish_dataset_round_trip(hub: Any, tmp_path: Path) -> None:
    recipe, run = _curated_run(tmp_path)
    env = _env(hub, tmp_path)
    repo = "tester/pub-data"
    dry = run_cli(
        "synth",
        "publish",
        str(recipe),
        "--run-dir",
        str(run),
        "--repo-id",
        repo,
        "--what",
        "all",
        "--private",
        "--dry-run",
        env=env,
    )
    assert dry.returncode == 0, dry.stderr
    staged = tmp_path / "dry"
    shutil.copytree(run / "publish" / "dataset", staged)
    assert sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file()) == [
        "README.md",
        "curated/train-00000-of-00001.parquet",
        "generations/train-00000-of-00001.parquet",
        "rejected/train-00000-of-00001.parquet",
    ]
    assert not any(r["path"].startswith("/api/repos/create") for r in _log(hub))  # a dry run uploads nothing

    pub = run_cli(
        "synth", "publish", str(recipe), "--run-dir", str(run), "--repo-id", repo, "--what", "all", "--private", env=env
    )
    assert pub.returncode == 0, pub.stderr
    kept = pq.read_table(run / "curated" / "kept.parquet").to_pylist()
    check = _client(
        f"""
import json, datasets
from huggingface_hub import DatasetCard, HfApi, hf_hub_download
ds = datasets.load_dataset("{repo}", split="train")
rej = datasets.load_dataset("{repo}", "rejected", split="train")
card = DatasetCard.load("{repo}", repo_type="dataset")
files = {{}}
for f in HfApi().list_repo_files("{repo}", repo_type="dataset"):
    files[f] = open(hf_hub_download("{repo}", f, repo_type="dataset"), "rb").read().hex()
print(json.dumps({{"rows": ds.to_list(), "rejected": len(rej), "meta": card.data.to_dict(), "text": card.text,
                  "files": files}}))
""",
        env,
    )
    assert check.returncode == 0, check.stderr
    got = json.loads(check.stdout.strip().splitlines()[-1])
    assert [r["id"] for r in got["rows"]] == [r["id"] for r in kept]
    assert [r["completion"] for r in got["rows"]] == [r["completion"] for r in kept]
    assert got["rejected"] == pq.read_table(run / "curated" / "rejected.parquet").num_rows
    meta = got["meta"]
    assert meta["license"] == "apache-2.0" and meta["language"] == ["en", "fr"]
    assert meta["size_categories"] == ["n<1K"] and "text-generation" in meta["task_categories"]
    assert {"distillery", "unit-test", "m"} <= set(meta["tags"])  # "m" is the crafted rows' teacher model
    assert {c["config_name"] for c in meta["dataset_info"]} == {"curated", "rejected", "generations"}
    assert next(c for c in meta["configs"] if c["config_name"] == "curated").get("default") is True
    text = got["text"]
    for expected in (
        "Teacher model: `m`",
        "Engine: `transformers`",
        "temperature=0.7",
        "| french | language |",
        "## Human review",
        "| discarded | 1 |",
        "recipe_hash:",
        "Made with [Distillery]",
    ):
        assert expected in text, expected
    # the dry-run folder is exactly what was uploaded
    assert set(got["files"]) == {str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file()}
    for path, hexdata in got["files"].items():
        assert bytes.fromhex(hexdata) == (staged / path).read_bytes(), path
    # private: unreadable without the token
    anon_env = _env(hub, tmp_path / "anonymous", None)  # a fresh cache: nothing to fall back on
    anon = _client(f'import datasets; datasets.load_dataset("{repo}", split="train")', anon_env)
    assert anon.returncode != 0 and "DatasetNotFoundError" in anon.stderr, anon.stderr[-2000:]
    info = _client(f'from huggingface_hub import HfApi; HfApi().dataset_info("{repo}")', anon_env)
    assert info.returncode != 0 and "RepositoryNotFoundError" in info.stderr, info.stderr[-2000:]
    # the token is nowhere: output, run folder, uploaded files
    for out in (dry, pub):
        assert TOKEN not in out.stdout + out.stderr
    for p in run.rglob("*"):
        assert not p.is_file() or TOKEN.encode() not in p.read_bytes(), p
    assert all(TOKEN.encode().hex() not in h for h in got["files"].values())

    # a later push_to_hub of another config keeps our card; publishing again keeps its dataset_info
    extra = _client(
        f"""
import datasets
datasets.Dataset.from_dict({{"x": [1, 2]}}).push_to_hub("{repo}", config_name="extra")
""",
        env,
    )
    assert extra.returncode == 0, extra.stderr
    again = run_cli("synth", "publish", str(recipe), "--run-dir", str(run), "--repo-id", repo, env=env)
    assert again.returncode == 0, again.stderr
    card = _client(
        f"""
import json
from huggingface_hub import DatasetCard
c = DatasetCard.load("{repo}", repo_type="dataset")
print(json.dumps({{"meta": c.data.to_dict(), "text": c.text}}))
""",
        env,
    )
    final = json.loads(card.stdout.strip().splitlines()[-1])
    assert {c["config_name"] for c in final["meta"]["dataset_info"]} >= {"curated", "extra"}
    assert final["meta"]["license"] == "apache-2.0" and "## How it was made" in final["text"]


def _log(hub: Any) -> list[dict[str, Any]]:
    import httpx

    return httpx.get(f"{hub.url}/_test/log").json()


def test_publish_model_adapter_loads_with_peft(hub: Any, tmp_path: Path, smollm2_dir: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe, run = _curated_run(tmp_path)
    final = run / "train" / "sft" / "final"
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(smollm2_dir),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    model.save_pretrained(final)
    AutoTokenizer.from_pretrained(smollm2_dir).save_pretrained(final)
    (final / "training_args.bin").write_bytes(b"pickled arguments")
    # an eval whose sft student complies more but loops: the card must carry the warning
    good, loop = "Le miel nourrit la colonie en hiver.", "les bébé, les bébé, les bébé, les bébé, les bébé"
    rows = answer_rows("teacher", [(i < 5, True, good) for i in range(10)])
    rows += answer_rows("base_student", [(False, True, good)] * 10)
    rows += answer_rows("sft", [(True, i < 5, good if i < 5 else loop) for i in range(10)])
    rep = report_for(rows, ["teacher", "base_student", "sft"])
    write_eval(run / "eval", rows, rep)
    env = _env(hub, tmp_path)
    repo = "tester/pub-model"
    out = run_cli(
        "sft", "publish", str(recipe), "--run-dir", str(run), "--repo-id", repo, "--dataset", "tester/pub-data", env=env
    )
    assert out.returncode == 0, out.stderr
    assert TOKEN not in out.stdout + out.stderr
    check = _client(
        f"""
import json, torch
from huggingface_hub import ModelCard, HfApi
from peft import PeftModel
from transformers import AutoModelForCausalLM
card = ModelCard.load("{repo}")
base = AutoModelForCausalLM.from_pretrained("{smollm2_dir}")
m = PeftModel.from_pretrained(base, "{repo}")
w = {{k: v.sum().item() for k, v in m.state_dict().items() if "lora_" in k}}
print(json.dumps({{"meta": card.data.to_dict(), "text": card.text, "w": w,
                  "files": sorted(HfApi().list_repo_files("{repo}"))}}))
""",
        env,
    )
    assert check.returncode == 0, check.stderr
    got = json.loads(check.stdout.strip().splitlines()[-1])
    meta = got["meta"]
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["library_name"] == "peft"
    assert meta["datasets"] == ["tester/pub-data"] and "sft" in meta["tags"]
    sft_row = next(r for r in rep["headline"]["rows"] if r[0] == "sft")
    assert "| " + " | ".join(sft_row) + " |" in got["text"] and sft_row[-1] == "regressed"
    # every warning, the sft regression among them (the planted teacher and base give one answer to all
    # prompts, so they are flagged as degenerate too)
    assert any("sft regressed" in w for w in rep["warnings"]) and all(w in got["text"] for w in rep["warnings"])
    assert "Objective: `sft`" in got["text"]
    assert "training_args.bin" not in got["files"] and "adapter_model.safetensors" in got["files"]
    local = {k: v.sum().item() for k, v in model.state_dict().items() if "lora_" in k}
    assert got["w"] and got["w"] == pytest.approx(local)
    cfg = json.loads((run / "publish" / "model" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.parametrize(
    ("token", "args", "message"),
    [
        (None, ["--repo-id", "tester/x"], "no Hugging Face token found"),
        ("hf_wrong", ["--repo-id", "tester/x"], "refused the token"),
        (TOKEN, ["--repo-id", "not a repo"], "is not a Hub repo id"),
        (TOKEN, [], "no repo_id repo given"),
        (TOKEN, ["--repo-id", "tester/x", "--what", "everything"], "--what 'everything'"),
    ],
)
def test_publish_errors_are_clear(hub: Any, tmp_path: Path, token: str | None, args: list[str], message: str) -> None:
    recipe, run = _curated_run(tmp_path)
    out = run_cli("synth", "publish", str(recipe), "--run-dir", str(run), *args, env=_env(hub, tmp_path, token))
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    if token:
        assert token not in out.stdout + out.stderr


def test_publish_model_of_an_arm_trained_with_seeds_asks_which_seed(hub: Any, tmp_path: Path) -> None:
    recipe, run = _curated_run(tmp_path)
    for seed in (0, 1):
        (run / "train" / "sft" / f"seed-{seed}" / "final").mkdir(parents=True)
    args = ["--repo-id", "tester/m", "--objective", "sft", "--dry-run"]
    out = run_cli("sft", "publish", str(recipe), "--run-dir", str(run), *args, env=_env(hub, tmp_path))
    assert out.returncode == 2, out.stderr
    assert "sft was trained with several seeds (seed-0, seed-1)" in out.stderr
    assert "--objective sft/seed-0" in out.stderr and "Traceback" not in out.stderr
