"""`sft run`: train the student on the curated set with TRL (SFT, or on-policy GKD), LoRA or full.

Defaults follow the hardware: bf16 only on a GPU that supports it, and gradient checkpointing off
(TRL turns it on by default; on a CPU it makes GKD steps ~3x slower by disabling the KV cache during
generation). Anything in `train.args` goes to TRL's config unchanged, so nothing TRL offers is hidden.
Output: runs/<name>/train/<objective>/ with checkpoints, `final/` (the model or LoRA adapter plus
tokenizer, loadable with plain transformers/PEFT), `log.json` and the resolved recipe.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.errors import UserError
from synth.io import atomic_write_text
from synth.models import resolve_model
from synth.recipe import Recipe, dump_resolved


@dataclass
class TrainSummary:
    objective: str
    out_dir: Path
    steps: int
    steps_run: int
    seconds: float
    train_loss: float
    rows: int
    first_loss: float | None
    last_loss: float | None

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / self.steps_run if self.steps_run else 0.0


def _kept(run_dir: Path) -> Any:
    import datasets
    import pyarrow.parquet as pq

    path = run_dir / "curated" / "kept.parquet"
    if not path.is_file():
        raise UserError(f"no curated set at {path}", "run `synth curate` with the same recipe first")
    if pq.ParquetFile(path).metadata.num_rows == 0:  # `datasets` cannot load an empty parquet file
        raise UserError(
            f"{path} holds no rows: curate rejected everything",
            "see curated/report.md for why, and loosen the curate checks",
        )
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    for col in ("prompt", "completion", "teacher_prompt"):
        if col not in ds.column_names:
            raise UserError(f"{path} has no column {col!r}; it was not written by `synth curate`")
    return ds


def _lora_config(recipe: Recipe, model: Any) -> Any:
    spec = recipe.train.lora
    if not spec.enabled:
        return None
    from peft import LoraConfig

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [m for m in spec.target_modules if m not in names]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise UserError(
            f"train.lora.target_modules: {', '.join(missing)} not in the model",
            f"this model's linear layers: {', '.join(linear)}",
        )
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        task_type="CAUSAL_LM",
    )


def _common_args(recipe: Recipe, out: Path) -> dict[str, Any]:
    import torch

    t = recipe.train
    gpu = torch.cuda.is_available()
    return {
        "output_dir": str(out),
        "per_device_train_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "learning_rate": t.learning_rate,
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps,
        "max_length": t.max_length,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": t.save_steps,
        "save_total_limit": 2,
        "report_to": [],
        "seed": t.seed,
        "bf16": bool(gpu and torch.cuda.is_bf16_supported()),
        "use_cpu": not gpu,
        # transformers 5 renamed gradient_checkpointing; TRL's configs still default the old name to True,
        # so setting the new one is what turns it off without a FutureWarning.
        "activation_checkpointing": False,
        "disable_tqdm": False,
        **t.args,
    }


def _config(cls: Any, args: dict[str, Any]) -> Any:
    """TRL's config from our defaults plus `train.args`; an unknown key is a user error, not a traceback."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise UserError(
            f"train.args: {', '.join(unknown)} not a field of TRL's {cls.__name__}",
            f"see `help(trl.{cls.__name__})` for the fields it takes",
        )
    try:
        return cls(**args)
    except ValueError as exc:
        raise UserError(f"train.args: TRL's {cls.__name__} refused the settings: {exc}") from None


def _teacher_model(recipe: Recipe, student_path: str, tokenizer: Any) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = recipe.train.teacher
    path = student_path if spec == "self" else resolve_model(spec)[0]
    if spec != "self":
        theirs = AutoTokenizer.from_pretrained(path)
        if len(theirs) != len(tokenizer):
            raise UserError(
                f"teacher {spec!r} has a vocabulary of {len(theirs)} tokens, the student "
                f"{recipe.model.path!r} {len(tokenizer)}: logit distillation needs the same tokenizer"
            )
    return AutoModelForCausalLM.from_pretrained(path)


def _model_card(trainer: Any, recipe: Recipe, final: Path) -> None:
    """TRL's README.md in the output folder, naming the base model.

    TRL reads the base model from `config._name_or_path`, which is a local cache folder for the
    embedded model, and then writes "fine-tuned version of [None]"; give it the Hub id for the card only,
    and the saved folder as the model its quick start loads.
    """
    from synth.publish.model import base_model_id

    config = trainer.model.config
    local, hub_id = config._name_or_path, trainer.hub_model_id
    config._name_or_path = base_model_id(recipe)
    trainer.hub_model_id = str(final)  # the card's quick start loads this folder, not "None"
    try:
        trainer.create_model_card(model_name=f"{recipe.name}-{recipe.train.objective}", tags=["distillery"])
    finally:
        config._name_or_path, trainer.hub_model_id = local, hub_id


def run_train(recipe: Recipe, run_dir: Path, resume: bool = False) -> TrainSummary:
    """Train `recipe.train.objective` on run_dir/curated/kept.parquet; see the module docstring."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t = recipe.train
    ds = _kept(run_dir)
    out = run_dir / "train" / t.objective
    out.mkdir(parents=True, exist_ok=True)
    dump_resolved(recipe, out / "recipe.resolved.yaml")
    student_path, _ = resolve_model(recipe.model.path)
    tokenizer = AutoTokenizer.from_pretrained(student_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(student_path)
    peft_config = _lora_config(recipe, model)
    args = _common_args(recipe, out)
    if t.objective == "sft":
        from trl import SFTConfig, SFTTrainer

        train = ds.select_columns(["prompt", "completion"])
        trainer: Any = SFTTrainer(
            model=model,
            args=_config(SFTConfig, args),
            train_dataset=train,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    else:
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.gkd import GKDConfig

        from sft.gkd import SelfDistillGKDTrainer, TeacherViewCollator

        train = ds.map(
            lambda r: {"messages": r["prompt"] + r["completion"]},
            remove_columns=[c for c in ds.column_names if c != "teacher_prompt"],
        )
        gkd_args = {
            "lmbda": t.lmbda,
            "beta": t.beta,
            "temperature": t.temperature,
            "max_new_tokens": t.max_new_tokens,
            "seq_kd": t.seq_kd,
            **args,
        }
        trainer = SelfDistillGKDTrainer(
            model=model,
            teacher_model=_teacher_model(recipe, student_path, tokenizer),
            args=_config(GKDConfig, gkd_args),
            train_dataset=train,
            processing_class=tokenizer,
            peft_config=peft_config,
            data_collator=TeacherViewCollator(tokenizer, t.max_length),
        )
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(out)) if resume else None
    start = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=last)
    except (MemoryError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "out of memory" not in str(exc).lower():
            raise
        raise UserError(
            f"out of memory at train.batch_size={t.batch_size}, max_length={t.max_length}",
            "lower train.batch_size (raise gradient_accumulation_steps to keep the effective "
            "batch), or set train.lora.enabled=true",
        ) from None
    seconds = time.perf_counter() - start
    final = out / "final"
    trainer.save_model(str(final))  # every process calls it (sharded states gather); only the main one writes
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    _model_card(trainer, recipe, final)
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(str(final))
        atomic_write_text(out / "log.json", json.dumps(trainer.state.log_history, indent=1) + "\n")
    steps_run = result.global_step - (int(Path(last).name.split("-")[-1]) if last else 0)
    return TrainSummary(
        t.objective,
        out,
        result.global_step,
        steps_run,
        seconds,
        result.training_loss,
        len(ds),
        losses[0] if losses else None,
        losses[-1] if losses else None,
    )
