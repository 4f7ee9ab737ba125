"""Soft labels through the whole pipeline: generate (top-k ids) → curate → publish → sft run kd.

The teacher is the real SmolLM2 on the transformers engine; what it stored must arrive unchanged in
the curated set and the published dataset, describe its tokenizer, train a kd student, and refuse a
student whose vocabulary differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
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

    # one row with a broken stored step: left out of kd, and "rows trained" says so
    table = pq.read_table(run / "curated" / "kept.parquet")
    rows = table.to_pylist()
    rows[0]["logprobs"][0]["top_logprobs"][0] = 0.5
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), run / "curated" / "kept.parquet")
    s = run_train(recipe, run)
    assert s.objective == "kd-stored" and (run / "train" / "kd-stored" / "final" / "model.safetensors").is_file()
    assert s.rows == len(kept) and s.rows_trained == len(kept) - 1
    log = json.loads((run / "train" / "kd-stored" / "log.json").read_text())
    assert any("kd_loss" in e and "ce_loss" in e for e in log)

    # the matched hard-label arm: cross-entropy on the same stored tokens, in train/sft
    s = run_train(_recipe(tmp_path, objective="sft", targets="stored"), run)
    assert s.objective == "sft" and (run / "train" / "sft" / "final" / "model.safetensors").is_file()
    log = json.loads((run / "train" / "sft" / "log.json").read_text())
    assert any("ce_loss" in e for e in log)
    with pytest.raises(UserError, match=r"train\.targets=stored is for sft and kd"):
        run_train(_recipe(tmp_path, objective="gkd", targets="stored"), run)

    # with train.kd.cross_tokenizer=off, a student whose vocabulary is not the teacher's is refused
    # before any training
    data = json.loads((run / "generations" / "_manifest.json").read_text())
    data["logprobs"]["tokenizer"]["vocab_hash"] = "0123456789abcdef"
    (run / "generations" / "_manifest.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="is not the tokenizer of the stored log-probabilities") as info:
        run_train(_recipe(tmp_path, kd={"cross_tokenizer": "off"}), run)
    assert "model.path='self'" in info.value.message or "model.path='smollm2'" in info.value.message


def test_server_token_strings_map_to_ids_or_the_row_is_reported(smollm2_dir: Path) -> None:
    import datasets
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    mapper = StringMapper(tok)
    hello = tok.encode(" hello", add_special_tokens=False)
    assert len(hello) == 1 and mapper(" hello") == hello[0]

    def step(tokens: list[str]) -> dict[str, Any]:
        return {
            "token": tokens[0],
            "token_id": None,
            "top_tokens": tokens,
            "top_ids": None,
            "top_logprobs": [-0.1, -2.5],
        }

    good = {"logprobs": [step([" hello", " world"]), step([" world", " hello"])]}
    cols, why = topk_columns(good, mapper)
    assert why is None and cols is not None
    assert cols[IDS] == [[mapper(" hello"), mapper(" world")], [mapper(" world"), mapper(" hello")]]
    assert cols[LOGPROBS][0] == [-0.1, -2.5] and cols[TOKENS] == [mapper(" hello"), mapper(" world")]
    bad = {"logprobs": [step([" hello", "no such token at all"])]}
    assert topk_columns(bad, mapper) == (
        None,
        "token 0: the string 'no such token at all' is no single vocabulary entry",
    )
    ds = datasets.Dataset.from_list([{**good, "id": "a"}, {**bad, "id": "b"}, {"logprobs": None, "id": "c"}])
    out, dropped = with_topk(ds, tok)
    assert out["id"] == ["a"] and [i for i, _ in dropped] == [1, 2]


def _corruptions(vocab: int) -> list[tuple[str, Any, bool]]:
    """Ways a stored step can be wrong, each as (name, function of a good step → a bad one, whether the
    bad step still fits the shards' arrow schema: the others can only reach `topk_columns` directly)."""
    nan, inf = float("nan"), float("inf")

    def setting(key: str, value: Any) -> Any:
        return lambda t: {**t, key: value}

    def top_ids_at(k: int, value: Any) -> Any:
        return lambda t: {**t, "top_ids": [value if i == k else x for i, x in enumerate(t["top_ids"])]}

    def logprob_at(k: int, value: Any) -> Any:
        return lambda t: {**t, "top_logprobs": [value if i == k else x for i, x in enumerate(t["top_logprobs"])]}

    out: list[tuple[str, Any, bool]] = []
    for k in (0, 2):
        out += [
            (f"NaN log-prob at {k}", logprob_at(k, nan), True),
            (f"+inf log-prob at {k}", logprob_at(k, inf), True),
            (f"-inf log-prob at {k}", logprob_at(k, -inf), True),
            (f"positive log-prob at {k}", logprob_at(k, 0.5), True),
            (f"string log-prob at {k}", logprob_at(k, "-0.1"), False),
            (f"bool log-prob at {k}", logprob_at(k, True), False),
            (f"negative id at {k}", top_ids_at(k, -1), True),
            (f"id = vocab at {k}", top_ids_at(k, vocab), True),
            (f"huge id at {k}", top_ids_at(k, 2**40), True),
            (f"float id at {k}", top_ids_at(k, 1.5), False),
            (f"string id at {k}", top_ids_at(k, "7"), False),
            (f"None id at {k}", top_ids_at(k, None), True),
        ]
    out += [
        ("duplicate id", lambda t: {**t, "top_ids": [t["top_ids"][0], *t["top_ids"][:-1]]}, True),
        ("fewer log-probs", lambda t: {**t, "top_logprobs": t["top_logprobs"][:-1]}, True),
        ("more log-probs", lambda t: {**t, "top_logprobs": [*t["top_logprobs"], -5.0]}, True),
        ("empty top-k", lambda t: {**t, "top_ids": [], "top_logprobs": []}, True),
        ("no log-probs", setting("top_logprobs", None), True),
        ("log-probs not a list", setting("top_logprobs", -0.5), False),
        ("ids not a list", setting("top_ids", 3), False),
        ("probabilities sum to 2", lambda t: {**t, "top_logprobs": [-0.01] * len(t["top_ids"])}, True),
        # a probability just above 1 whose sum stays within float16's slack: only its sign shows it
        ("slightly positive log-prob", lambda t: {**t, "top_logprobs": [0.004, -9.0, -9.0, -9.0]}, True),
        ("sampled id outside vocab", setting("token_id", vocab + 5), True),
        ("sampled id negative", setting("token_id", -3), True),
        ("step not a mapping", lambda t: [t], False),
        ("step is None", lambda t: None, False),
    ]
    return out


def test_malformed_stored_log_probs_are_left_out_by_row_never_trained_on(smollm2_dir: Path) -> None:
    """Generated cases of the stored log-probs contract: each malformed row is reported with the token
    at fault and left out; the well-formed rows beside them are kept unchanged."""
    import datasets
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    vocab = len(tok)

    def good_step(seed: int) -> dict[str, Any]:
        ids = [(seed * 7919 + 13 * i) % vocab for i in range(4)]
        return {"token": None, "token_id": ids[0], "top_tokens": None, "top_ids": ids,
                "top_logprobs": [-0.4, -1.6, -2.5, -3.9]}  # fmt: skip

    rows, expected_bad, typed = [], [], []
    for n, (name, corrupt, fits_schema) in enumerate(_corruptions(vocab)):
        for position in (0, 2):  # the first step, and one in the middle
            steps = [good_step(n * 10 + j) for j in range(3)]
            steps[position] = corrupt(steps[position])
            rows.append({"id": f"{name} @ {position}", "logprobs": steps})
            expected_bad.append((len(rows) - 1, position))
            typed.append(fits_schema)
    assert len(expected_bad) >= 50
    for i, position in expected_bad:  # every case, through the per-row check
        cols, why = topk_columns(rows[i], None, vocab)
        assert cols is None and why is not None and why.startswith(f"token {position}"), (rows[i]["id"], why)
    # the cases a shard can hold, through the whole pass with good rows beside them
    stored = [r for r, ok in zip(rows, typed, strict=True) if ok]
    good = [{"id": f"good {g}", "logprobs": [good_step(1000 + g * 3 + j) for j in range(3)]} for g in range(5)]
    assert len(stored) >= 40
    out, dropped = with_topk(datasets.Dataset.from_list(stored + good), tok)
    assert out["id"] == [r["id"] for r in good]
    assert sorted(i for i, _ in dropped) == list(range(len(stored)))
    assert out[LOGPROBS][0] == [[-0.4, -1.6, -2.5, -3.9]] * 3
