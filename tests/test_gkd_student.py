"""On-policy distillation of a smaller student from a separate teacher (sft/objectives/gkd.py): samples
from the decoding loop, the off- to on-policy schedule, the hidden-state loss, and `sft run` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sft.objectives.gkd import TeacherViewCollator, TeacherViewGKDTrainer, lmbda_at
from synth.recipe import load_recipe
from tests.conftest import tiny_llama
from tests.test_train import ANSWERS, SYSTEM, curated_run


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    tok.pad_token = tok.pad_token or tok.eos_token
    return tok


def rows() -> list[dict]:
    out = []
    for q, a in ANSWERS.items():
        prompt = [{"role": "user", "content": q}]
        out.append({"messages": [*prompt, {"role": "assistant", "content": a}], "teacher_prompt": [SYSTEM, *prompt]})
    return out


def trainer(tmp_path: Path, tokenizer, student, teacher, **kwargs) -> TeacherViewGKDTrainer:
    import datasets
    from trl.experimental.gkd import GKDConfig

    args = GKDConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        max_steps=kwargs.pop("max_steps", 4),
        learning_rate=1e-3,
        max_new_tokens=6,
        temperature=0.9,
        lmbda=kwargs.pop("lmbda", 1.0),
        beta=0.5,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        gradient_checkpointing=False,
        seed=0,
        logging_steps=1,
    )
    return TeacherViewGKDTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows()),
        processing_class=tokenizer,
        data_collator=TeacherViewCollator(tokenizer, 64),
        **kwargs,
    )


def models(tokenizer) -> tuple:
    """A 2-layer student and a 4-layer teacher over the same vocabulary (different weights)."""
    return tiny_llama(len(tokenizer), 2, seed=1), tiny_llama(len(tokenizer), 4, seed=2)


def test_lmbda_moves_from_start_to_end_over_the_ramp() -> None:
    assert [lmbda_at(s, 0.0, 1.0, 4) for s in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert lmbda_at(0, 0.2, 0.6, 0) == 0.6


def test_on_policy_samples_from_the_decoding_loop_have_trls_layout(tmp_path: Path, tokenizer) -> None:
    from transformers import GenerationConfig
    from trl.experimental.gkd import GKDTrainer

    student, teacher = models(tokenizer)
    t = trainer(tmp_path, tokenizer, student, teacher)
    batch = t.data_collator(t.train_dataset.to_list()[:3])
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    # greedy: the loop and model.generate must pick the same tokens, so the whole layout must agree;
    # an EOS id that the random model writes early makes rows of different lengths
    first = int(
        student(input_ids=batch["prompts"], attention_mask=batch["prompt_attention_mask"]).logits[1, -1].argmax()
    )
    config = GenerationConfig(
        max_new_tokens=7, do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=[eos, first]
    )
    ours = t.generate_on_policy_outputs(student, dict(batch), config)
    assert t.decoded_with == "decode loop"
    theirs = GKDTrainer.generate_on_policy_outputs(student, dict(batch), config)
    ours_mask, theirs_mask = ours[1].bool(), theirs[1].bool()
    assert (
        torch.equal(ours_mask, theirs_mask[:, : ours_mask.shape[1]]) and not theirs_mask[:, ours_mask.shape[1] :].any()
    )
    assert torch.equal(ours[0][ours_mask], theirs[0][:, : ours_mask.shape[1]][ours_mask])  # the same tokens
    assert torch.equal(ours[2], theirs[2][:, : ours[2].shape[1]])  # labels only on the completions
    assert (ours[2][1] != -100).sum() == 1  # row 1 stopped at once, its stop token learnt
    # sampling: reproducible under the trainer's seed, different from another seed
    sampled = GenerationConfig(
        max_new_tokens=7, do_sample=True, temperature=1.0, top_k=0, pad_token_id=0, eos_token_id=eos
    )
    torch.manual_seed(0)
    a = t.generate_on_policy_outputs(student, dict(batch), sampled)
    torch.manual_seed(0)
    b = t.generate_on_policy_outputs(student, dict(batch), sampled)
    torch.manual_seed(1)
    c = t.generate_on_policy_outputs(student, dict(batch), sampled)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


def test_the_schedule_sets_lmbda_at_every_step(tmp_path: Path, tokenizer, monkeypatch) -> None:
    from trl.experimental.gkd import GKDTrainer

    student, teacher = models(tokenizer)
    t = trainer(tmp_path, tokenizer, student, teacher, lmbda=1.0, lmbda_start=0.0, ramp_steps=4, max_steps=4)
    seen = []
    original = GKDTrainer.training_step

    def spy(self, model, inputs, num_items_in_batch=None):
        seen.append(self.lmbda)
        return original(self, model, inputs, num_items_in_batch)

    monkeypatch.setattr(GKDTrainer, "training_step", spy)
    t.train()
    assert seen == [0.0, 0.25, 0.5, 0.75]


def test_the_hidden_state_loss_adds_the_mapped_layers_squared_difference(tmp_path: Path, tokenizer) -> None:
    student, teacher = models(tokenizer)
    layer_map = [(0, 1), (1, 3)]
    plain = trainer(tmp_path, tokenizer, student, teacher)
    with_hidden = trainer(tmp_path, tokenizer, student, teacher, hidden_weight=0.5, layer_map=layer_map)
    batch = plain.data_collator(plain.train_dataset.to_list()[:2])
    with torch.no_grad():
        base = plain.compute_loss(student, dict(batch))
        total = with_hidden.compute_loss(student, dict(batch))
        t_ids, t_mask, pairs = plain.teacher_batch(batch)
        s_h = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        t_h = teacher(input_ids=t_ids, attention_mask=t_mask, output_hidden_states=True)
    rs, ps, rt, pt = (torch.tensor(x) for x in zip(*pairs, strict=True))
    mse = sum(
        (s_h.hidden_states[a + 1][rs, ps] - t_h.hidden_states[b + 1][rt, pt]).pow(2).mean(-1).sum() / 2
        for a, b in layer_map
    )
    assert float(total - base) == pytest.approx(0.5 * float(mse) / len(pairs), rel=1e-4)
    with pytest.raises(ValueError, match="hidden_weight needs a layer_map"):
        trainer(tmp_path, tokenizer, student, teacher, hidden_weight=0.5)


def test_sft_run_distils_a_smaller_student_on_policy_from_another_teacher(tmp_path: Path, tokenizer) -> None:
    """`sft run` with train.objective=gkd, a 2-layer student and a 4-layer teacher folder: the schedule
    and the on-policy steps run, and the student moves towards the teacher."""
    from sft.training.run import run_train

    student, teacher = models(tokenizer)
    for name, m in (("student", student), ("teacher", teacher)):
        m.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    run = curated_run(tmp_path)
    train = {"objective": "gkd", "teacher": str(tmp_path / "teacher"), "lmbda": 1.0, "lmbda_start": 0.0}
    train |= {"lmbda_ramp_steps": 2, "max_steps": 4, "batch_size": 2, "max_length": 64, "max_new_tokens": 6}
    train |= {"learning_rate": 1e-2, "lora": {"enabled": False}, "name": "small-gkd"}
    (tmp_path / "g.yaml").write_text(
        json.dumps({"name": "t", "model": {"path": str(tmp_path / "student")}, "train": train})
    )
    s = run_train(load_recipe(tmp_path / "g.yaml"), run)
    assert s.out_dir == run / "train/small-gkd" and s.steps == 4
    log = json.loads((s.out_dir / "log.json").read_text())
    losses = [e["loss"] for e in log if "loss" in e]
    assert len(losses) == 4 and all(x > 0 for x in losses)
