"""`sft run` reliability: resuming after a save killed midway, rows that max_length cuts, models that
do not load, wrongly typed train.args, a device the machine lacks, and credentials in train.args.

Same tiny setup as tests/test_train.py: its four-row curated set, the embedded SmolLM2-135M, LoRA,
2-4 steps. Each CLI failure must be exit 2 and ONE stderr line naming the culprit, no traceback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from sft.training.checkpoints import checkpoint_problem, resume_checkpoint
from sft.training.lengths import length_report
from sft.training.run import run_train
from synth.errors import UserError
from synth.recipe import load_recipe
from tests.conftest import run_cli
from tests.test_train import ANSWERS, curated_run, recipe

SECRET = "hf_SECRET123"


def sft_run(
    tmp_path: Path, run: Path, *overrides: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`sft run` on tmp_path/r.yaml (written by `recipe`) as a user would type it."""
    return run_cli("sft", "run", str(tmp_path / "r.yaml"), *overrides, "--run-dir", str(run), cwd=tmp_path, env=env)


def one_error_line(proc: subprocess.CompletedProcess, *names: str) -> str:
    """Exit 2, no traceback, exactly one non-empty stderr line, naming each of `names`."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def lengths(smollm2_dir: Path) -> tuple[list[int], list[int]]:
    """Token counts of the curated rows as the student sees them: prompts alone, and prompt + answer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    prompts, full = [], []
    for q, a in ANSWERS.items():
        msgs = [{"role": "user", "content": q}]
        prompts.append(len(tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=True)["input_ids"]))
        answer = [{"role": "assistant", "content": a}]
        full.append(len(tok.apply_chat_template(msgs + answer, return_dict=True)["input_ids"]))
    return prompts, full


# -- resume after a kill -9 during a checkpoint save -------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a run trained 2 steps, a checkpoint after each (LoRA): copy it, never change it."""
    tmp = tmp_path_factory.mktemp("trained")
    run = curated_run(tmp)
    run_train(recipe(tmp, max_steps=2, save_steps=1), run)
    return tmp


def copy_trained(trained: Path, tmp_path: Path) -> Path:
    """The trained run under tmp_path/run (with r.yaml beside it), and its train/sft folder."""
    shutil.copytree(trained / "run", tmp_path / "run")
    return tmp_path / "run" / "train" / "sft"


def newer_copy(out: Path, step: int = 3) -> Path:
    """checkpoint-STEP: a complete copy of checkpoint-2 that claims step STEP, as a finished save would."""
    ck = shutil.copytree(out / "checkpoint-2", out / f"checkpoint-{step}")
    state = json.loads((ck / "trainer_state.json").read_text())
    (ck / "trainer_state.json").write_text(json.dumps({**state, "global_step": step}))
    return ck


def cut(path: Path, keep: float = 0.5) -> None:
    """What a kill -9 in the middle of writing `path` leaves: its first part."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


KILLED = {
    # what a save cut short at each point leaves, and the words naming it
    "trainer_state_half_written": (lambda ck: cut(ck / "trainer_state.json"), "trainer_state.json"),
    "trainer_state_not_written": (lambda ck: (ck / "trainer_state.json").unlink(), "trainer_state.json"),
    "copied_but_state_of_older_step": (
        lambda ck: shutil.copy(ck.parent / "checkpoint-2" / "trainer_state.json", ck / "trainer_state.json"),
        "step 2",
    ),
    "adapter_cut_short": (lambda ck: cut(ck / "adapter_model.safetensors"), "adapter_model.safetensors"),
    "adapter_empty": (lambda ck: (ck / "adapter_model.safetensors").write_bytes(b""), "adapter_model.safetensors"),
    "adapter_header_only": (lambda ck: cut(ck / "adapter_model.safetensors", 0.01), "adapter_model.safetensors"),
    "no_weights": (lambda ck: (ck / "adapter_model.safetensors").unlink(), "weights"),
    "adapter_config_missing": (lambda ck: (ck / "adapter_config.json").unlink(), "adapter_config.json"),
    "optimizer_not_written": (lambda ck: (ck / "optimizer.pt").unlink(), "optimizer.pt"),
    "optimizer_cut_short": (lambda ck: cut(ck / "optimizer.pt", 0.9), "optimizer.pt"),
    "scheduler_not_written": (lambda ck: (ck / "scheduler.pt").unlink(), "scheduler.pt"),
    "scheduler_empty": (lambda ck: (ck / "scheduler.pt").write_bytes(b""), "scheduler.pt"),
}


@pytest.mark.slow
@pytest.mark.parametrize("kill", list(KILLED))
def test_a_checkpoint_cut_short_is_skipped(trained: Path, tmp_path: Path, kill: str) -> None:
    out = copy_trained(trained, tmp_path)
    damage, words = KILLED[kill]
    assert resume_checkpoint(out) == (out / "checkpoint-2", [])
    ck = newer_copy(out)
    assert resume_checkpoint(out) == (ck, [])  # the undamaged copy is complete: the checks are not too strict
    damage(ck)
    chosen, skipped = resume_checkpoint(out)
    assert chosen == out / "checkpoint-2"
    assert [p for p, _ in skipped] == [ck] and words in skipped[0][1]


def test_full_model_and_sharded_checkpoints_are_checked(tmp_path: Path) -> None:
    """A full fine-tune saves model.safetensors (sharded with an index when large) and config.json."""
    import torch
    from safetensors.torch import save_file

    def checkpoint(step: int, sharded: bool = False) -> Path:
        ck = tmp_path / f"checkpoint-{step}"
        ck.mkdir()
        (ck / "config.json").write_text("{}")
        if sharded:
            save_file({"a": torch.ones(4)}, ck / "model-00001-of-00002.safetensors")
            save_file({"b": torch.ones(4)}, ck / "model-00002-of-00002.safetensors")
            index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
            (ck / "model.safetensors.index.json").write_text(json.dumps(index))
        else:
            save_file({"w": torch.ones(8, 8)}, ck / "model.safetensors")
        torch.save({"state": {}}, ck / "optimizer.pt")
        torch.save({"last_epoch": step}, ck / "scheduler.pt")
        (ck / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        return ck

    one, two, three = checkpoint(1), checkpoint(2, sharded=True), checkpoint(3)
    assert checkpoint_problem(one) is None and checkpoint_problem(two) is None
    cut(three / "model.safetensors", 0.9)
    assert "model.safetensors" in checkpoint_problem(three)
    (two / "model-00002-of-00002.safetensors").unlink()
    assert "model-00002-of-00002.safetensors" in checkpoint_problem(two)
    assert resume_checkpoint(tmp_path) == (one, [(three, checkpoint_problem(three)), (two, checkpoint_problem(two))])
    (one / "config.json").write_text('{"model_type": ')
    with pytest.raises(UserError, match=r"no complete checkpoint in .*; run without --resume to start over"):
        resume_checkpoint(tmp_path)


@pytest.mark.slow
def test_resume_after_kill_during_save_continues_from_the_last_complete_checkpoint(
    trained: Path, tmp_path: Path
) -> None:
    out = copy_trained(trained, tmp_path)
    ck = newer_copy(out)
    (ck / "optimizer.pt").unlink()  # killed after the weights, before the optimizer state
    recipe(tmp_path, max_steps=4, save_steps=1)
    proc = sft_run(tmp_path, tmp_path / "run", "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = [ln for ln in proc.stderr.splitlines() if "resuming from" in ln or "skipping" in ln]
    assert any("resuming from" in ln and ln.rstrip().endswith("checkpoint-2 (step 2)") for ln in said), said
    assert any("skipping incomplete checkpoint-3" in ln and "optimizer.pt" in ln for ln in said), said
    table = {
        ln.split("│")[1].strip(): ln.split("│")[2].strip() for ln in proc.stdout.splitlines() if ln.count("│") == 3
    }
    assert table["resumed_from"].endswith("checkpoint-2") and table["skipped (incomplete)"] == "checkpoint-3"
    assert table["steps (total)"] == "4" and table["steps this run"] == "2"
    log = json.loads((out / "log.json").read_text())
    assert log[-1]["step"] == 4 and log[0]["resumed_from"].endswith("checkpoint-2")
    assert log[0]["skipped_checkpoints"] == ["checkpoint-3: no optimizer.pt"]
    assert json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4
    assert checkpoint_problem(out / "checkpoint-3") is None  # the cut-short save was done again, whole


@pytest.mark.slow
def test_resume_with_no_complete_checkpoint_is_one_line_and_trains_nothing(tmp_path: Path) -> None:
    run = curated_run(tmp_path)
    recipe(tmp_path)
    out = run / "train" / "sft"
    line = one_error_line(sft_run(tmp_path, run, "--resume"), f"no complete checkpoint in {out}", "without --resume")
    assert "incomplete" not in line
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2, "log_hi')
    one_error_line(sft_run(tmp_path, run, "--resume"), "no complete checkpoint", "checkpoint-2", "trainer_state.json")
    assert not (out / "final").exists()


# -- max_length ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_rows_cut_by_max_length_are_counted(tmp_path: Path, smollm2_dir: Path) -> None:
    _, full = lengths(smollm2_dir)
    limit = sorted(full)[1]  # a row exactly this long fits; only the longer ones are cut
    longer = sum(n > limit for n in full)
    assert 0 < longer < len(full)
    run = curated_run(tmp_path)
    recipe(tmp_path, max_steps=2, max_length=limit)
    proc = sft_run(tmp_path, run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sentence = f"{longer} of {len(full)} rows longer than train.max_length={limit} were truncated/dropped"
    assert f"warning: {sentence} ({longer} truncated, 0 dropped)" in proc.stderr
    assert sentence in " ".join(proc.stdout.split())
    log = json.loads((run / "train" / "sft" / "log.json").read_text())
    assert log[0]["max_length"].startswith(sentence) and log[0]["rows_trained"] == len(full)


def test_every_prompt_longer_than_max_length_is_one_line(tmp_path: Path, smollm2_dir: Path) -> None:
    prompts, _ = lengths(smollm2_dir)
    run = curated_run(tmp_path)
    recipe(tmp_path, max_length=min(prompts) - 1)
    one_error_line(
        sft_run(tmp_path, run),
        f"train.max_length={min(prompts) - 1}",
        f"the shortest prompt has {min(prompts)}",
    )
    assert not (run / "train" / "sft" / "final").exists()


def test_length_report_counts_truncated_and_dropped_rows(tmp_path: Path, smollm2_dir: Path) -> None:
    """SFT keeps the first max_length tokens (a prompt filling them: dropped), GKD the last ones (an answer
    filling them: dropped, or TRL's collator fails mid-run)."""
    import datasets
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    prompts, full = lengths(smollm2_dir)
    answers = [f - p for p, f in zip(prompts, full, strict=True)]
    ds = datasets.load_dataset("parquet", data_files=str(curated_run(tmp_path) / "curated/kept.parquet"))["train"]
    order = {r["prompt"][0]["content"]: i for i, r in enumerate(ds)}
    at = [order[q] for q in ANSWERS]  # row index of each ANSWERS entry

    limit = sorted(prompts)[1]  # prompts at least this long leave no answer token
    rep, dropped = length_report(ds, tok, "sft", {"max_length": limit}, {})
    assert (rep.longer, rep.dropped, rep.rows) == (sum(n > limit for n in full), sum(p >= limit for p in prompts), 4)
    assert sorted(dropped) == sorted(at[i] for i, p in enumerate(prompts) if p >= limit)
    assert rep.sentence().startswith(f"{rep.longer} of 4 rows longer than train.max_length={limit} were")
    # keep_end, or a loss on every token: nothing is dropped
    assert length_report(ds, tok, "sft", {"max_length": limit, "truncation_mode": "keep_end"}, {})[0].dropped == 0
    assert length_report(ds, tok, "sft", {"max_length": limit, "completion_only_loss": False}, {})[0].dropped == 0
    assert length_report(ds, tok, "sft", {"max_length": max(full)}, {}) == (None, [])
    assert length_report(ds, tok, "sft", {"max_length": limit, "packing": True}, {}) == (None, [])

    limit = sorted(answers)[-2]
    rep, dropped = length_report(ds, tok, "gkd", {"max_length": limit}, {"max_length": limit})
    assert rep.field == "train.args.max_length" and rep.longer == 4
    assert sorted(dropped) == sorted(at[i] for i, a in enumerate(answers) if a >= limit)
    assert 0 < len(dropped) < 4
    with pytest.raises(UserError, match=rf"train.max_length={min(answers)} .*shortest has {min(answers)}"):
        length_report(ds, tok, "gkd", {"max_length": min(answers)}, {})
    with pytest.raises(UserError, match=rf"train.max_length={min(prompts)} .*shortest prompt has {min(prompts)}"):
        length_report(ds, tok, "sft", {"max_length": min(prompts)}, {})


@pytest.mark.slow
def test_gkd_trains_past_rows_whose_answer_fills_max_length(tmp_path: Path, smollm2_dir: Path) -> None:
    """TRL's GKD collator raises on such a row mid-run; they are left out and counted instead."""
    prompts, full = lengths(smollm2_dir)
    answers = [f - p for p, f in zip(prompts, full, strict=True)]
    limit = sorted(answers)[-1]  # the row with the longest answer cannot keep a prompt token
    run = curated_run(tmp_path)
    s = run_train(
        recipe(tmp_path, objective="gkd", lmbda=0.0, max_steps=2, batch_size=4, args={"max_length": limit}), run
    )
    dropped = sum(a >= limit for a in answers)
    assert s.steps == 2 and s.lengths.dropped == dropped and s.rows_trained == 4 - dropped


# -- models that do not load --------------------------------------------------------------------------


def not_a_model(tmp_path: Path, smollm2_dir: Path, kind: str) -> Path:
    if kind == "plain_file":
        path = tmp_path / "model.txt"
        path.write_text("hello")
        return path
    path = tmp_path / kind
    path.mkdir()
    if kind == "config_not_json":
        (path / "config.json").write_text("not json")
    elif kind == "config_without_model_type":
        (path / "config.json").write_text("{}")
    elif kind in ("no_weights", "weights_cut_short"):
        for f in smollm2_dir.iterdir():
            if f.name != "model.safetensors":
                shutil.copy(f, path / f.name)
        if kind == "weights_cut_short":
            (path / "model.safetensors").write_bytes((smollm2_dir / "model.safetensors").read_bytes()[:100_000])
    return path


KINDS = [
    "plain_file",
    "empty_folder",
    "config_not_json",
    "config_without_model_type",
    "no_weights",
    "weights_cut_short",
]


@pytest.mark.parametrize("kind", KINDS)
def test_student_that_does_not_load_names_model_path(tmp_path: Path, smollm2_dir: Path, kind: str) -> None:
    run = curated_run(tmp_path)
    bad = not_a_model(tmp_path, smollm2_dir, kind)
    with pytest.raises(UserError) as err:
        run_train(_with(tmp_path, model_path=bad), run)
    assert err.value.message.startswith(f"model.path={str(bad)!r}"), err.value.message


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["no_weights", "config_not_json"])
def test_teacher_that_does_not_load_names_train_teacher(tmp_path: Path, smollm2_dir: Path, kind: str) -> None:
    run = curated_run(tmp_path)
    bad = not_a_model(tmp_path, smollm2_dir, kind)
    with pytest.raises(UserError) as err:
        run_train(_with(tmp_path, teacher=str(bad), objective="gkd"), run)
    assert err.value.message.startswith(f"train.teacher={str(bad)!r}"), err.value.message


def _with(tmp_path: Path, model_path: Path | None = None, **train: object) -> object:
    """`recipe(tmp_path, ...)` with model.path set too."""
    recipe(tmp_path, max_steps=1, **train)
    body = json.loads((tmp_path / "r.yaml").read_text())
    if model_path is not None:
        body["model"] = {"path": str(model_path)}
    (tmp_path / "r.yaml").write_text(json.dumps(body))
    return load_recipe(tmp_path / "r.yaml")


def test_unloadable_model_and_teacher_from_the_cli(tmp_path: Path, smollm2_dir: Path) -> None:
    run = curated_run(tmp_path)
    recipe(tmp_path, max_steps=1)
    bad = not_a_model(tmp_path, smollm2_dir, "config_without_model_type")
    one_error_line(sft_run(tmp_path, run, f"model.path={bad}"), f"model.path='{bad}'")
    offline = {"HF_HUB_OFFLINE": "1"}
    one_error_line(sft_run(tmp_path, run, "model.path=no-such-org/no-such-model", env=offline), "model.path=")
    line = one_error_line(
        sft_run(tmp_path, run, "train.objective=gkd", "train.teacher=no-such-org/no-such-model", env=offline),
        "train.teacher='no-such-org/no-such-model'",
    )
    assert "not a loadable model" in line


# -- train.args ---------------------------------------------------------------------------------------


def test_wrongly_typed_train_arg_from_the_cli(tmp_path: Path) -> None:
    run = curated_run(tmp_path)
    recipe(tmp_path)
    one_error_line(sft_run(tmp_path, run, "train.args.weight_decay=abc"), "train.args.weight_decay", "'abc'", "float")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"weight_decay": "abc"}, ["train.args.weight_decay='abc'", "float"]),
        ({"warmup_steps": [1]}, ["train.args.warmup_steps=[1]", "float"]),
        ({"max_steps": 2.5}, ["train.args.max_steps=2.5", "int"]),
        ({"logging_steps": "often"}, ["train.args.logging_steps='often'", "float"]),
        ({"bf16": "maybe"}, ["train.args.bf16='maybe'", "bool"]),
        ({"optim": "no_such_optimizer"}, ["train.args.optim='no_such_optimizer'", "OptimizerNames"]),  # __post_init__
        ({"lr_scheduler_type": "sideways"}, ["train.args.lr_scheduler_type='sideways'"]),  # __post_init__ ValueError
        ({"warmup_steps": -1}, ["train.args.warmup_steps=-1"]),  # __post_init__ ValueError
    ],
)
@pytest.mark.parametrize("objective", ["sft", "gkd"])
def test_bad_train_args_name_the_key(tmp_path: Path, args: dict, words: list[str], objective: str) -> None:
    with pytest.raises(UserError) as err:
        run_train(recipe(tmp_path, objective=objective, args=args), tmp_path / "nowhere")
    for w in words:
        assert w in err.value.message, err.value.message
    assert "curated" not in err.value.message  # checked before the data, let alone a model, is read


@pytest.mark.slow
def test_numeric_strings_in_train_args_become_numbers(tmp_path: Path) -> None:
    """YAML reads `1e-3` as a string; TRL would keep it and fail in the optimizer."""
    run = curated_run(tmp_path)
    s = run_train(recipe(tmp_path, max_steps=1, args={"learning_rate": "1e-3", "weight_decay": "0.01"}), run)
    assert s.steps == 1


# -- runtime.device -----------------------------------------------------------------------------------


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_missing_cuda_device_is_one_line_before_anything_loads(tmp_path: Path) -> None:
    recipe(tmp_path)
    one_error_line(sft_run(tmp_path, tmp_path / "nowhere", "runtime.device=cuda"), "runtime.device=cuda")
    # checked first: before the curated set, let alone a model, is read
    body = json.loads((tmp_path / "r.yaml").read_text())
    for device in ("cuda", "mps"):
        (tmp_path / "d.yaml").write_text(json.dumps({**body, "runtime": {"device": device}}))
        with pytest.raises(UserError, match=f"runtime.device={device}"):
            run_train(load_recipe(tmp_path / "d.yaml"), tmp_path / "nowhere")


# -- credentials in train.args ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_token_in_train_args_reaches_no_file(tmp_path: Path) -> None:
    run = curated_run(tmp_path)
    nested = "hf_NESTED456"
    recipe(tmp_path, max_steps=2, save_steps=1, args={"model_init_kwargs": {"token": nested}})
    proc = sft_run(tmp_path, run, f"train.args.hub_token={SECRET}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    note = [ln for ln in proc.stderr.splitlines() if ln.startswith("note:")]
    assert len(note) == 1 and "train.args.hub_token" in note[0] and "train.args.model_init_kwargs.token" in note[0]
    assert "sft publish" in note[0]
    assert SECRET not in proc.stdout + proc.stderr and nested not in proc.stdout + proc.stderr
    out = run / "train" / "sft"
    files = [p for p in run.rglob("*") if p.is_file()]
    assert (out / "checkpoint-1" / "training_args.bin") in files and (out / "final" / "training_args.bin") in files
    assert (out / "README.md") in files and (out / "log.json") in files and (out / "recipe.resolved.yaml") in files
    for p in files:
        data = p.read_bytes()
        assert SECRET.encode() not in data and nested.encode() not in data, p


def test_push_to_hub_with_a_token_is_sent_to_sft_publish(tmp_path: Path) -> None:
    run = curated_run(tmp_path)
    recipe(tmp_path)
    proc = sft_run(tmp_path, run, f"train.args.hub_token={SECRET}", "train.args.push_to_hub=true")
    line = one_error_line(proc, "train.args.push_to_hub", "train.args.hub_token", "sft publish")
    assert SECRET not in line
    assert not (run / "train" / "sft" / "training_args.bin").exists()


@pytest.mark.slow
def test_a_diverging_run_saves_no_final_model_and_says_so(tmp_path: Path) -> None:
    """A learning rate that blows the weights up: training stops at the first loss that is not a finite
    number, exits with one line naming the step, and leaves no NaN model as final/ for eval or publish."""
    run = curated_run(tmp_path)
    with pytest.raises(UserError, match=r"training diverged at step \d+ \((loss|grad_norm) (nan|inf)") as err:
        run_train(recipe(tmp_path, learning_rate=1e6, max_steps=6, save_steps=1), run)
    assert "nothing was saved" in str(err.value) and "train.learning_rate" in err.value.hint
    assert not (run / "train" / "sft" / "final").exists()
    step = int(str(err.value).split("step ")[1].split(" ")[0])
    saved = [int(p.name.split("-")[1]) for p in (run / "train" / "sft").glob("checkpoint-*")]
    # stopped there: no checkpoint of the diverged step, nor of any step after it
    assert step < 6 and all(s < step for s in saved), (step, saved)


def test_kd_temperature_is_bounded(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"train\.kd\.temperature"):
        recipe(tmp_path, kd={"temperature": 1e6})
