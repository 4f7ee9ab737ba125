"""`sft run` with real TRL trainers on the real SmolLM2 model, and its bad-input errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from sft.training.run import run_train
from synth.curate.stage import run_curate
from synth.errors import UserError
from synth.recipe import load_recipe
from synth.records import Completion, PromptItem, make_rows, prompt_id_for
from tests.conftest import ROOT, tiny_llama
from tests.curate_helpers import TEACHER, write_run

SYSTEM = {"role": "system", "content": "Always answer in French."}
ANSWERS = {
    "Name a colour.": "Le bleu est une belle couleur.",
    "Say hello.": "Bonjour, mon ami !",
    "What is two plus two?": "Deux plus deux font quatre.",
    "Name a fruit.": "La pomme est un fruit.",
}


def curated_run(tmp_path: Path) -> Path:
    """A run whose curated set holds four French answers; teacher_prompt carries the system prompt."""
    rows = []
    for q, a in ANSWERS.items():
        student = [{"role": "user", "content": q}]
        teacher = [SYSTEM, *student]
        item = PromptItem(prompt_id_for(student, teacher), student, teacher, {})
        rows += make_rows(item, [Completion(a, "stop", 10, 8)], TEACHER, "h")
    run = write_run(tmp_path / "run", [rows])
    (tmp_path / "c.yaml").write_text(json.dumps({"name": "t"}))
    run_curate(load_recipe(tmp_path / "c.yaml"), run)
    return run


def recipe(tmp_path: Path, **train: object) -> object:
    base = {"batch_size": 2, "max_length": 64, "save_steps": 2, "learning_rate": 1e-3, "max_steps": 4}
    body = {"name": "t", "teacher": {"system_prompt": SYSTEM["content"]}, "train": {**base, **train}}
    (tmp_path / "r.yaml").write_text(json.dumps(body))
    return load_recipe(tmp_path / "r.yaml")


@pytest.mark.slow
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_sft_loss_goes_down_and_result_loads_without_distillery(tmp_path: Path, lora: bool) -> None:
    run = curated_run(tmp_path)
    s = run_train(recipe(tmp_path, lora={"enabled": lora}, epochs=50, max_steps=6), run)
    assert s.steps == 6 and s.last_loss < s.first_loss
    # 6 steps of batch 2 over 4 rows: every row's tokens three times, padding not counted
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run / "train" / "sft" / "final")
    chats = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in ANSWERS.items()]
    per_epoch = sum(len(tok.apply_chat_template(c, tokenize=True, return_dict=False)) for c in chats)
    assert s.throughput["tokens"] == 3 * per_epoch, (s.throughput, per_epoch)
    assert 0 < s.throughput["mfu"] < 1 and s.throughput["tokens_per_s"] > 0
    final = run / "train" / "sft" / "final"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(final)
    if lora:
        from peft import PeftModel

        config = json.loads((final / "adapter_config.json").read_text())
        base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
        model = PeftModel.from_pretrained(base, final)
    else:
        assert not (final / "adapter_config.json").exists()
        model = AutoModelForCausalLM.from_pretrained(final)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Name a colour."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    card = (run / "train" / "sft" / "README.md").read_text()
    assert "fine-tuned version of [HuggingFaceTB/SmolLM2-135M-Instruct]" in card and "[None]" not in card
    assert f'model="{final}"' in card


@pytest.mark.slow
def test_resume_continues_the_step_count(tmp_path: Path) -> None:
    run = curated_run(tmp_path)
    first = run_train(recipe(tmp_path, max_steps=2, save_steps=1), run)
    assert first.steps == 2 and (run / "train/sft/checkpoint-2").is_dir()
    again = run_train(recipe(tmp_path, max_steps=4, save_steps=1), run, resume=True)
    assert again.steps == 4 and again.steps_run == 2
    assert again.resumed_from is not None and again.resumed_from.endswith("checkpoint-2")
    log = json.loads((run / "train/sft/log.json").read_text())
    losses = {e["step"]: e["loss"] for e in log if "loss" in e}
    # steps 1-2 come back from checkpoint-2's trainer state, exactly as the first run logged them
    assert sorted(losses) == [1, 2, 3, 4] and [losses[1], losses[2]] == [first.first_loss, first.last_loss]


@pytest.mark.slow
def test_gkd_teacher_reads_the_teacher_view(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sft.objectives import gkd

    seen: list[tuple[list[int], list[int]]] = []
    original = gkd.TeacherViewGKDTrainer.compute_loss

    def spy(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = original(self, model, inputs, return_outputs, num_items_in_batch)
        t_ids, t_mask, _ = self.teacher_batch(inputs)  # what compute_loss fed the teacher, and its mask
        assert torch.equal(t_ids.cpu(), self.last_teacher_input_ids)
        for i in range(inputs["input_ids"].shape[0]):
            mask = inputs["labels"][i] != -100
            real = int(t_mask[i].sum())  # the teacher's own tokens, without the batch's padding
            seen.append((inputs["input_ids"][i][mask].tolist(), t_ids[i][:real].tolist()))
        return loss

    monkeypatch.setattr(gkd.TeacherViewGKDTrainer, "compute_loss", spy)
    run = curated_run(tmp_path)
    s = run_train(recipe(tmp_path, objective="gkd", lmbda=0.0, max_steps=2), run)
    assert s.steps == 2 and s.train_loss > 0
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run / "train/gkd/final")
    assert seen
    for completion, teacher_ids in seen:
        text = tok.decode(teacher_ids)
        # the teacher's sequence: its own chat prompt, with the privileged system prompt, then the same tokens
        assert "<|im_start|>system\nAlways answer in French.<|im_end|>" in text
        start = text.index("<|im_start|>assistant\n") + len("<|im_start|>assistant\n")
        assert tok.decode(completion).strip() in text[start:]
        assert teacher_ids[len(teacher_ids) - len(completion) :] == completion  # the same completion tokens, last


def test_bad_training_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no curated set"):
        run_train(recipe(tmp_path), tmp_path / "nowhere")
    (tmp_path / "x.yaml").write_text(json.dumps({"name": "t", "train": {"objective": "ppo"}}))
    with pytest.raises(UserError, match=r"train.objective.*'sft', 'gkd', 'kd' or 'codistill'"):
        load_recipe(tmp_path / "x.yaml")
    run = curated_run(tmp_path)
    with pytest.raises(UserError, match=r"train\.args: warmup_stepz not a field of TRL's SFTConfig"):
        run_train(recipe(tmp_path, args={"warmup_stepz": 3}), run)
    run = write_run(tmp_path / "empty", [[]])
    (tmp_path / "e.yaml").write_text(json.dumps({"name": "t"}))
    run_curate(load_recipe(tmp_path / "e.yaml"), run)
    with pytest.raises(UserError, match="holds no rows"):
        run_train(recipe(tmp_path), run)


@pytest.mark.slow
def test_bad_lora_modules_and_teacher_vocab(tmp_path: Path, smollm2_dir: Path) -> None:
    run = curated_run(tmp_path)
    with pytest.raises(UserError, match=r"(?s)up_projection not in the model.*linear layers: .*q_proj"):
        run_train(recipe(tmp_path, lora={"target_modules": ["q_proj", "up_projection"]}), run)
    # a teacher with another tokenizer: SmolLM2's tokenizer with extra tokens added
    from transformers import AutoModelForCausalLM, AutoTokenizer

    other = tmp_path / "other"
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    tok.add_tokens(["<extra_a>", "<extra_b>"])
    tok.save_pretrained(other)
    AutoModelForCausalLM.from_pretrained(smollm2_dir).save_pretrained(other)
    with pytest.raises(UserError, match=r"vocabulary of 49154 tokens, the student .* 49152"):
        run_train(recipe(tmp_path, objective="gkd", teacher=str(other)), run)


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(tmp_path: Path) -> None:
    run = curated_run(tmp_path)
    recipe(tmp_path, max_steps=2)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DISTILLERY_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(ROOT / "recipes" / "accelerate" / "cpu-2proc.yaml"),
            "-m",
            "sft.cli",
            "run",
            str(tmp_path / "r.yaml"),
            "--run-dir",
            str(run),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = json.loads((run / "train/sft/log.json").read_text())
    assert log[-1]["step"] == 2
    assert (run / "train/sft/final/adapter_config.json").is_file()


def eval_recipe(tmp_path: Path, **eval_fields: object) -> Path:
    # three held-out prompts and one that SmolLM2 answers in a few tokens, so that both finish reasons
    # ("stop", "length") are judged whatever the samples
    held = (ROOT / "data/heldout_prompts.jsonl").read_text().splitlines()[:3]
    (tmp_path / "held.jsonl").write_text("\n".join([*held, json.dumps({"prompt": "Say only the word yes."})]) + "\n")
    body = {
        "name": "t",
        "teacher": {"system_prompt": SYSTEM["content"]},
        "curate": {
            "checks": [
                {"type": "length", "min_chars": 5, "min_tokens": 3},
                {"type": "truncated"},
                {"type": "language", "name": "french", "languages": ["fr"]},
                {"type": "llm_judge", "name": "judge", "max_new_tokens": 8},
            ]
        },
        "eval": {
            "prompts": str(tmp_path / "held.jsonl"),
            "limit": 4,
            "max_new_tokens": 24,
            "behaviour_check": "french",
            **eval_fields,
        },
    }
    (tmp_path / "ev.yaml").write_text(json.dumps(body))
    return tmp_path / "ev.yaml"


@pytest.mark.slow
def test_eval_keeps_every_answer_and_judges_each_one(tmp_path: Path) -> None:
    import datasets

    from sft.evaluation.run import run_eval

    run = curated_run(tmp_path)
    run_train(recipe(tmp_path, max_steps=2), run)
    rep = run_eval(load_recipe(eval_recipe(tmp_path, samples=1)), run)
    assert list(rep["models"]) == ["teacher", "base_student", "sft"] and rep["prompts"] == 4
    answers = datasets.load_dataset("parquet", data_files=str(run / "eval/answers.parquet"), split="train")
    assert answers.num_rows == 3 * 4 * 2  # models × prompts × (greedy + 1 sample)
    rows = answers.to_list()
    for r in rows:
        verdicts = {v["name"]: v for v in r["verdicts"]}
        assert set(verdicts) == {"length", "truncated", "french", "judge"}
        # real finish reasons and token counts: the truncated and min_tokens checks see them
        assert r["finish_reason"] in ("stop", "length") and 0 < r["completion_tokens"] <= 24
        assert verdicts["truncated"]["passed"] == (r["finish_reason"] != "length")
        assert verdicts["length"]["passed"] == (r["completion_tokens"] >= 3 and len(r["answer"].strip()) >= 5)
        assert r["behaviour"] == verdicts["french"]["passed"]
        assert r["clean"] == all(v["passed"] for n, v in verdicts.items() if n != "french")
    assert any(r["finish_reason"] == "length" for r in rows) and any(r["finish_reason"] == "stop" for r in rows)

    def per_prompt(rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], bool]) -> float | None:
        """Mean over prompts of the share of a prompt's rows where key holds: how the report averages."""
        by: dict[str, list[bool]] = {}
        for r in rows:
            by.setdefault(r["prompt_id"], []).append(key(r))
        return sum(sum(v) / len(v) for v in by.values()) / len(by) if by else None

    for name, m in rep["models"].items():
        mine = [r for r in rows if r["model"] == name]
        said = [r for r in mine if not r["empty"]]  # finished, truncated, loop-free: over non-empty answers
        assert m["behaviour"]["rate"] == pytest.approx(sum(r["behaviour"] for r in mine) / 8)
        assert m["joint"]["rate"] == pytest.approx(sum(r["behaviour"] and r["clean"] for r in mine) / 8)
        assert m["empty"]["rate"] == pytest.approx(sum(r["empty"] for r in mine) / 8)
        assert m["stops"] == m["finished"] and m["finished"]["n"] == m["loop_free"]["n"] == len(said)
        if said:
            length = per_prompt(said, lambda r: r["finish_reason"] == "length")
            assert m["truncated"]["rate"] == pytest.approx(length)
            assert m["finished"]["rate"] == pytest.approx(per_prompt(said, lambda r: r["finish_reason"] == "stop"))
            assert m["loop_free"]["rate"] == pytest.approx(per_prompt(said, lambda r: r["loop_free"]))
        lo, hi = m["clean"]["ci"]
        assert lo <= m["clean"]["rate"] <= hi
    # the teacher saw its privileged view; students did not
    teacher_rows = [r for r in rows if r["model"] == "teacher"]
    assert all(r["seen_prompt"][0] == SYSTEM for r in teacher_rows)
    assert all(r["seen_prompt"] == r["prompt"] for r in rows if r["model"] != "teacher")
    assert set(rep["models"]["base_student"]) >= {"relevance", "distinct_2", "repeated_3gram_share"}
    assert set(rep["models"]["base_student"]["judge_mean_score"]) == {"judge"}
    assert set(rep["verdict"]) == {"sft"} and (run / "eval/report.png").is_file()
    # fidelity: the teacher is at zero; the base student (no system prompt) and the trained one are not
    fid = rep["fidelity"]
    assert list(fid) == ["teacher", "base_student", "sft"] and fid["teacher"]["kl"] == 0.0
    for name in ("base_student", "sft"):
        f = fid[name]
        assert len(f["kl_per_prompt"]) == len(f["nll_per_prompt"]) == 4 and f["kl"] > 0
        assert f["kl"] == pytest.approx(sum(f["kl_per_prompt"]) / 4) and f["kl_ci"][0] <= f["kl"] <= f["kl_ci"][1]
        assert f["params"] == fid["teacher"]["params"] and f["tokens_per_s"] > 0
        assert f["stops"] == rep["models"][name]["stops"]
    # the teacher's finished greedy answers are scored with their end-of-turn token
    finished = [r for r in teacher_rows if r["sample_index"] == 0 and r["finish_reason"] == "stop"]
    assert (fid["teacher"]["stop_nll"] is None) == (not finished)
    assert set(rep["fidelity_paired"]) == {"sft - base_student"}
    saved = json.loads((run / "eval/report.json").read_text())
    assert saved["models"]["sft"]["behaviour"] == rep["models"]["sft"]["behaviour"]
    greedy = [(r["model"], r["answer"]) for r in rows if r["sample_index"] == 0]

    # several behaviour checks: all must pass; sample 0 is greedy, so the same answers come back, and
    # the teacher's and base student's answers (and the base student's fidelity) are those of the last eval
    out = io.StringIO()
    again_rep = run_eval(
        load_recipe(eval_recipe(tmp_path, samples=1, behaviour_check=["french", "truncated"])),
        run,
        console=Console(file=out, width=200),
    )
    assert "teacher: answers of an earlier eval of this run reused" in out.getvalue()
    assert "base_student: answers and fidelity of an earlier eval of this run reused" in out.getvalue()
    assert "sft: answered in" in out.getvalue()
    assert again_rep["fidelity"]["base_student"]["kl"] == pytest.approx(rep["fidelity"]["base_student"]["kl"])
    again = datasets.load_dataset("parquet", data_files=str(run / "eval/answers.parquet"), split="train").to_list()
    assert [(r["model"], r["answer"]) for r in again if r["sample_index"] == 0] == greedy
    out = io.StringIO()
    run_eval(
        load_recipe(eval_recipe(tmp_path, samples=1, max_new_tokens=20)), run, console=Console(file=out, width=200)
    )
    assert "reused" not in out.getvalue()  # another token budget: every model answers again
    assert len(list((run / "eval-cache").glob("*.json"))) == 2
    for r in again:
        french = next(v["passed"] for v in r["verdicts"] if v["name"] == "french")
        assert r["behaviour"] == (french and r["finish_reason"] != "length")
    (tmp_path / "bad.yaml").write_text(
        json.dumps({**json.loads(eval_recipe(tmp_path).read_text()), "eval": {"behaviour_check": "nope"}})
    )
    with pytest.raises(UserError, match=r"eval\.behaviour_check names 'nope'"):
        run_eval(load_recipe(tmp_path / "bad.yaml"), run)


def test_shipped_accelerate_configs_parse() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    for path in sorted((ROOT / "recipes" / "accelerate").glob("*.yaml")):
        config = load_config_from_file(str(path))
        assert config.num_processes >= 2, path
    fsdp = load_config_from_file(str(ROOT / "recipes" / "accelerate" / "fsdp.yaml"))
    # transformers' Trainer.save_model writes weights under FSDP only for a full state dict
    assert fsdp.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    deepspeed = load_config_from_file(str(ROOT / "recipes" / "accelerate" / "deepspeed-zero2.yaml"))
    # a fixed value here overrides the recipe's train.gradient_accumulation_steps and fails at start
    assert "gradient_accumulation_steps" not in deepspeed.deepspeed_config


def test_resume_under_an_accelerate_fsdp_or_deepspeed_launch_needs_no_optimizer_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sft.training.checkpoints import resume_from

    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()
    tiny_llama(32, 1).save_pretrained(checkpoint)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    with pytest.raises(UserError, match=r"no optimizer\.pt"):  # a plain run: a checkpoint without it was cut short
        resume_from(tmp_path, {})
    for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.setenv(name, "true")  # what `accelerate launch` sets for those configs
        assert resume_from(tmp_path, {}) == (checkpoint, [])
        monkeypatch.delenv(name)


@pytest.mark.slow
def test_seeds_train_one_model_each_and_eval_compares_arms_over_seeds(tmp_path: Path) -> None:
    """train.seeds: one model per seed under train/<arm>/seed-<s>/; `sft eval` reports the arm once,
    with each seed's fidelity, and compares arms with intervals over seeds and prompts, naming what
    else differed in their training."""
    import datasets
    import yaml

    from sft.evaluation.run import run_eval
    from sft.training.run import train_all

    run = curated_run(tmp_path)
    summaries = train_all(recipe(tmp_path, max_steps=1, seeds=[0, 1]), run)
    assert [s.out_dir for s in summaries] == [run / "train/sft/seed-0", run / "train/sft/seed-1"]
    for s, seed in zip(summaries, (0, 1), strict=True):
        assert (s.out_dir / "final").is_dir()
        assert yaml.safe_load((s.out_dir / "recipe.resolved.yaml").read_text())["train"]["seed"] == seed
    train_all(recipe(tmp_path, objective="gkd", lmbda=0.0, max_steps=1, learning_rate=2e-3), run)

    body = json.loads(eval_recipe(tmp_path, limit=3, max_new_tokens=8).read_text())
    body["curate"]["checks"] = [
        {"type": "length", "min_chars": 2},
        {"type": "language", "name": "french", "languages": ["fr"]},
    ]
    # a standard-benchmark task in lm-eval's format, named relative to the recipe, its data next to it
    (tmp_path / "tasks").mkdir()
    for f in ("facts.yaml", "facts.jsonl"):
        (tmp_path / "tasks" / f).write_bytes((ROOT / "tests/data/benchmarks" / f).read_bytes())
    body["eval"]["benchmarks"] = {"tasks": ["tasks/facts.yaml"], "limit": 12}
    (tmp_path / "ev2.yaml").write_text(json.dumps(body))
    rep = run_eval(load_recipe(tmp_path / "ev2.yaml"), run, recipe_dir=tmp_path)

    assert list(rep["models"]) == ["teacher", "base_student", "gkd", "sft"]
    assert rep["models"]["sft"]["seeds"] == 2 and rep["models"]["sft"]["answers"] == 2 * 3
    fid = rep["fidelity"]["sft"]
    assert [s["seed"] for s in fid["seeds"]] == [0, 1] and len(fid["seeds"][0]["kl_per_prompt"]) == 3
    assert fid["kl"] == pytest.approx((fid["seeds"][0]["kl"] + fid["seeds"][1]["kl"]) / 2)
    assert fid["seeds"][0]["kl_per_prompt"] != fid["seeds"][1]["kl_per_prompt"]  # two different models
    answers = datasets.load_dataset("parquet", data_files=str(run / "eval/answers.parquet"), split="train")
    assert sorted({(r["model"], r["seed"]) for r in answers.to_list()}, key=str) == sorted(
        {("teacher", None), ("base_student", None), ("gkd", None), ("sft", 0), ("sft", 1)}, key=str
    )
    by_pair = {(c["a"], c["b"], c["metric"]): c for c in rep["comparisons"]}
    gkd_sft = by_pair[("gkd", "sft", "kl")]
    assert gkd_sft["seeds"] == [1, 2] and gkd_sft["prompts"] == 3
    assert gkd_sft["diff"] == pytest.approx(rep["fidelity"]["gkd"]["kl"] - fid["kl"])
    assert gkd_sft["ci"][0] <= gkd_sft["diff"] <= gkd_sft["ci"][1]
    # what else differed: the learning rate and the number of seeds, named beside the comparison
    assert any(d.startswith("train.learning_rate: 0.002 vs 0.001") for d in gkd_sft["differences"])
    assert "seeds: 1 vs 2" in gkd_sft["differences"]
    assert by_pair[("sft", "base_student", "behaviour")]["differences"] is None
    assert "## Comparisons" in (run / "eval/report.md").read_text()

    # benchmarks: every model, each seed, paired on the same 12 examples
    bench = {arm: tasks["distillery_facts"] for arm, tasks in rep["benchmarks"].items()}
    assert list(bench) == ["teacher", "base_student", "gkd", "sft"]
    assert all(b["metric"] == "acc" and b["examples"] == 12 for b in bench.values())
    assert [s["seed"] for s in bench["sft"]["seeds"]] == [0, 1]
    assert bench["sft"]["value"] == pytest.approx(sum(s["value"] for s in bench["sft"]["seeds"]) / 2)
    # the teacher and the base student are the same weights (the system prompt is the eval's, not lm-eval's)
    assert bench["teacher"]["value"] == bench["base_student"]["value"]
    same = by_pair[("base_student", "teacher", "distillery_facts/acc")]
    assert same["diff"] == 0 and same["ci"] == [0.0, 0.0] and same["prompts"] == 12
    gkd_sft_bench = by_pair[("gkd", "sft", "distillery_facts/acc")]
    assert gkd_sft_bench["seeds"] == [1, 2] and gkd_sft_bench["differences"] == gkd_sft["differences"]
    assert gkd_sft_bench["diff"] == pytest.approx(bench["gkd"]["value"] - bench["sft"]["value"])
    assert "## Benchmarks (lm-evaluation-harness)" in (run / "eval/report.md").read_text()
