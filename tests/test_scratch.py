"""The from-scratch baseline (model.init: random) and named arms (train.name)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from synth.errors import UserError
from synth.recipe import load_recipe, objective_overrides
from tests.conftest import tiny_llama
from tests.test_train import curated_run


@pytest.fixture
def tiny_student(tmp_path: Path, smollm2_dir: Path) -> Path:
    """A saved tiny Llama with SmolLM2's tokenizer (and chat template)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    tiny_llama(len(tok), 2, seed=7).save_pretrained(tmp_path / "tiny")  # not seed 0: that is a random init too
    tok.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def write(tmp_path: Path, model: dict, **train: object) -> Path:
    base = {"batch_size": 2, "max_length": 64, "save_steps": 2, "learning_rate": 1e-3, "max_steps": 1}
    body = {"name": "t", "model": model, "train": {"lora": {"enabled": False}, **base, **train}}
    (tmp_path / "r.yaml").write_text(json.dumps(body))
    return tmp_path / "r.yaml"


def test_a_random_init_trains_into_its_own_arm_and_names_its_overrides(tmp_path: Path) -> None:
    r = load_recipe(write(tmp_path, {"init": "random"}, objective="kd", seeds=[0, 1]))
    assert r.train.runs() == [(0, "kd-stored-scratch/seed-0"), (1, "kd-stored-scratch/seed-1")]
    assert load_recipe(write(tmp_path, {"init": "random"}, name="small-scratch")).train.folder == "small-scratch"
    assert load_recipe(write(tmp_path, {}, name="small-kd")).train.folder == "small-kd"
    assert objective_overrides("sft-scratch") == "train.objective=sft model.init=random"
    assert objective_overrides("kd-model") == "train.objective=kd train.kd.source=model"
    body = json.loads(write(tmp_path, {"init": "random"}).read_text())
    body["train"]["lora"] = {"enabled": True}
    (tmp_path / "lora.yaml").write_text(json.dumps(body))
    with pytest.raises(UserError, match=r"model\.init=random needs train\.lora\.enabled=false"):
        load_recipe(tmp_path / "lora.yaml")
    with pytest.raises(UserError, match="'base_student' is the name of a model sft eval always shows"):
        load_recipe(write(tmp_path, {}, name="base_student"))


def test_random_weights_have_the_students_shape_and_differ_by_seed(tmp_path: Path, tiny_student: Path) -> None:
    from sft.training.run import _student_model

    def weights(seed: int, init: str) -> dict[str, torch.Tensor]:
        r = load_recipe(write(tmp_path, {"path": str(tiny_student), "init": init}, seed=seed))
        return _student_model(r, str(tiny_student)).state_dict()

    pretrained, a, a_again, b = (
        weights(0, "pretrained"),
        weights(0, "random"),
        weights(0, "random"),
        weights(1, "random"),
    )
    assert a.keys() == pretrained.keys() and all(a[k].shape == pretrained[k].shape for k in a)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(a[q], pretrained[q]) and not torch.equal(a[q], b[q])
    assert all(torch.equal(a[k], a_again[k]) for k in a)  # the seed decides the weights


def test_sft_run_from_scratch_trains_the_random_model(tmp_path: Path, tiny_student: Path) -> None:
    from transformers import AutoModelForCausalLM

    from sft.training.run import train_all

    run = curated_run(tmp_path)
    r = load_recipe(write(tmp_path, {"path": str(tiny_student), "init": "random"}, max_steps=2))
    (s,) = train_all(r, run)
    assert s.out_dir == run / "train/sft-scratch" and s.steps == 2
    trained = AutoModelForCausalLM.from_pretrained(s.out_dir / "final").state_dict()
    start = AutoModelForCausalLM.from_pretrained(tiny_student).state_dict()
    q = "model.layers.0.self_attn.q_proj.weight"
    # trained from another start: far from the pretrained weights, not a few steps away from them
    assert (trained[q] - start[q]).abs().max() > 0.05
    assert not (run / "train/sft").exists()


def test_eval_names_the_random_init_as_what_else_differed(tmp_path: Path) -> None:
    """Distilled against from scratch: the comparison says the start differed, not the arm's name."""
    import yaml

    from sft.evaluation.run import arm_differences

    for arm, init in (("kd-stored", "pretrained"), ("kd-stored-scratch", "random")):
        r = load_recipe(write(tmp_path, {"init": init}, objective="kd", max_steps=60))
        folder = tmp_path / "run/train" / arm
        (folder / "final").mkdir(parents=True)
        (folder / "recipe.resolved.yaml").write_text(yaml.safe_dump(r.model_dump(mode="json")))
        (folder / "log.json").write_text(json.dumps([{"step": 0, "rows_trained": 4}, {"step": 60, "loss": 1.0}]))
    diff = arm_differences(tmp_path / "run", ["kd-stored-scratch", "kd-stored"])
    assert diff == {"kd-stored-scratch - kd-stored": ["model.init: 'random' vs 'pretrained'"]}
