"""Soft labels through the whole pipeline: generate (top-k ids) → curate → publish → sft run kd.

The teacher is the real SmolLM2 on the transformers engine; what it stored must arrive unchanged in
the curated set and the published dataset, describe its tokenizer, train a kd student, and refuse a
student whose vocabulary differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from sft.objectives.kd import IDS, LOGPROBS, TOKENS
from sft.objectives.kd_data import StringMapper, topk_columns, with_topk
from synth.curate.stage import run_curate
from synth.errors import UserError
from synth.generate import run_generate
from synth.recipe import load_recipe
from synth.tokenizers import vocab_hash
from tests.conftest import write_jsonl


def _recipe(tmp_path: Path, **train: Any) -> Any:
    write_jsonl(
        tmp_path / "p.jsonl",
        [{"id": str(i), "prompt": q} for i, q in enumerate(["Name a colour.", "Say hello.", "What is 2+2?"])],
    )
    body = {
        "name": "kd",
        "prompts": {"path": str(tmp_path / "p.jsonl")},
        "generate": {"n": 2, "temperature": 0.7, "max_new_tokens": 12, "seed": 0, "logprobs": 4},
        "curate": {"checks": [{"type": "empty"}], "select": {"strategy": "all"}},
        "train": {"objective": "kd", "lora": {"enabled": False}, "max_steps": 2, "batch_size": 2, **train},
    }
    (tmp_path / "r.yaml").write_text(json.dumps(body))
    return load_recipe(tmp_path / "r.yaml")


@pytest.mark.slow
def test_stored_logprobs_survive_curate_and_publish_and_train_a_kd_student(tmp_path: Path, smollm2_dir: Path) -> None:
    import datasets
    from transformers import AutoTokenizer

    from sft.training.run import run_train
    from synth.publish.dataset import run_publish_dataset

    recipe, run = _recipe(tmp_path), tmp_path / "run"
    run_generate(recipe, run)
    shard = {r["id"]: r for f in (run / "generations").glob("shard-*.parquet") for r in pq.read_table(f).to_pylist()}
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    for r in shard.values():
        steps = r["logprobs"]
        assert len(steps) == r["completion_tokens"] + (r["finish_reason"] == "stop")  # the stop token's step too
        assert all(len(t["top_ids"]) == 4 and t["top_tokens"] is None for t in steps)  # ids, not strings
        assert tok.decode([t["token_id"] for t in steps], skip_special_tokens=True) == r["completion"][0]["content"]
    manifest = json.loads((run / "generations" / "_manifest.json").read_text())["logprobs"]
    assert manifest["k"] == 4 and manifest["temperature"] == 0.7 and manifest["mode"].startswith("raw")
    assert manifest["tokenizer"]["vocab_hash"] == vocab_hash(tok) and manifest["tokenizer"]["vocab_size"] == 49152

    run_curate(recipe, run)  # curate passes them through unchanged
    kept = pq.read_table(run / "curated" / "kept.parquet").to_pylist()
    assert kept and all(r["logprobs"] == shard[r["id"]]["logprobs"] for r in kept)
    run_publish_dataset(recipe, run, "tester/kd", False, "curated", dry_run=True)
    folder = run / "publish" / "dataset"
    published = datasets.load_dataset(str(folder), split="train").to_list()
    assert [r["logprobs"] for r in published] == [r["logprobs"] for r in kept]
    card = (folder / "README.md").read_text()
    assert f"vocabulary hash `{vocab_hash(tok)}`" in card and "top-4 per generated token" in card

    s = run_train(recipe, run)
    assert s.objective == "kd-stored" and (run / "train" / "kd-stored" / "final" / "model.safetensors").is_file()
    log = json.loads((run / "train" / "kd-stored" / "log.json").read_text())
    assert any("kd_loss" in e and "ce_loss" in e for e in log)

    # the matched hard-label arm: cross-entropy on the same stored tokens, in train/sft
    s = run_train(_recipe(tmp_path, objective="sft", targets="stored"), run)
    assert s.objective == "sft" and (run / "train" / "sft" / "final" / "model.safetensors").is_file()
    log = json.loads((run / "train" / "sft" / "log.json").read_text())
    assert any("ce_loss" in e for e in log)
    with pytest.raises(UserError, match=r"train\.targets=stored is for sft and kd"):
        run_train(_recipe(tmp_path, objective="gkd", targets="stored"), run)

    # a student whose vocabulary is not the teacher's is refused before any training
    data = json.loads((run / "generations" / "_manifest.json").read_text())
    data["logprobs"]["tokenizer"]["vocab_hash"] = "0123456789abcdef"
    (run / "generations" / "_manifest.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="is not the tokenizer of the stored log-probabilities") as info:
        run_train(recipe, run)
    assert "model.path='self'" in info.value.message or "model.path='smollm2'" in info.value.message


def test_server_token_strings_map_to_ids_or_the_row_is_reported(smollm2_dir: Path) -> None:
    import datasets
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    mapper = StringMapper(tok)
    hello = tok.encode(" hello", add_special_tokens=False)
    assert len(hello) == 1 and mapper(" hello") == hello[0]

    def step(tokens: list[str]) -> dict[str, Any]:
        return {"token": tokens[0], "token_id": None, "top_tokens": tokens, "top_ids": None, "top_logprobs": [-0.1] * 2}

    good = {"logprobs": [step([" hello", " world"]), step([" world", " hello"])]}
    cols, why = topk_columns(good, mapper)
    assert why is None and cols is not None
    assert cols[IDS] == [[mapper(" hello"), mapper(" world")], [mapper(" world"), mapper(" hello")]]
    assert cols[LOGPROBS][0] == [-0.1, -0.1] and cols[TOKENS] == [mapper(" hello"), mapper(" world")]
    bad = {"logprobs": [step([" hello", "no such token at all"])]}
    assert topk_columns(bad, mapper) == (
        None,
        "token 0: the string 'no such token at all' is no single vocabulary entry",
    )
    ds = datasets.Dataset.from_list([{**good, "id": "a"}, {**bad, "id": "b"}, {"logprobs": None, "id": "c"}])
    out, dropped = with_topk(ds, tok)
    assert out["id"] == ["a"] and [i for i, _ in dropped] == [1, 2]
