"""KDTrainer with TRL's SFT data preparation: stored top-k alignment, training, the misaligned-row report.

The stored teacher top-k is made the way an engine scores a completion: the real SmolLM2 reads the chat
prompt and the generated tokens (the completion's tokens up to and including `<|im_end|>`), and its
top-k log-probs for each generated token are stored. Students are tiny random Llamas sharing its tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from sft.objectives.kd import KDTrainer, MisalignedRows
from sft.objectives.kd_loss import dense_kd_loss, sparse_kd_loss
from tests.conftest import tiny_llama

ANSWERS = {
    "Name a colour.": "Blue is a lovely colour.",
    "Say hello.": "Hello, my friend!",
    "What is two plus two?": "Two plus two is four.",
    "Name a fruit.": "An apple is a fruit.",
}
K = 8


@pytest.fixture(scope="module")
def smollm2(smollm2_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    model.eval()
    return tok, model


def stored_rows(tok: Any, teacher: Any, k: int = K) -> list[dict[str, Any]]:
    rows = []
    for q, a in ANSWERS.items():
        prompt, completion = [{"role": "user", "content": q}], [{"role": "assistant", "content": a}]
        prompt_ids = list(tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False))
        full = list(tok.apply_chat_template(prompt + completion, tokenize=True, return_dict=False))
        assert full[: len(prompt_ids)] == prompt_ids
        rest = full[len(prompt_ids) :]
        generated = rest[: rest.index(tok.convert_tokens_to_ids("<|im_end|>")) + 1]  # what the engine sampled
        with torch.no_grad():
            logits = teacher(torch.tensor([prompt_ids + generated])).logits[0]
        # logits at len(prompt)-1+j predict generated[j]
        lp = torch.log_softmax(logits[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(generated)], -1)
        top_lp, top_ids = lp.topk(k, dim=-1)
        top_lp = top_lp.half().float()  # stored as float16
        rows.append(
            {
                "prompt": prompt,
                "completion": completion,
                "teacher_topk_ids": top_ids.tolist(),
                "teacher_topk_logprobs": top_lp.tolist(),
            }
        )
    return rows


def tiny_student(tok: Any, seed: int = 0) -> Any:
    special = {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id, "bos_token_id": tok.bos_token_id}
    return tiny_llama(len(tok), seed=seed, **special)


def config(tmp_path: Path, **kw: Any) -> Any:
    from trl import SFTConfig

    base = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 2,
        "max_steps": 2,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "bf16": False,
        "max_length": 128,
        "activation_checkpointing": False,
        "disable_tqdm": True,
        "seed": 0,
    }
    return SFTConfig(**{**base, **kw})


def dataset(rows: list[dict[str, Any]]) -> Any:
    import datasets

    return datasets.Dataset.from_list(rows)


def text_rows() -> list[dict[str, Any]]:
    """The ANSWERS as prompt-completion rows, without stored labels."""
    return [
        {"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}]}
        for q, a in ANSWERS.items()
    ]


def twin_trainer(tmp_path: Path, tok: Any, rows: list[dict[str, Any]], **kw: Any) -> KDTrainer:
    """A tiny student and a teacher with the same weights (seed 1), learning rate 0."""
    return KDTrainer(
        model=tiny_student(tok, seed=1),
        teacher_model=tiny_student(tok, seed=1),
        args=config(tmp_path, learning_rate=0.0),
        train_dataset=dataset(rows),
        processing_class=tok,
        **kw,
    )


def batch_of_all(trainer: KDTrainer) -> dict[str, Any]:
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    return trainer._prepare_inputs(trainer.data_collator(rows))


def test_stored_topk_lands_on_the_tokens_it_predicts(tmp_path: Path, smollm2: tuple[Any, Any]) -> None:
    """With the teacher itself as the student, the KD loss through collator + compute_loss is ~0 (float16
    rounding only); one position off and it is large. Every stored top-1 is the label it sits on (SmolLM2
    ranks these simple answers' tokens first or near it, so check the collated ids against a shifted copy)."""
    tok, teacher = smollm2
    rows = stored_rows(tok, teacher)
    trainer = KDTrainer(model=teacher, args=config(tmp_path), train_dataset=dataset(rows), processing_class=tok)
    batch = batch_of_all(trainer)
    # per row: stored tokens = completion tokens up to <|im_end|>; the template's "\n" after it has none
    for i, row in enumerate(rows):
        completion = (batch["labels"][i] != -100).nonzero().flatten()
        stored = batch["teacher_mask"][i].nonzero().flatten()
        assert stored.tolist() == completion[: len(row["teacher_topk_ids"])].tolist()
        assert tok.decode(batch["input_ids"][i, completion[len(stored) :]]) == "\n"
    with torch.no_grad():
        logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    args = (batch["teacher_logprobs"][:, 1:], batch["teacher_mask"][:, 1:])
    aligned, n = sparse_kd_loss(logits[:, :-1], batch["teacher_ids"][:, 1:], *args)
    shifted, _ = sparse_kd_loss(logits[:, 1:], batch["teacher_ids"][:, 1:], *args)
    assert n == sum(len(r["teacher_topk_ids"]) for r in rows)
    assert aligned / n < 2e-3 and shifted / n > 1.0
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    assert loss < 2e-3


def test_labels_at_stored_only_put_the_loss_where_the_teacher_generated(
    tmp_path: Path, smollm2: tuple[Any, Any]
) -> None:
    """train.targets=stored: the labels (hence cross-entropy and the token count) are exactly the stored
    positions: the template's trailing newline after <|im_end|> gets no loss; without it, it does."""
    tok, teacher = smollm2
    rows = stored_rows(tok, teacher)
    common = {"args": config(tmp_path), "train_dataset": dataset(rows), "processing_class": tok, "alpha": 1.0}
    matched = batch_of_all(KDTrainer(model=tiny_student(tok), labels_at_stored_only=True, **common))
    labelled = matched["labels"] != -100
    assert torch.equal(labelled, matched["teacher_mask"])
    assert [int(n) for n in labelled.sum(1)] == [len(r["teacher_topk_ids"]) for r in rows]
    plain = batch_of_all(KDTrainer(model=tiny_student(tok), **common))
    extra = (plain["labels"] != -100) & ~plain["teacher_mask"]
    assert int(extra.sum()) == len(rows)  # one closing "\n" per row, labelled only without the option
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    assert all(int(plain["labels"][extra][j]) == newline[-1] for j in range(len(rows)))


def test_kd_training_moves_the_student_to_the_stored_distribution(tmp_path: Path, smollm2: tuple[Any, Any]) -> None:
    tok, teacher = smollm2
    rows = stored_rows(tok, teacher)
    student = tiny_student(tok)
    trainer = KDTrainer(
        model=student,
        args=config(tmp_path, max_steps=10, learning_rate=1e-2, num_train_epochs=20),
        train_dataset=dataset(rows),
        processing_class=tok,
        alpha=0.0,
        temperature=1.0,
    )

    def kl() -> float:
        batch = batch_of_all(trainer)
        with torch.no_grad():
            logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        total, n = sparse_kd_loss(
            logits[:, :-1], batch["teacher_ids"][:, 1:], batch["teacher_logprobs"][:, 1:], batch["teacher_mask"][:, 1:]
        )
        return (total / n).item()

    before = kl()
    trainer.train()
    after = kl()
    assert after < 0.85 * before, (before, after)  # 10 steps: ~7.0 -> ~5.3 nats
    logs = [e for e in trainer.state.log_history if "kd_loss" in e]
    assert len(logs) == 10 and all("ce_loss" in e for e in logs)
    assert logs[-1]["kd_loss"] < logs[0]["kd_loss"]
    # alpha = 0: the optimised loss is the KD term alone (per label token, which includes the template's "\n")
    assert logs[0]["loss"] < logs[0]["kd_loss"] < logs[0]["ce_loss"]


def test_misaligned_rows_are_reported_by_dataset_row(tmp_path: Path, smollm2: tuple[Any, Any]) -> None:
    tok, teacher = smollm2
    rows = stored_rows(tok, teacher)
    rows[1]["teacher_topk_ids"] = rows[1]["teacher_topk_ids"][:-2]  # lost the stop token's slot and one more
    rows[1]["teacher_topk_logprobs"] = rows[1]["teacher_topk_logprobs"][:-2]
    rows[2]["teacher_topk_ids"] = rows[2]["teacher_topk_ids"][:-1]  # no stop token's slot (cut at max_new_tokens)
    rows[2]["teacher_topk_logprobs"] = rows[2]["teacher_topk_logprobs"][:-1]
    rows[3]["teacher_topk_ids"] = [*rows[3]["teacher_topk_ids"], rows[3]["teacher_topk_ids"][-1]]  # one too many
    rows[3]["teacher_topk_logprobs"] = [*rows[3]["teacher_topk_logprobs"], rows[3]["teacher_topk_logprobs"][-1]]
    with pytest.raises(MisalignedRows) as info:
        KDTrainer(model=tiny_student(tok), args=config(tmp_path), train_dataset=dataset(rows), processing_class=tok)
    assert [m.row for m in info.value.rows] == [1, 3]
    assert "row 1:" in str(info.value) and "stored tokens" in str(info.value)
    # what `sft run` does: train on the rows that line up, and report the others
    trainer = KDTrainer(
        model=tiny_student(tok),
        args=config(tmp_path),
        train_dataset=dataset(rows),
        processing_class=tok,
        drop_misaligned=True,
    )
    assert [m.row for m in trainer.misaligned] == [1, 3] and trainer.train_dataset["kd_row"] == [0, 2]
    # an engine that does not report the stop token: the shortened row is the aligned one
    rows = stored_rows(tok, teacher)
    for r in rows[:3]:
        r["teacher_topk_ids"], r["teacher_topk_logprobs"] = r["teacher_topk_ids"][:-1], r["teacher_topk_logprobs"][:-1]
    with pytest.raises(MisalignedRows) as info:
        KDTrainer(
            model=tiny_student(tok),
            args=config(tmp_path),
            train_dataset=dataset(rows),
            processing_class=tok,
            stop_token_stored=False,
        )
    assert [m.row for m in info.value.rows] == [3]


def test_local_teacher_model_dense_and_teacher_view(tmp_path: Path, smollm2: tuple[Any, Any]) -> None:
    """source: model: a teacher with the student's weights gives kd_loss 0 on the same ids and > 0 when it
    reads a different prompt (teacher_prompt) before the same completion tokens."""
    tok, _ = smollm2
    rows = text_rows()
    student, twin = tiny_student(tok, seed=1), tiny_student(tok, seed=1)
    trainer = KDTrainer(
        model=student,
        teacher_model=twin,
        args=config(tmp_path, learning_rate=0.0),
        train_dataset=dataset(rows),
        processing_class=tok,
        temperature=2.0,
        alpha=0.5,
    )
    trainer.train()
    logs = [e for e in trainer.state.log_history if "kd_loss" in e]
    assert logs and all(e["kd_loss"] < 1e-6 and e["ce_loss"] > 1.0 for e in logs)

    system = {"role": "system", "content": "Always answer in French, and at length."}
    viewed = [{**r, "teacher_prompt": [system, *r["prompt"]]} for r in rows]
    trainer = twin_trainer(tmp_path, tok, viewed)
    trainer.train()
    logs = [e for e in trainer.state.log_history if "kd_loss" in e]
    assert logs and all(e["kd_loss"] > 1e-4 for e in logs)


def test_hidden_state_loss_matches_mapped_layers(tmp_path: Path, smollm2: tuple[Any, Any]) -> None:
    """train.kd.hidden_weight: zero when each student layer equals its mapped teacher layer, positive
    under a crossed map, falling with training; the map decides which layers are compared."""
    tok, _ = smollm2
    rows = text_rows()

    def train(student: Any, teacher: Any, layer_map: list[tuple[int, int]], lr: float, steps: int) -> list[float]:
        trainer = KDTrainer(
            model=student,
            teacher_model=teacher,
            args=config(tmp_path, learning_rate=lr, max_steps=steps),
            train_dataset=dataset(rows),
            processing_class=tok,
            hidden_weight=1.0,
            layer_map=layer_map,
        )
        trainer.train()
        return [e["hidden_loss"] for e in trainer.state.log_history if "hidden_loss" in e]

    assert max(train(tiny_student(tok, 1), tiny_student(tok, 1), [(0, 0), (1, 1)], 0.0, 2)) < 1e-10
    # the same twin under a crossed map compares layer 0 with layer 1: the map decides what is compared
    assert min(train(tiny_student(tok, 1), tiny_student(tok, 1), [(0, 1), (1, 0)], 0.0, 2)) > 1e-6
    losses = train(tiny_student(tok, 2), tiny_student(tok, 1), [(0, 0), (1, 1)], 1e-2, 8)
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="hidden_weight needs teacher_model"):
        KDTrainer(
            model=tiny_student(tok),
            args=config(tmp_path),
            train_dataset=dataset(stored_rows(tok, smollm2[1])),
            processing_class=tok,
            hidden_weight=1.0,
        )


def one_sgd_step(tmp_path: Path, tok: Any, rows: list[dict[str, Any]], batch: int, accumulate: int, **kw: Any) -> Any:
    """The student's weights after one optimiser step (plain SGD, no clipping: the update is the gradient)."""
    trainer = KDTrainer(
        model=tiny_student(tok),
        args=config(
            tmp_path,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulate,
            max_steps=1,
            optim="sgd",
            learning_rate=1.0,
            max_grad_norm=0.0,
            lr_scheduler_type="constant",
        ),
        train_dataset=dataset(rows),
        processing_class=tok,
        alpha=0.5,
        temperature=2.0,
    )
    if kw.get("no_token_count"):  # as for a model that takes no loss kwargs: num_items_in_batch is None
        trainer.model_accepts_loss_kwargs = False
    start = torch.nn.utils.parameters_to_vector(trainer.model.parameters()).detach().clone()
    trainer.train()
    return torch.nn.utils.parameters_to_vector(trainer.model.parameters()).detach() - start


def test_one_step_accumulated_over_four_equals_one_batch_four_times_as_large(
    tmp_path: Path, smollm2: tuple[Any, Any]
) -> None:
    """gradient_accumulation_steps: 4 at batch 1 makes the same update as batch 4 (every token weighs the
    same); with no token count from the Trainer, the fallback divides by the accumulated steps."""
    tok, teacher = smollm2
    rows = stored_rows(tok, teacher)  # 4 rows of different lengths
    big = one_sgd_step(tmp_path / "big", tok, rows, batch=4, accumulate=1)
    accumulated = one_sgd_step(tmp_path / "acc", tok, rows, batch=1, accumulate=4)
    assert big.abs().max() > 1e-4
    torch.testing.assert_close(accumulated, big, rtol=1e-4, atol=1e-7)

    same = [rows[0]] * 4  # equal lengths: the per-micro-batch mean is then the batch mean
    big = one_sgd_step(tmp_path / "big1", tok, same, batch=4, accumulate=1)
    fallback = one_sgd_step(tmp_path / "fb", tok, same, batch=1, accumulate=4, no_token_count=True)
    torch.testing.assert_close(fallback, big, rtol=1e-4, atol=1e-7)


def test_teacher_view_pairs_each_student_position_with_the_teachers_for_the_same_token(
    tmp_path: Path, smollm2: tuple[Any, Any]
) -> None:
    """The dense kd term with a teacher_prompt equals KD computed by hand on the teacher's own sequence
    (its prompt + the completion tokens), and is zero when the teacher's prompt is the student's."""
    tok, _ = smollm2
    system = {"role": "system", "content": "Always answer in French, and at length."}
    rows = text_rows()
    for teacher_prompt, expect_zero in ((lambda r: r["prompt"], True), (lambda r: [system, *r["prompt"]], False)):
        viewed = [{**r, "teacher_prompt": teacher_prompt(r)} for r in rows]
        trainer = twin_trainer(tmp_path, tok, viewed, alpha=0.0, temperature=2.0)
        batch = batch_of_all(trainer)
        with torch.no_grad():
            loss = trainer.compute_loss(trainer.model, batch).item()
            by_hand, tokens = 0.0, 0
            for i, row in enumerate(viewed):
                labels = batch["labels"][i]
                where = (labels != -100).nonzero().flatten()
                completion = batch["input_ids"][i, where]
                s_logits = trainer.model(input_ids=batch["input_ids"][i : i + 1]).logits[0, where - 1]
                t_prompt = tok.apply_chat_template(
                    row["teacher_prompt"], add_generation_prompt=True, tokenize=True, return_dict=False
                )
                t_ids = torch.tensor([[*t_prompt, *completion.tolist()]])
                t_logits = trainer.teacher_model(input_ids=t_ids).logits[0, len(t_prompt) - 1 : -1]
                total, n = dense_kd_loss(
                    s_logits[None], t_logits[None], torch.ones(1, len(where), dtype=torch.bool), 2.0
                )
                by_hand, tokens = by_hand + total.item(), tokens + n.item()
        assert loss == pytest.approx(by_hand / tokens, rel=1e-5, abs=1e-7)
        assert (loss < 1e-6) == expect_zero
