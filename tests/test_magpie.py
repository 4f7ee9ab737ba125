"""`synth prompts` (synth/magpie.py): the user-turn prefix, the filters, and the file every stage reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synth.engines.decode import Decoded
from synth.magpie import reject_reason, synthesize_prompts, user_turn_prefix
from synth.recipe import load_recipe
from tests.conftest import ROOT, run_cli, write_jsonl


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def test_the_prefix_is_the_templates_opening_of_a_user_turn(tokenizer) -> None:
    prefix = user_turn_prefix(tokenizer, None)
    assert prefix.endswith("<|im_start|>user\n") and "<|im_start|>system\n" in prefix  # the template's default system
    own = user_turn_prefix(tokenizer, "Ask about cooking.")
    assert own == "<|im_start|>system\nAsk about cooking.<|im_end|>\n<|im_start|>user\n"


def test_reject_reasons() -> None:
    assert reject_reason("How do I bake bread at home?", True, 3, 80) is None
    assert reject_reason("How do I bake bread at home?", False, 3, 80) == "cut at the token limit"
    assert reject_reason("Hi there", True, 3, 80) == "fewer than 3 words"
    assert reject_reason("word " * 81, True, 3, 80) == "more than 80 words"
    assert reject_reason("Tell me <|im_start|>assistant more", True, 3, 80) == "template markup"
    assert reject_reason("", True, 3, 80) == "empty"


class Scripted:
    """The teacher's tokenizer and a model stand-in whose samples are the given texts, in order: the
    filters and the file are what is tested here (the sampling loop has its own tests)."""

    def __init__(self, tokenizer, texts: list[tuple[str, bool]]) -> None:
        self.tokenizer, self.model, self.model_id = tokenizer, None, "scripted"
        self.eos_ids = {tokenizer.convert_tokens_to_ids("<|im_end|>")}
        self.texts = list(texts)
        self.prompts: list[list[int]] = []

    def decode(self, model, prompts, *, n, seeds, **kwargs):
        self.prompts += prompts
        eos = next(iter(self.eos_ids))
        out = []
        for _ in range(n):
            text, stopped = self.texts.pop(0) if self.texts else ("", False)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            out.append(Decoded(ids + ([eos] if stopped else []), stopped))
        return [out]


def test_candidates_are_filtered_and_written_as_a_prompts_file(tmp_path: Path, tokenizer, monkeypatch) -> None:
    import synth.engines.decode

    heldout = write_jsonl(tmp_path / "heldout.jsonl", [{"prompt": "Explain why the sky looks blue during the day."}])
    texts = [
        ("How do I make a simple tomato soup?", True),
        ("Give me three tips for learning a language", False),  # cut at the limit
        ("how do I make a simple TOMATO soup?", True),  # the first one again
        ("Could you explain why the sky looks blue during the day, in short?", True),  # an eval prompt inside
        ("What is a good name for a cat?", True),  # already in prompts.path
        ("Hello", True),
        ("Write a haiku about autumn leaves falling.", True),
        ("What are the rules of chess for beginners?", True),
        ("Which stretches help a stiff back?", True),  # sampled in the same round, not kept: n is 3
    ]
    engine = Scripted(tokenizer, texts)
    monkeypatch.setattr(synth.engines.decode, "decode", engine.decode)
    body = {"name": "m", "synthesize": {"out": str(tmp_path / "new.jsonl"), "n": 3, "candidates": 20, "batch_size": 5}}
    (tmp_path / "r.yaml").write_text(json.dumps(body))
    recipe = load_recipe(tmp_path / "r.yaml")
    s = synthesize_prompts(
        recipe, tmp_path, tmp_path / "new.jsonl", [heldout], ["What is a good name for a cat?"], engine
    )
    rows = [json.loads(line) for line in (tmp_path / "new.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [
        "How do I make a simple tomato soup?",
        "Write a haiku about autumn leaves falling.",
        "What are the rules of chess for beginners?",
    ]
    assert all(r["id"].startswith("magpie-") and r["source"] == "magpie:scripted" for r in rows)
    assert s.kept == 3 and s.candidates == 8
    assert dict(s.rejected) == {
        "cut at the token limit": 1,
        "duplicate": 2,
        "shares an n-gram with an eval prompt": 1,
        "fewer than 3 words": 1,
    }
    # every round starts from the same prefix: the template's user-turn opening, and nothing else
    assert {tuple(p) for p in engine.prompts} == {tuple(tokenizer(s.prefix, add_special_tokens=False)["input_ids"])}
    # the file is a prompts file: `prompts.path` reads it for generate
    from synth.prompts import load_prompts
    from synth.specs import PromptsSpec

    items, _ = load_prompts(PromptsSpec(path=str(tmp_path / "new.jsonl")), recipe.teacher, tmp_path)
    assert [it.prompt[-1]["content"] for it in items] == [r["prompt"] for r in rows]


@pytest.mark.slow
def test_synth_prompts_with_smollm2(tmp_path: Path) -> None:
    body = {
        "name": "m",
        "prompts": {"path": str(ROOT / "data/seed_prompts.jsonl")},
        "eval": {"prompts": str(ROOT / "data/heldout_prompts.jsonl")},
        "synthesize": {"out": "magpie.jsonl", "n": 4, "candidates": 16, "batch_size": 16, "temperature": 0.7},
    }
    (tmp_path / "r.yaml").write_text(json.dumps(body))
    res = run_cli("synth", "prompts", "r.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "magpie.jsonl").read_text().splitlines()]
    assert 1 <= len(rows) <= 4 and "synth prompts (Magpie)" in res.stdout
    assert all(len(r["prompt"].split()) >= 3 and "<|" not in r["prompt"] for r in rows)
    missing = run_cli("synth", "prompts", str(ROOT / "recipes/concise-answers.yaml"), cwd=tmp_path)
    assert missing.returncode != 0 and "no synthesize: section" in missing.stderr
