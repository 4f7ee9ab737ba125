"""Soft labels from a teacher with another tokenizer (sft/objectives/cross_tokenizer.py): a second real
tokenizer (a byte-level BPE trained here with `tokenizers`) against SmolLM2's; text alignment with
multi-byte characters and a token on one side only, identical tokenizers giving the same-tokenizer
targets, the ULD term, and `sft run` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from sft.objectives.cross_tokenizer import char_ends, cross_targets, groups, pieces_from_ids, uld_loss
from sft.objectives.kd import IDS, LOGPROBS, ULD_PROBS, ULD_TOKENS, KDCollator
from sft.objectives.kd_data import StringMapper, with_cross_topk, with_topk
from synth.recipe import load_recipe
from synth.records import Completion, PromptItem, TokenLogprob, make_rows, prompt_id_for
from synth.tokenizers import vocab_hash
from tests.conftest import ROOT, tiny_llama
from tests.curate_helpers import TEACHER, write_run

TEXT = "Le café coûte 3 € — 日本語 too, naïve!"


@pytest.fixture(scope="module")
def student(smollm2_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory):
    """A byte-level BPE of 400 entries trained on the seed prompts: it splits text unlike SmolLM2's 49k
    vocabulary, and every non-ASCII character into byte tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = [json.loads(line)["prompt"] for line in (ROOT / "data/seed_prompts.jsonl").read_text().splitlines()]
    bpe.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    folder = tmp_path_factory.mktemp("bpe")
    fast.save_pretrained(folder)
    tiny_llama(len(fast), 1).save_pretrained(folder)  # a teacher model folder, as the manifest names it
    fast.folder = folder
    return fast


def steps_of(tokenizer: Any, text: str, k: int = 4, seed: int = 0, stop: bool = True) -> list[dict[str, Any]]:
    """The stored steps a teacher on `tokenizer` would write for `text` (its stop token last): the
    top-k of a tiny random model, teacher-forced, with the written token among them."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if stop else [])
    model = tiny_llama(len(tokenizer), 1, seed=seed)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([[tokenizer.bos_token_id or 0, *ids]])).logits[0, :-1] * 30, -1)
    out = []
    for j, tok in enumerate(ids):
        top = [tok, *[int(i) for i in logp[j].topk(k + 1).indices if int(i) != tok][: k - 1]]
        lps = [float(logp[j, i]) for i in top]
        out.append({"token": tokenizer.decode([tok]), "token_id": tok, "logprob": lps[0], "top_ids": top,
                    "top_tokens": None, "top_logprobs": lps})  # fmt: skip
    return out


def test_multibyte_characters_split_into_bytes_align_by_text(student, teacher) -> None:
    """The BPE writes each byte of é, €, 日 as its own token: those tokens add nothing to the text until
    the one completing the character, so both tokenisations end their tokens at character offsets,
    and every group spells the same text on both sides."""
    t_ids = teacher(TEXT, add_special_tokens=False)["input_ids"]
    s_ids = student(TEXT, add_special_tokens=False)["input_ids"]
    t_pieces, s_pieces = pieces_from_ids(teacher, t_ids), pieces_from_ids(student, s_ids)
    assert "".join(t_pieces) == TEXT == "".join(s_pieces)
    assert "" in t_pieces  # a byte token that completes no character
    t_ends, s_ends = char_ends(TEXT, t_pieces), char_ends(TEXT, s_pieces)
    assert t_ends[-1] == s_ends[-1] == len(TEXT)
    pairs = groups(s_ends, t_ends)
    assert [i for g, _ in pairs for i in g] == list(range(len(s_ids)))
    assert [i for _, g in pairs for i in g] == list(range(len(t_ids)))
    for s_group, t_group in pairs:
        assert "".join(s_pieces[i] for i in s_group) == "".join(t_pieces[i] for i in t_group)
    assert any(len(s) == len(t) == 1 for s, t in pairs) and any(len(s) + len(t) > 2 for s, t in pairs)

    # a server's token strings: each byte token a U+FFFD, its width found where the next string resumes;
    # the groups can only be coarser (a token " \ufffd" holds a space and part of "—"), never wrong
    strings = [teacher.decode([i]) for i in t_ids]
    assert any("\ufffd" in s for s in strings)
    coarse = groups(s_ends, char_ends(TEXT, strings))

    def boundaries(gs: list) -> set:
        return {(g[-1], h[-1]) for g, h in gs if g and h}

    assert boundaries(coarse) <= boundaries(pairs) and len(coarse) < len(pairs)
    assert [i for g, _ in coarse for i in g] == list(range(len(s_ids)))


def test_a_token_on_one_side_only_joins_its_neighbours_group() -> None:
    """A BOS (or any special token: no text) on the teacher's side, an end-of-turn and a template
    newline on the student's: the texts still align."""
    text = "Hello world"
    t_ends = char_ends(text, ["", "Hel", "lo", " world", ""])  # BOS first, EOS last
    s_ends = char_ends(text, ["Hello", " wor", "ld", "", "\n"])  # <|im_end|>, then the template's "\n"
    assert groups(s_ends, t_ends) == [([0], [0, 1, 2]), ([1, 2], [3]), ([3], [4]), ([4], [])]
    assert isinstance(char_ends(text, ["Hello", " there"]), str)  # not this text: a reason, not offsets
    # a server's strings for the two bytes of "é": the second takes the character once "!" resumes
    assert char_ends("café!", ["caf", "\ufffd", "\ufffd", "!"]) == [3, 3, 4, 5]


def test_identical_tokenizers_give_the_same_tokenizer_targets(student) -> None:
    """Teacher and student both SmolLM2: every group is one token to one token, the mapped top-k is
    the stored one, and the collator builds the very tensors the same-tokenizer path builds."""
    import datasets

    text = "The capital of France is Paris."
    steps = steps_of(student, text.replace("", ""), k=3)
    steps[-1]["token"] = student.decode([student.eos_token_id])  # <|im_end|>, as the engines store it
    prompt = [{"role": "user", "content": "What is the capital of France?"}]
    row = {"id": "r", "prompt": prompt, "completion": [{"role": "assistant", "content": text}], "logprobs": steps}
    ds = datasets.Dataset.from_list([row])
    cross, dropped, report = with_cross_topk(ds, student, student)
    assert not dropped and report.direct == report.tokens == len(steps) and report.uld_groups == 0
    same, _ = with_topk(ds, student)
    collator = KDCollator(pad_token_id=student.pad_token_id or 0, end_token_ids=(student.eos_token_id,))

    def batch(ds_: Any) -> dict[str, Any]:
        from trl import SFTConfig, SFTTrainer

        columns = [c for c in ds_.column_names if c in ("prompt", "completion", "input_ids", "completion_mask")]
        args = SFTConfig(output_dir="/tmp/unused", report_to=[], use_cpu=True, completion_only_loss=True)
        t = SFTTrainer(model=tiny_llama(len(student), 1), args=args, train_dataset=ds_.select_columns(columns),
                       processing_class=student)  # fmt: skip
        tokenised = t.train_dataset[0]
        return collator([{**tokenised, IDS: ds_[0][IDS], LOGPROBS: ds_[0][LOGPROBS]}])

    a, b = batch(same), batch(cross)
    for key in ("input_ids", "labels", "teacher_mask", "teacher_ids"):
        assert torch.equal(a[key], b[key]), key
    assert torch.allclose(a["teacher_logprobs"], b["teacher_logprobs"])
    assert cross[0][ULD_TOKENS] == []


def test_uld_compares_the_sorted_merged_probabilities() -> None:
    """One group of two student tokens: the student's merged distribution (softmax before the first
    token × the probability of the second) sorted, its top-k and the rest against the teacher's."""
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 7)
    ids = torch.tensor([[0, 1, 2, 3, 4]])
    teacher = [0.5, 0.2, 0.1]  # two merged top probabilities and the rest
    total, n = uld_loss(logits, ids, [[([2, 3], teacher)]])
    p_first = torch.softmax(logits[0, 1], -1)
    scale = torch.softmax(logits[0, 2], -1)[3]
    top = (p_first * scale).sort(descending=True).values[:2]
    expected = sum(abs(float(x) - t) for x, t in zip([*top, scale - top.sum()], teacher, strict=True))
    assert float(total) == pytest.approx(expected, rel=1e-5) and int(n) == 1


def test_cross_targets_map_alternatives_by_text_and_merge_split_groups(student, teacher) -> None:
    text = "Paris is lovely."
    steps = steps_of(teacher, text, k=4)
    t_ids = [s["token_id"] for s in steps]
    from sft.objectives.cross_tokenizer import alternative_texts

    s_ids = student(text, add_special_tokens=False)["input_ids"] + [student.convert_tokens_to_ids("<|im_end|>")]
    alts = [alternative_texts(teacher, t_ids, j, s["top_ids"]) for j, s in enumerate(steps)]
    s_ends = char_ends(text, pieces_from_ids(student, s_ids))
    out = cross_targets(
        s_ends, s_ids, pieces_from_ids(teacher, t_ids), steps, alts, text, StringMapper(student), s_ids[-1],
    )  # fmt: skip
    assert not isinstance(out, str)
    # the teacher's </s> (a special token) is the student's end of turn, 1:1 with the same probability
    assert out.ids[-1][0] == s_ids[-1] and out.logprobs[-1][0] == pytest.approx(steps[-1]["top_logprobs"][0])
    for j, (ids, lps) in enumerate(zip(out.ids, out.logprobs, strict=True)):
        if ids:  # a direct target: the written token's text is the student's token here
            assert s_ids[j] in ids and all(lp <= 0 for lp in lps)
    for tokens, probs in zip(out.uld_tokens, out.uld_probs, strict=True):
        assert len(tokens) >= 1 and probs[:-1] == sorted(probs[:-1], reverse=True) and probs[-1] >= 0
        assert sum(probs) <= 1 + 1e-6
    # the first group split differently: the teacher's first-token top-k times its later tokens' probabilities
    t_ends = char_ends(text, pieces_from_ids(teacher, t_ids))
    split = next(t for s, t in groups(s_ends, t_ends) if s and t and len(s) + len(t) > 2)
    later = sum(steps[t]["logprob"] for t in split[1:])
    merged = sorted((math.exp(lp + later) for lp in steps[split[0]]["top_logprobs"]), reverse=True)
    assert out.uld_probs[0][:-1] == pytest.approx(merged)
    assert out.uld_probs[0][-1] == pytest.approx(math.exp(later) - sum(merged), abs=1e-9)
    assert out.uld_tokens  # "lovely" is one SmolLM2 token and several BPE ones


def _curated_with_teacher(tmp_path: Path, teacher: Any, answers: dict[str, str]) -> Path:
    from synth.curate.stage import run_curate

    rows = []
    for q, a in answers.items():
        prompt = [{"role": "user", "content": q}]
        steps = [TokenLogprob(**{k: v for k, v in s.items()}) for s in steps_of(teacher, a)]
        completion = Completion(a, "stop", len(steps), 8, logprobs=steps)
        rows += make_rows(PromptItem(prompt_id_for(prompt, prompt), prompt, prompt, {}), [completion], TEACHER, "h")
    run = write_run(tmp_path / "run", [rows])
    manifest = {"logprobs": {"k": 4, "temperature": 1.0, "mode": "raw", "includes_stop_token": True,
                             "tokenizer": {"name": str(teacher.folder), "vocab_hash": vocab_hash(teacher),
                                           "vocab_size": len(teacher)}}}  # fmt: skip
    (run / "generations" / "_manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "c.yaml").write_text(json.dumps({"name": "t"}))
    run_curate(load_recipe(tmp_path / "c.yaml"), run)
    return run


def test_sft_run_distils_stored_soft_labels_of_another_tokenizer(tmp_path: Path, student, teacher, capsys) -> None:
    """`sft run` kd with stored top-k from the BPE teacher and a student on SmolLM2's tokenizer: the rows
    are aligned (one multi-byte answer among them), trained on, and the alignment is reported."""
    from sft.training.run import run_train
    from synth.errors import UserError

    answers = {"Name a colour.": "Blue is a nice colour.", "Say hello.": "Hello, my friend!",
               "Say it in Japanese.": "こんにちは, café!", "Two plus two?": "Two plus two is four."}  # fmt: skip
    run = _curated_with_teacher(tmp_path, teacher, answers)
    tiny_llama(len(student), 2, seed=1).save_pretrained(tmp_path / "student")
    student.save_pretrained(tmp_path / "student")
    train = {"objective": "kd", "max_steps": 2, "batch_size": 2, "max_length": 64, "lora": {"enabled": False}}
    body = {"name": "t", "model": {"path": str(tmp_path / "student")}, "train": train}
    (tmp_path / "k.yaml").write_text(json.dumps(body))
    s = run_train(load_recipe(tmp_path / "k.yaml"), run)
    assert s.rows_trained == 4
    said = capsys.readouterr().err
    assert "cross-tokenizer soft labels on 4 rows" in said and "split differently (ULD)" in said
    log = json.loads((s.out_dir / "log.json").read_text())
    assert log[0]["cross_tokenizer"] is True
    from sft.evaluation.run import _arm_settings

    # the student learnt its own tokens of the text, not the teacher's sampled ids
    assert _arm_settings(run, "kd-stored")["targets"].startswith("the completion text, tokenised again")
    kd = [e["kd_loss"] for e in log if "kd_loss" in e]
    assert len(kd) == 2 and all(math.isfinite(x) and x > 0 for x in kd)

    body["train"]["kd"] = {"cross_tokenizer": "off"}
    (tmp_path / "k.yaml").write_text(json.dumps(body))
    with pytest.raises(UserError, match="cross_tokenizer=auto"):
        run_train(load_recipe(tmp_path / "k.yaml"), run)


def test_rows_whose_tokens_do_not_spell_the_answer_are_left_out(student, teacher) -> None:
    import datasets

    good = "Blue is a nice colour."
    bad_steps = steps_of(teacher, "Red is a nice colour.")  # the stored tokens of another answer
    rows = [
        {"id": i, "prompt": [{"role": "user", "content": "Name a colour."}],
         "completion": [{"role": "assistant", "content": good}], "logprobs": steps}
        for i, steps in (("ok", steps_of(teacher, good)), ("bad", bad_steps))
    ]  # fmt: skip
    out, dropped, report = with_cross_topk(datasets.Dataset.from_list(rows), student, teacher)
    assert len(out) == 1 and report.rows == 1
    assert dropped[0][0] == 1 and "the teacher's tokens" in dropped[0][1] and "not the answer's text" in dropped[0][1]
    assert out[0][ULD_PROBS] and all(isinstance(x, list) for x in out[0][ULD_TOKENS])


def test_the_collator_marks_only_answer_tokens_with_a_mapped_target(student, teacher) -> None:
    """Tokens inside a ULD group have an empty top-k: no direct target there (a distribution of nothing
    but tail would teach the student to put its mass outside every token); the groups arrive at their
    label positions."""
    import datasets

    text = "Hello, my friend, lovely weather today!"
    row = {"id": "r", "prompt": [{"role": "user", "content": "Say hello."}],
           "completion": [{"role": "assistant", "content": text}], "logprobs": steps_of(teacher, text)}  # fmt: skip
    out, dropped, _ = with_cross_topk(datasets.Dataset.from_list([row]), student, teacher)
    assert not dropped
    r = out[0]
    labels = [-100 if m == 0 else t for t, m in zip(r["input_ids"], r["completion_mask"], strict=True)]
    end = student.convert_tokens_to_ids("<|im_end|>")
    batch = KDCollator(pad_token_id=0, end_token_ids=(end,))([{**r, "labels": labels}])
    start = r["completion_mask"].index(1)
    expected = [start + j for j, ids in enumerate(r[IDS]) if ids]
    assert batch["teacher_mask"][0].nonzero().flatten().tolist() == expected
    assert len(expected) < len(r[IDS])  # some tokens are in ULD groups
    assert batch["uld_spans"] == [
        [([start + j for j in g], p) for g, p in zip(r[ULD_TOKENS], r[ULD_PROBS], strict=True)]
    ]


def test_the_kd_loss_adds_the_uld_groups(student, teacher, tmp_path: Path) -> None:
    """KDTrainer's loss on a cross-tokenizer batch is the sparse KD over the mapped tokens plus the ULD
    groups' distance, both per label token."""
    import datasets
    from trl import SFTConfig

    from sft.objectives.kd import KDTrainer

    text = "Hello, my friend, lovely weather today!"
    row = {"id": "r", "prompt": [{"role": "user", "content": "Say hello."}],
           "completion": [{"role": "assistant", "content": text}], "logprobs": steps_of(teacher, text)}  # fmt: skip
    out, _, _ = with_cross_topk(datasets.Dataset.from_list([row]), student, teacher)
    model = tiny_llama(len(student), 1, seed=3)
    args = SFTConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, completion_only_loss=True, max_length=128)
    trainer = KDTrainer(model=model, args=args, train_dataset=out, processing_class=student)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    assert batch["uld_spans"][0]
    with torch.no_grad():
        both = trainer.compute_loss(model, dict(batch))
        sparse_only = trainer.compute_loss(model, {**batch, "uld_spans": [[]]})
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        uld, _ = uld_loss(logits, batch["input_ids"], batch["uld_spans"])
    tokens = int((batch["labels"][:, 1:] != -100).sum())
    assert float(both - sparse_only) == pytest.approx(float(uld) / tokens, rel=1e-4) and float(uld) > 0


def test_the_embedded_teachers_recorded_name_loads_its_tokenizer(student) -> None:
    """A manifest names the embedded teacher by its provenance id: `sft run` must load that tokenizer
    (else every row of the demo's teacher would lack its token texts)."""
    from synth.models import EMBEDDED_ID
    from synth.tokenizers import load_local

    loaded = load_local(EMBEDDED_ID)
    assert loaded is not None and vocab_hash(loaded) == vocab_hash(student)
