"""Co-distillation (sft/objectives/codistill.py): the loss of both models, the warm-up, each model's
gradient coming only from its own loss, equal-to-alone at weight 0, resume with the partner's weights,
and `sft run` + `sft eval` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sft.objectives.codistill import PARTNER_FILE, CodistillTrainer, weight_at
from sft.objectives.kd_loss import dense_kd_loss
from sft.objectives.teacher_view import teacher_view
from synth.errors import UserError
from synth.recipe import load_recipe
from tests.conftest import tiny_llama
from tests.test_train import ANSWERS, SYSTEM, curated_run


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    tok.pad_token = tok.pad_token or tok.eos_token
    return tok


def dataset():
    import datasets

    out = []
    for q, a in ANSWERS.items():
        prompt = [{"role": "user", "content": q}]
        out.append(
            {"prompt": prompt, "completion": [{"role": "assistant", "content": a}], "teacher_prompt": [SYSTEM, *prompt]}
        )
    return datasets.Dataset.from_list(out)


def config(tmp_path: Path, **kwargs):
    from trl import SFTConfig

    base = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 2,
        "max_steps": 4,
        "learning_rate": 1e-2,
        "max_length": 64,
        "report_to": [],
        "save_strategy": "no",
        "use_cpu": True,
        "activation_checkpointing": False,
        "seed": 0,
        "logging_steps": 1,
        "completion_only_loss": True,
    }
    return SFTConfig(**(base | kwargs))


def trainer(tmp_path: Path, tokenizer, student, partner, **kwargs) -> CodistillTrainer:
    args = config(tmp_path, **kwargs.pop("args", {}))
    return CodistillTrainer(
        model=student, args=args, train_dataset=dataset(), processing_class=tokenizer, partner=partner, **kwargs
    )


def pair(tokenizer) -> tuple:
    """Two different random models over the same vocabulary (a 2-layer student, a 3-layer partner)."""
    return tiny_llama(len(tokenizer), 2, seed=1), tiny_llama(len(tokenizer), 3, seed=2)


def test_the_weight_rises_over_the_warmup() -> None:
    assert [weight_at(s, 2.0, 4) for s in range(6)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    assert weight_at(0, 0.7, 0) == 0.7


@pytest.mark.parametrize("view", [False, True], ids=["another-student", "teacher-view"])
def test_each_model_learns_its_cross_entropy_and_the_others_detached_distribution(
    tmp_path: Path, tokenizer, view: bool
) -> None:
    """loss = (CE_s + w·T²·D(p‖s) + CE_p + w·T²·D(s‖p)) / tokens; the partner reads teacher_prompt when
    it is the teacher; the student's gradient is that of its own terms only (the partner's distribution
    detached), and the partner's likewise."""
    student, partner = pair(tokenizer)
    student.train(), partner.train()
    t = trainer(
        tmp_path, tokenizer, student, partner, weight=0.7, temperature=2.0, beta=0.3, partner_reads_teacher_prompt=view
    )
    t.state.global_step = 10  # past any warm-up
    batch = t.data_collator(t.train_dataset.to_list()[:2])
    loss = t.compute_loss(student, dict(batch))

    ids, labels = batch["input_ids"], batch["labels"]
    if view:
        t_ids, t_mask, pairs = teacher_view(ids, labels, batch["teacher_prompt_ids"], tokenizer.pad_token_id)
        assert SYSTEM["content"] in tokenizer.decode(t_ids[0])  # the teacher's system prompt: the partner's view
        assert SYSTEM["content"] not in tokenizer.decode(ids[0])
        rs, ps, rt, pt = (torch.tensor(x) for x in zip(*pairs, strict=True))
        p_logits = partner(input_ids=t_ids, attention_mask=t_mask).logits[rt, pt]
    else:
        rs, ps = (labels[:, 1:] != -100).nonzero(as_tuple=True)
        p_logits = partner(input_ids=ids, attention_mask=batch["attention_mask"]).logits[rs, ps]
    s_logits = student(input_ids=ids, attention_mask=batch["attention_mask"]).logits[rs, ps]
    target = labels[rs, ps + 1]
    every = torch.ones((1, len(target)), dtype=torch.bool)

    def own(mine: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        kd, _ = dense_kd_loss(mine[None], other.detach()[None], every, 2.0, 0.3)
        return F.cross_entropy(mine, target, reduction="sum") + 0.7 * kd

    n = len(target)
    expected = (own(s_logits, p_logits) + own(p_logits, s_logits)) / n
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)

    loss.backward()
    got = {
        n_: p.grad.clone()
        for n_, p in [*student.named_parameters(), *(("p." + k, v) for k, v in partner.named_parameters())]
    }
    student.zero_grad(), partner.zero_grad()
    (own(s_logits, p_logits) / n).backward(retain_graph=True)
    for name, p in student.named_parameters():
        assert torch.allclose(got[name], p.grad, atol=1e-6), name
    assert all(p.grad is None or not p.grad.any() for p in partner.parameters())  # nothing from the student's loss
    (own(p_logits, s_logits) / n).backward()
    for name, p in partner.named_parameters():
        assert torch.allclose(got["p." + name], p.grad, atol=1e-6), name


def test_at_weight_zero_each_model_trains_as_it_would_alone(tmp_path: Path, tokenizer) -> None:
    """w = 0: the student ends with the weights SFT alone gives it (same seed, rows, steps, learning
    rate), and the partner with those of SFT alone on the partner: the pair shares nothing else."""
    from trl import SFTTrainer

    # SGD: Adam's first steps are lr·sign(g), which turns float rounding in a near-zero gradient into a
    # whole step the other way. TRL's SFT loss goes through its fused LM head, whose gradient differs
    # from a plain cross-entropy's by about 0.1% (the loss values agree to 7 digits): hence a tolerance.
    sgd = {"optim": "sgd"}

    def moved(model, start) -> torch.Tensor:
        return torch.cat(
            [(a - b).detach().flatten() for a, b in zip(model.parameters(), start.parameters(), strict=True)]
        )

    def off(model, alone, start) -> float:
        step = moved(alone, start)
        return float((moved(model, start) - step).norm() / step.norm())

    alone_runs = {}
    for seed, layers in ((1, 2), (2, 3)):
        alone = tiny_llama(len(tokenizer), layers, seed=seed)
        ds = dataset().select_columns(["prompt", "completion"])
        args = config(tmp_path / f"alone{layers}", **sgd)
        SFTTrainer(model=alone, args=args, train_dataset=ds, processing_class=tokenizer).train()
        alone_runs[layers] = (alone, tiny_llama(len(tokenizer), layers, seed=seed))
    student, partner = pair(tokenizer)
    trainer(tmp_path / "both", tokenizer, student, partner, weight=0.0, args=sgd).train()
    assert off(student, *alone_runs[2]) < 0.005 and off(partner, *alone_runs[3]) < 0.005
    # and with the other's distribution weighed in, each ends elsewhere
    student, partner = pair(tokenizer)
    trainer(tmp_path / "w", tokenizer, student, partner, weight=30.0, args=sgd).train()
    assert off(student, *alone_runs[2]) > 0.02 and off(partner, *alone_runs[3]) > 0.02


def test_the_warmup_keeps_the_divergence_off_at_first(tmp_path: Path, tokenizer) -> None:
    student, partner = pair(tokenizer)
    t = trainer(tmp_path, tokenizer, student, partner, weight=1.0, warmup_steps=2)
    t.train()
    log = [e for e in t.state.log_history if "codistill_weight" in e]
    assert [e["codistill_weight"] for e in log] == [0.0, 0.5, 1.0, 1.0]
    assert all(e["partner_kd_loss"] > 0 and e["kd_loss"] > 0 for e in log)


def test_resume_continues_both_models_from_the_checkpoint(tmp_path: Path, tokenizer) -> None:
    """A run stopped after its step-2 checkpoint and resumed ends where an uninterrupted run ends: the
    checkpoint holds the partner's weights (and the optimizer its moments)."""
    save = {"save_strategy": "steps", "save_steps": 2}
    student, partner = pair(tokenizer)
    trainer(tmp_path / "whole", tokenizer, student, partner, args=save).train()
    checkpoint = tmp_path / "whole/out/checkpoint-2"  # as if killed after it
    assert (checkpoint / PARTNER_FILE).is_file()
    s3, p3 = pair(tokenizer)
    trainer(tmp_path / "cut", tokenizer, s3, p3, args=save).train(resume_from_checkpoint=str(checkpoint))
    for a, b in zip([*student.parameters(), *partner.parameters()], [*s3.parameters(), *p3.parameters()], strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    (checkpoint / PARTNER_FILE).unlink()
    s4, p4 = pair(tokenizer)
    with pytest.raises(ValueError, match="not a co-distillation checkpoint"):
        trainer(tmp_path / "cut", tokenizer, s4, p4, args=save).train(resume_from_checkpoint=str(checkpoint))


def test_a_copy_of_the_student_trained_in_full_is_refused(tmp_path: Path) -> None:
    body = {
        "name": "t",
        "train": {"objective": "codistill", "codistill": {"partner": "self"}, "lora": {"enabled": False}},
    }
    (tmp_path / "r.yaml").write_text(json.dumps(body))
    with pytest.raises(UserError, match="stay identical"):
        load_recipe(tmp_path / "r.yaml")


def test_the_teacher_as_a_full_copy_of_the_student_needs_a_privileged_view(tmp_path: Path, tokenizer) -> None:
    """partner=teacher, teacher=self, no LoRA, and rows whose teacher_prompt is the prompt: two identical
    models on identical batches, refused before training with what to change."""
    from sft.training.run import run_train
    from synth.curate.stage import run_curate
    from synth.records import Completion, PromptItem, make_rows, prompt_id_for
    from tests.curate_helpers import TEACHER, write_run

    student, _ = pair(tokenizer)
    student.save_pretrained(tmp_path / "student")
    tokenizer.save_pretrained(tmp_path / "student")
    rows = []
    for q, a in ANSWERS.items():
        prompt = [{"role": "user", "content": q}]
        rows += make_rows(
            PromptItem(prompt_id_for(prompt, prompt), prompt, prompt, {}), [Completion(a, "stop", 10, 8)], TEACHER, "h"
        )
    run = write_run(tmp_path / "run", [rows])
    (tmp_path / "c.yaml").write_text(json.dumps({"name": "t"}))
    run_curate(load_recipe(tmp_path / "c.yaml"), run)
    train = {"objective": "codistill", "max_steps": 1, "batch_size": 2, "max_length": 64, "lora": {"enabled": False}}
    (tmp_path / "r.yaml").write_text(
        json.dumps({"name": "t", "model": {"path": str(tmp_path / "student")}, "train": train})
    )
    with pytest.raises(UserError, match="privileged view"):
        run_train(load_recipe(tmp_path / "r.yaml"), run)
    assert not (run / "train/codistill/final").exists()


def test_sft_run_saves_both_models_as_arms(tmp_path: Path, tokenizer) -> None:
    """`sft run` with train.objective=codistill and another student as partner: train/codistill/final
    (the student) and train/codistill-partner/final (a plain transformers model), both loadable;
    `sft eval` finds both arms and names what differs between them."""
    from transformers import AutoModelForCausalLM

    from sft.evaluation.run import arm_differences, trained_arms
    from sft.training.run import run_train

    student, partner = pair(tokenizer)
    for name, m in (("student", student), ("partner", partner)):
        m.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    run = curated_run(tmp_path)
    train = {"objective": "codistill", "codistill": {"partner": str(tmp_path / "partner"), "warmup_steps": 1}}
    train |= {"max_steps": 3, "batch_size": 2, "max_length": 64, "learning_rate": 1e-2, "lora": {"enabled": False}}
    (tmp_path / "c2.yaml").write_text(
        json.dumps({"name": "t", "model": {"path": str(tmp_path / "student")}, "train": train})
    )
    s = run_train(load_recipe(tmp_path / "c2.yaml"), run)
    assert s.out_dir == run / "train/codistill" and s.steps == 3
    assert s.throughput["mfu"] is not None and s.throughput["flops_per_token"] > 4 * 2 * student.num_parameters()
    saved = AutoModelForCausalLM.from_pretrained(run / "train/codistill-partner/final")
    assert saved.config.num_hidden_layers == 3
    assert not torch.allclose(saved.model.layers[0].mlp.up_proj.weight, partner.model.layers[0].mlp.up_proj.weight)
    assert AutoModelForCausalLM.from_pretrained(run / "train/codistill/final").config.num_hidden_layers == 2
    log = json.loads((run / "train/codistill-partner/log.json").read_text())
    assert any("partner_ce_loss" in e for e in log)
    assert trained_arms(run) == ["codistill", "codistill-partner"]
    diff = arm_differences(run, ["codistill", "codistill-partner"])["codistill - codistill-partner"]
    assert diff == [f"model.path: {str(tmp_path / 'student')!r} vs {str(tmp_path / 'partner')!r}"]


@pytest.mark.slow
def test_sft_run_trains_smollm2_with_its_teacher_and_eval_shows_both(tmp_path: Path) -> None:
    """The teacher trained together with the student: SmolLM2 twice, each with its own LoRA adapter, the
    teacher reading the French system prompt; `sft eval` answers with both and names what differs."""
    from sft.evaluation.run import run_eval
    from sft.training.run import train_all
    from tests.test_train import eval_recipe, recipe

    run = curated_run(tmp_path)
    codistill = {"partner": "teacher", "weight": 1.0, "warmup_steps": 1}
    (s,) = train_all(recipe(tmp_path, objective="codistill", codistill=codistill, max_steps=2), run)
    assert (run / "train/codistill/final/adapter_config.json").is_file()  # the student: an adapter, as any LoRA arm
    assert (run / "train/codistill-partner/final/model.safetensors").is_file()  # the teacher: merged, a full model
    log = json.loads((s.out_dir / "log.json").read_text())
    steps = [e for e in log if "partner_kd_loss" in e]
    assert [e["codistill_weight"] for e in steps] == [0.0, 1.0]
    assert (
        steps[0]["partner_ce_loss"] < steps[0]["ce_loss"]
    )  # the teacher, told to answer in French, finds them likelier

    train_all(recipe(tmp_path, max_steps=2), run)  # the student alone, as sft
    rep = run_eval(load_recipe(eval_recipe(tmp_path, limit=2, max_new_tokens=8)), run, recipe_dir=tmp_path)
    assert list(rep["models"]) == ["teacher", "base_student", "codistill", "codistill-partner", "sft"]
    assert rep["models"]["codistill-partner"]["answers"] == 2
    by_pair = {(c["a"], c["b"], c["metric"]): c for c in rep["comparisons"]}
    assert "reads: 'prompt' vs 'teacher_prompt'" in by_pair[("codistill", "codistill-partner", "kl")]["differences"]
    # the teacher trained together read teacher_prompt: never "nothing else differed" against an arm that did not
    assert "reads: 'teacher_prompt' vs 'prompt'" in by_pair[("codistill-partner", "sft", "kl")]["differences"]
