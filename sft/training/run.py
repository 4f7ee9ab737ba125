"""`sft run`: train the student on the curated set with TRL (SFT, on-policy GKD, or soft-label KD), LoRA or full.

Defaults follow the hardware: bf16 autocast on a GPU that supports it or a CPU with native bf16
instructions (synth.runtime.bf16_is_fast), and gradient checkpointing off
(TRL turns it on by default; on a CPU it makes GKD steps ~3x slower by disabling the KV cache during
generation). Anything in `train.args` goes to TRL's config, checked against the types of TRL's fields,
so nothing TRL offers is hidden.
Output: runs/<name>/train/<objective>/ with checkpoints, `final/` (the model or LoRA adapter plus
tokenizer, loadable with plain transformers/PEFT), `log.json` and the resolved recipe.

What can go wrong is said before any long work: a device this machine lacks, a model that does not
load, a wrongly typed `train.args` value, rows that `train.max_length` cuts or drops, and, with
`--resume`, checkpoints that a killed save left incomplete (skipped, by name). Credentials in
`train.args` never reach TRL: it would pickle them into every checkpoint's training_args.bin.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sft.training.args import config as trl_config
from sft.training.args import user_args as checked_user_args
from sft.training.checkpoints import resume_from
from sft.training.lengths import LengthReport, length_report
from synth.errors import UserError, first_line
from synth.io import atomic_write_text, read_json, read_parquet, staging_folder, swap_in_folder
from synth.models import loading_model, resolve_model
from synth.recipe import Recipe, dump_resolved
from synth.records import KEPT_SCHEMA


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
    resumed_from: str | None = None  # the checkpoint folder training continued from
    skipped_checkpoints: list[str] = field(default_factory=list)  # newer ones a killed save left incomplete
    lengths: LengthReport | None = None  # rows that train.max_length truncated or dropped
    rows_trained: int = 0  # rows the trainer kept: kd also leaves out rows without usable or aligned labels
    throughput: dict[str, Any] = field(default_factory=dict)  # tokens, tokens/s, MFU: see `_throughput`

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / self.steps_run if self.steps_run else 0.0


def _main_process() -> bool:
    """Whether this is the process that speaks (rank 0 under `accelerate launch`)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def _say(text: str) -> None:
    """One line on stderr, from the main process only."""
    if _main_process():
        print(text, file=sys.stderr, flush=True)


def _kept(run_dir: Path) -> Any:
    """The curated set as a memory-mapped `datasets.Dataset`; a damaged, foreign or empty file is a
    UserError naming it (checked with pyarrow first: `datasets` would fail with a traceback)."""
    import datasets

    path = run_dir / "curated" / "kept.parquet"
    if not path.is_file():
        raise UserError(f"no curated set at {path}", "run `synth curate` with the same recipe first")
    hint = "run `synth curate` again to rewrite it"
    columns = ["prompt", "completion", "teacher_prompt"]
    rows = read_parquet(path, "the curated set", columns, hint, schema=KEPT_SCHEMA).num_rows
    if rows == 0:  # `datasets` cannot load an empty parquet file
        raise UserError(
            f"{path} holds no rows: curate rejected everything",
            "see curated/report.md for why (`synth probe` shows what each check keeps in minutes)",
        )
    return datasets.load_dataset("parquet", data_files=str(path), split="train")


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


def _common_args(recipe: Recipe, out: Path, device: str, user_args: dict[str, Any]) -> dict[str, Any]:
    from synth.runtime import bf16_is_fast

    t = recipe.train
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
        # bf16 autocast where the hardware computes it fast: a GPU that supports it, or a CPU with
        # AVX-512 BF16 / AMX (the weights and optimizer stay float32; train.args.bf16 overrides)
        "bf16": bf16_is_fast(device),
        "use_cpu": device == "cpu",
        # transformers 5 renamed gradient_checkpointing; TRL's configs still default the old name to True,
        # so setting the new one is what turns it off without a FutureWarning.
        "activation_checkpointing": False,
        "disable_tqdm": False,
        **user_args,
    }


# -- models -----------------------------------------------------------------------------------------


def _student(recipe: Recipe) -> tuple[str, Any]:
    """The student's path and tokenizer (the weights load later, after the cheap checks)."""
    from transformers import AutoTokenizer

    with loading_model("model.path", recipe.model.path):
        path, _ = resolve_model(recipe.model.path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None and not recipe.train.args.get("chat_template_path"):
        raise UserError(
            f"model.path={recipe.model.path!r}: its tokenizer has no chat template, and the curated rows are chats",
            "use a chat (instruct) model, or give TRL one with train.args.chat_template_path",
        )
    return path, tokenizer


def _student_model(recipe: Recipe, student_path: str) -> Any:
    """The student's weights: model.path's, or with model.init=random a model of the same config with
    fresh weights drawn by the architecture's own initialisation, seeded by train.seed (so that the
    from-scratch arm's seeds differ in their weights as well as their data order)."""
    from transformers import AutoConfig, AutoModelForCausalLM, set_seed

    with loading_model("model.path", recipe.model.path):
        if recipe.model.init == "pretrained":
            return AutoModelForCausalLM.from_pretrained(student_path)
        config = AutoConfig.from_pretrained(student_path)
    set_seed(recipe.train.seed)
    return AutoModelForCausalLM.from_config(config)


def _teacher_model(recipe: Recipe, student_path: str, tokenizer: Any) -> Any:
    """train.teacher's weights ('self': the student's own initial ones)."""
    return _same_vocab_model("train.teacher", recipe.train.teacher, recipe, student_path, tokenizer)


def _same_vocab_model(field: str, spec: str, recipe: Recipe, student_path: str, tokenizer: Any) -> Any:
    """A model whose logits are compared with the student's ('self': the student's initial weights);
    one with another vocabulary is a UserError naming `field`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec == "self":
        return AutoModelForCausalLM.from_pretrained(student_path)
    with loading_model(field, spec):
        path = resolve_model(spec)[0]
        theirs = AutoTokenizer.from_pretrained(path)
    if len(theirs) != len(tokenizer):
        raise UserError(
            f"{field}={spec!r} has a vocabulary of {len(theirs)} tokens, the student "
            f"{recipe.model.path!r} {len(tokenizer)}: a teacher run alongside needs the same tokenizer",
            "for a teacher with another tokenizer, store its soft labels (teacher.path, generate.logprobs=K) and "
            "train with train.kd.source=stored: they are aligned to the student's tokens by text",
        )
    with loading_model(field, spec):
        return AutoModelForCausalLM.from_pretrained(path)


def _codistill_trainer(
    recipe: Recipe, model: Any, config: Any, ds: Any, tokenizer: Any, peft_config: Any, student_path: str
) -> Any:
    """`sft.objectives.codistill.CodistillTrainer`: the student and its partner (the teacher reading
    teacher_prompt, or another student reading the prompt), on the same rows."""
    from sft.objectives.codistill import CodistillTrainer

    spec, kd = recipe.train.codistill, recipe.train.kd
    with_teacher = spec.partner == "teacher"
    own_weights = recipe.train.teacher in ("self", recipe.model.path)
    if with_teacher and own_weights and not recipe.train.lora.enabled:
        same_view = all(r["teacher_prompt"] == r["prompt"] for r in ds.select_columns(["prompt", "teacher_prompt"]))
        if same_view:
            raise UserError(
                "train.codistill.partner=teacher is the student's own weights reading the same prompt: trained in "
                "full on the same batches the two stay identical",
                "give the teacher a privileged view (teacher.system_prompt), set train.lora.enabled=true, or name "
                "another model in train.teacher",
            )
    if with_teacher:
        partner = _teacher_model(recipe, student_path, tokenizer)
    else:
        partner = _same_vocab_model("train.codistill.partner", spec.partner, recipe, student_path, tokenizer)
    columns = ["prompt", "completion", "teacher_prompt"] if with_teacher else ["prompt", "completion"]
    return CodistillTrainer(
        model=model,
        args=config,
        train_dataset=ds.select_columns(columns),
        processing_class=tokenizer,
        peft_config=peft_config,
        partner=partner,
        weight=spec.weight,
        warmup_steps=spec.warmup_steps,
        temperature=kd.temperature,
        beta=kd.beta,
        partner_reads_teacher_prompt=with_teacher,
    )


def _kd_rows(recipe: Recipe, run_dir: Path, ds: Any, tokenizer: Any) -> tuple[Any, bool]:
    """The rows KD trains on, and whether their stored tokens include the stop token's step.

    Stored soft labels: the tokenizer checked against the manifest's, the top-k as columns, rows
    without usable ones reported and left out. A model teacher: refused when it would teach nothing
    (the student's own initial weights, reading the same prompt, with no hard-label term).
    """
    from sft.objectives.kd import KD_COLUMNS, TOKENS
    from sft.objectives.kd_data import check_tokenizer, with_sampled_tokens, with_topk

    kd = recipe.train.kd
    if recipe.train.objective == "kd" and kd.source == "model":
        same_view = all(r["teacher_prompt"] == r["prompt"] for r in ds.select_columns(["prompt", "teacher_prompt"]))
        if recipe.train.teacher == "self" and same_view and kd.alpha == 0:
            raise UserError(
                "train.kd.source=model with train.teacher=self: the teacher is the student's own starting "
                "weights reading the same prompt, so with train.kd.alpha=0 there is nothing to learn",
                "set train.teacher to another model, give the teacher a privileged view "
                "(teacher.system_prompt), or set train.kd.alpha > 0",
            )
        return ds.select_columns(["prompt", "completion", "teacher_prompt"]), True
    info = check_tokenizer(run_dir, tokenizer, recipe.model.path, cross=kd.cross_tokenizer == "auto")
    ds = _without_corrected(recipe, ds)
    if not len(ds):
        raise UserError(
            "every curated row carries a reviewer's correction, and train.kd.corrected=leave_out leaves them all out",
            "train on the corrections with train.kd.source=model or train.objective=sft train.targets=text",
        )
    if info.get("cross"):
        return _cross_rows(recipe, info, ds, tokenizer)
    out, dropped = with_topk(ds, tokenizer)
    _say_left_out(ds, dropped, "have no usable stored log-probabilities")
    if not len(out):
        raise UserError(
            "no curated row has usable stored log-probabilities",
            "generate with generate.logprobs=K on an engine that gives token ids (transformers, vllm, llama.cpp)",
        )
    if recipe.train.targets == "stored" and not info.get("includes_stop_token", True):
        raise UserError(
            "train.targets=stored: these stored log-probabilities leave out the stop token's step, so the "
            "student would never be taught to end its answer",
            "set train.targets=text, or generate with an engine that stores the stop token "
            "(transformers, vllm, llama.cpp's server)",
        )
    columns = [c for c in out.column_names if c in ("prompt", "completion", *KD_COLUMNS)]
    out = out.select_columns(columns)
    if TOKENS in out.column_names:  # train on the very tokens the stored top-k belong to
        out = with_sampled_tokens(out, tokenizer)
    return out, bool(info.get("includes_stop_token", True))


def _cross_rows(recipe: Recipe, info: dict[str, Any], ds: Any, tokenizer: Any) -> tuple[Any, bool]:
    """Stored soft labels of a teacher with another tokenizer, aligned to the student's tokens by text
    (`sft.objectives.cross_tokenizer`); the teacher's tokenizer from the manifest when it loads here,
    else the rows' token strings."""
    from sft.objectives.kd import IDS, LOGPROBS, ULD_PROBS, ULD_TOKENS
    from sft.objectives.kd_data import with_cross_topk
    from synth.tokenizers import load_local

    if recipe.train.targets == "stored":
        raise UserError(
            "train.targets=stored: the stored tokens are the teacher's, and its tokenizer is not the student's",
            "set train.targets=text (the student's tokens of the same text)",
        )
    name = (info.get("tokenizer") or {}).get("name")
    teacher_tokenizer = load_local(name) if name else None
    out, dropped, report = with_cross_topk(ds, tokenizer, teacher_tokenizer)
    _say_left_out(ds, dropped, "could not be aligned with the student's tokens")
    if not len(out):
        raise UserError(
            f"no curated row's soft labels (teacher tokenizer {name or 'unknown'}) align with the student's tokens",
            "see the warnings above; train.objective=sft trains on the text alone",
        )
    _say(report.sentence())
    return out.select_columns(["input_ids", "completion_mask", IDS, LOGPROBS, ULD_TOKENS, ULD_PROBS]), True


def _say_left_out(ds: Any, dropped: list[tuple[int, str]], why_all: str) -> None:
    """Warn about the curated rows kd leaves out: the first five with their reason, then how many."""
    for i, why in dropped[:5]:
        _say(f"warning: curated row {i} ({ds[i]['id']}) left out of kd: {why}")
    if dropped:
        _say(f"warning: {len(dropped)} of {len(ds)} rows {why_all} and are left out")


def _without_corrected(recipe: Recipe, ds: Any) -> Any:
    """The rows whose stored labels belong to their text: a reviewer's correction (`synth review pull`)
    replaces the completion, but the stored log-probabilities and sampled ids are the teacher's
    original answer, so training on them would discard the correction without a word."""
    if "original_completion" not in ds.column_names:
        return ds
    corrected = [i for i, r in enumerate(ds.select_columns(["original_completion"])) if r["original_completion"]]
    if not corrected:
        return ds
    more = f" and {len(corrected) - 3} more" if len(corrected) > 3 else ""
    ids = ", ".join(ds[i]["id"] for i in corrected[:3]) + more
    if recipe.train.kd.corrected == "refuse":
        raise UserError(
            f"{len(corrected)} curated row(s) carry a reviewer's correction ({ids}); stored soft labels and "
            "sampled ids belong to the teacher's original answer, so training on them would discard the correction",
            "train on the corrected text with train.kd.source=model (the teacher scores it) or "
            "train.objective=sft train.targets=text; or set train.kd.corrected=leave_out to train without those rows",
        )
    _say(f"warning: {len(corrected)} corrected row(s) left out (train.kd.corrected=leave_out): {ids}")
    return ds.select(sorted(set(range(len(ds))) - set(corrected)))


def _layer_map(student_path: str, model: Any, teacher: Any) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs for train.kd.hidden_weight: a pruned student's own record of
    which teacher layer each of its layers is, else layer i to layer i when the depths are equal."""
    if teacher is None:
        raise UserError("train.kd.hidden_weight needs a teacher model", "set train.kd.source=model")
    s_cfg, t_cfg = model.config, teacher.config
    if s_cfg.hidden_size != t_cfg.hidden_size:
        raise UserError(
            f"train.kd.hidden_weight: the student's hidden size {s_cfg.hidden_size} is not the teacher's "
            f"{t_cfg.hidden_size}",
            "set train.kd.hidden_weight=0 (a hidden-state loss needs layers of the same width)",
        )
    pruned = Path(student_path) / "prune.json"
    if pruned.is_file():
        record = read_json(pruned, "the pruned student's prune.json", hint="run `sft prune` again")
        record = record if isinstance(record, dict) else {}
        kept = record.get("kept")
        if not isinstance(kept, list) or record.get("layers_before") != t_cfg.num_hidden_layers:
            raise UserError(
                f"train.kd.hidden_weight: {pruned} does not map this student onto a teacher of "
                f"{t_cfg.num_hidden_layers} layers (it was pruned from {record.get('teacher', '?')})",
                "set train.teacher to the model the student was pruned from",
            )
        return list(enumerate(kept))
    if s_cfg.num_hidden_layers != t_cfg.num_hidden_layers:
        raise UserError(
            f"train.kd.hidden_weight: the student has {s_cfg.num_hidden_layers} layers, the teacher "
            f"{t_cfg.num_hidden_layers}, and no prune.json says which teacher layer each student layer is",
            "make the student with `sft prune`, or set train.kd.hidden_weight=0",
        )
    return [(i, i) for i in range(s_cfg.num_hidden_layers)]


def _kd_trainer(
    recipe: Recipe,
    model: Any,
    config: Any,
    data: tuple[Any, bool],
    tokenizer: Any,
    peft_config: Any,
    student_path: str,
) -> Any:
    """`sft.objectives.kd.KDTrainer` with the stored top-k or a local teacher (misaligned rows: a clear error)."""
    from sft.objectives.kd import KDTrainer, MisalignedRows

    kd = recipe.train.kd
    hard_only = recipe.train.objective == "sft"  # train.targets=stored: cross-entropy on the stored tokens
    ds, stop_token_stored = data
    teacher = _teacher_model(recipe, student_path, tokenizer) if kd.source == "model" and not hard_only else None
    layer_map = _layer_map(student_path, model, teacher) if kd.hidden_weight and not hard_only else None
    try:
        trainer = KDTrainer(
            model=model,
            args=config,
            train_dataset=ds,
            processing_class=tokenizer,
            peft_config=peft_config,
            teacher_model=teacher,
            alpha=1.0 if hard_only else kd.alpha,
            temperature=kd.temperature,
            beta=kd.beta,
            tail=kd.tail,
            stop_token_stored=stop_token_stored,
            hidden_weight=0.0 if hard_only else kd.hidden_weight,
            layer_map=layer_map,
            drop_misaligned=True,
            labels_at_stored_only=recipe.train.targets == "stored",
        )
    except MisalignedRows as exc:
        first = exc.rows[0]
        raise UserError(
            f"none of the {len(exc.rows)} curated rows' stored log-probabilities line up with the completion's "
            f"tokens (first: row {first.row}: {first.why})",
            "the completions were tokenised differently from how the teacher generated them; generate "
            "again with the student's tokenizer, or use train.kd.source=model",
        ) from None
    for m in trainer.misaligned[:5]:
        _say(f"warning: kd row {m.row} left out: {m.why}")
    if trainer.misaligned:
        _say(f"warning: {len(trainer.misaligned)} rows whose stored tokens do not line up were left out")
    return trainer


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
        trainer.create_model_card(model_name=f"{recipe.name}-{recipe.train.folder}", tags=["distillery"])
    finally:
        config._name_or_path, trainer.hub_model_id = local, hub_id


def run_train(recipe: Recipe, run_dir: Path, resume: bool = False, folder: str | None = None) -> TrainSummary:
    """Train `recipe.train.objective` on run_dir/curated/kept.parquet into run_dir/train/`folder` (by
    default the arm's folder; `train.seeds` runs pass one per seed, see `train_all`)."""
    from synth.runtime import check_device

    t = recipe.train
    # the cheap checks first: device, train.args, checkpoints, data; then the tokenizer, then the weights
    device = check_device(recipe.runtime.device)
    out = run_dir / "train" / (folder or t.folder)
    user_args, secrets = checked_user_args(recipe)
    args = _common_args(recipe, out, device, user_args)
    if t.objective in ("sft", "kd", "codistill"):
        from trl import SFTConfig

        # kd may hand TRL pre-tokenised rows (the teacher's sampled ids): the loss stays on the completion
        kd_args = {"completion_only_loss": True} if t.objective != "sft" or t.targets == "stored" else {}
        config = trl_config(SFTConfig, {**kd_args, **args}, user_args)
    else:
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.gkd import GKDConfig

        gkd_args = {
            "lmbda": t.lmbda,
            "beta": t.beta,
            "temperature": t.temperature,
            "max_new_tokens": t.max_new_tokens,
            "seq_kd": t.seq_kd,
            **args,
        }
        config = trl_config(GKDConfig, gkd_args, user_args)
    last, skipped = resume_from(out, args) if resume else (None, [])
    ds = _kept(run_dir)
    student_path, tokenizer = _student(recipe)
    lengths, unusable = length_report(ds, tokenizer, t.objective, args, user_args)
    usable = ds.select(sorted(set(range(len(ds))) - set(unusable)))  # KD's and GKD's collators would fail on them
    kd_path = t.objective == "kd" or t.targets == "stored"  # KDTrainer (sft: cross-entropy alone)
    text_only = t.objective in ("gkd", "codistill") or (t.objective == "kd" and t.kd.source == "model")
    if t.targets == "stored" and text_only:
        raise UserError(
            "train.targets=stored is for sft and kd with train.kd.source=stored",
            "set train.targets=text for this objective (its comparisons then name the difference)",
        )
    kd_data = _kd_rows(recipe, run_dir, usable, tokenizer) if kd_path else None  # before any write
    out.mkdir(parents=True, exist_ok=True)
    dump_resolved(recipe, out / "recipe.resolved.yaml")

    model = _student_model(recipe, student_path)
    peft_config = _lora_config(recipe, model)
    try:
        if kd_data is not None:
            trainer = _kd_trainer(recipe, model, config, kd_data, tokenizer, peft_config, student_path)
        elif t.objective == "codistill":
            trainer = _codistill_trainer(recipe, model, config, usable, tokenizer, peft_config, student_path)
        elif t.objective == "sft":
            from trl import SFTTrainer

            trainer: Any = SFTTrainer(
                model=model,
                args=config,
                train_dataset=ds.select_columns(["prompt", "completion"]),  # TRL drops the unusable rows itself
                processing_class=tokenizer,
                peft_config=peft_config,
            )
        else:
            from sft.objectives.gkd import TeacherViewCollator, TeacherViewGKDTrainer

            train = usable.map(
                lambda r: {"messages": r["prompt"] + r["completion"]},
                remove_columns=[c for c in ds.column_names if c != "teacher_prompt"],
            )
            teacher = _teacher_model(recipe, student_path, tokenizer)
            hidden = t.kd.hidden_weight
            trainer = TeacherViewGKDTrainer(
                model=model,
                teacher_model=teacher,
                lmbda_start=t.lmbda_start,
                ramp_steps=t.lmbda_ramp_steps,
                hidden_weight=hidden,
                layer_map=_layer_map(student_path, model, teacher) if hidden else None,
                args=config,
                train_dataset=train,
                processing_class=tokenizer,
                peft_config=peft_config,
                data_collator=TeacherViewCollator(tokenizer, args["max_length"]),
            )
    except (TypeError, ValueError, OverflowError, ImportError) as exc:
        if not user_args:
            raise
        raise UserError(
            f"train.args: TRL's trainer refused the settings: {first_line(exc)}",
            f"check train.args ({', '.join(sorted(user_args))})",
        ) from None
    if secrets:
        _say(
            f"note: {', '.join(secrets)} ignored: Distillery never pushes from inside the trainer (`sft publish` "
            "does, with $HF_TOKEN), and TRL would save it in every checkpoint's training_args.bin"
        )
    if lengths:
        _say(f"warning: {lengths.sentence()}")
    if last:
        for folder, why in skipped:
            _say(f"skipping incomplete {folder.name} ({why}): a save that was cut short")
        _say(f"resuming from {last} (step {last.name.split('-')[-1]})")
    counter = _TokenCounter(trainer.data_collator)
    trainer.data_collator = counter
    started = _start_watch()
    trainer.add_callback(started)
    diverged = _divergence_watch()
    trainer.add_callback(diverged)
    clock = _step_clock()
    trainer.add_callback(clock)
    start = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=str(last) if last else None)
    except (MemoryError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "out of memory" not in str(exc).lower():
            raise
        raise UserError(
            f"out of memory at train.batch_size={t.batch_size}, max_length={t.max_length}",
            "lower train.batch_size (raise gradient_accumulation_steps to keep the effective "
            "batch), or set train.lora.enabled=true",
        ) from None
    except (TypeError, ValueError, OverflowError, ImportError) as exc:
        # before the first step: the optimizer, scheduler or checkpoint could not be set up
        if started.began or not (user_args or last):
            raise
        where = [f"train.args ({', '.join(sorted(user_args))})"] if user_args else []
        where += [f"the checkpoint {last}"] if last else []
        raise UserError(f"training could not start: {first_line(exc)}", f"check {' and '.join(where)}") from None
    seconds = time.perf_counter() - start
    final = out / "final"
    if diverged.at is not None or not _finite_weights(trainer.model):
        step, what = diverged.at or (result.global_step, "weights that are not finite numbers")
        raise UserError(
            f"training diverged at step {step} ({what}); nothing was saved as {final}",
            "lower train.learning_rate"
            + (" or train.kd.temperature" if t.objective == "kd" else "")
            + f", then run `sft run` again (checkpoints in {out} from that step on hold the diverged weights)",
        )
    staging = _save_final(trainer, tokenizer, recipe, student_path, final)
    codistill = t.objective == "codistill"
    partner = _save_partner(trainer, tokenizer, recipe, run_dir, folder or t.folder) if codistill else None
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    # what the trainer kept: kd also leaves out rows without usable or aligned stored labels
    trained_set = trainer.train_dataset
    rows_trained = len(trained_set) if trained_set is not None else len(ds) - (lengths.dropped if lengths else 0)
    throughput = _throughput(trainer, counter.tokens, seconds, device, t.objective) | clock.summary()
    _model_card(trainer, recipe, final)
    if trainer.accelerator.is_main_process:
        from sft.objectives.kd import ULD_TOKENS

        swap_in_folder(staging, final)
        if partner is not None:
            swap_in_folder(*partner)
        # first entry: what this run trained on, and from where, beside TRL's per-step log
        run_info = {
            "step": 0,
            "rows": len(ds),
            "rows_trained": rows_trained,
            "throughput": throughput,
            "max_length": lengths.sentence() if lengths else None,
            # soft labels of another tokenizer, aligned to the student's own tokens of the text
            "cross_tokenizer": bool(trained_set is not None and ULD_TOKENS in trained_set.column_names),
            "resumed_from": str(last) if last else None,
            "skipped_checkpoints": [f"{p.name}: {why}" for p, why in skipped],
        }
        log = [run_info, *trainer.state.log_history]
        atomic_write_text(out / "log.json", json.dumps(log, indent=1) + "\n")
        if partner is not None:  # the same run: its log (partner_* entries are the partner's losses)
            atomic_write_text(partner[1].parent / "log.json", json.dumps(log, indent=1) + "\n")
    steps_run = result.global_step - (int(last.name.split("-")[-1]) if last else 0)
    return TrainSummary(
        folder or t.folder,
        out,
        result.global_step,
        steps_run,
        seconds,
        result.training_loss,
        len(ds),
        losses[0] if losses else None,
        losses[-1] if losses else None,
        str(last) if last else None,
        [p.name for p, _ in skipped],
        lengths,
        rows_trained,
        throughput,
    )


def _save_final(trainer: Any, tokenizer: Any, recipe: Recipe, student_path: str, final: Path) -> Path:
    """Write the model (or adapter) and tokenizer into a staging folder beside `final`, for
    `swap_in_folder`: saved over the old folder, a full model would sit beside a LoRA adapter of an
    earlier run, and eval and publish would load the old adapter."""
    from synth.adapters import record_base

    staging = final.parent / f".{final.name}.train.tmp"  # one name for every process of the run
    if trainer.accelerator.is_main_process:
        staging_folder(final, "train")
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))  # every process calls it (sharded states gather); only the main one writes
    trainer.accelerator.wait_for_everyone()  # DeepSpeed may write a shard per process: all done before the swap
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(str(staging))
        if (staging / "adapter_config.json").is_file():
            record_base(staging, recipe.model.path, Path(student_path))
    return staging


def _save_partner(trainer: Any, tokenizer: Any, recipe: Recipe, run_dir: Path, folder: str) -> tuple[Path, Path] | None:
    """codistill: the partner saved as its own arm, train/<arm>-partner/[seed-<s>/]final (a full model,
    LoRA merged), with a resolved recipe whose model.path is the partner's; (staging, final) for the swap,
    on the main process (the only one that writes it; codistill runs in one process)."""
    from sft.objectives.codistill import save_partner

    if not trainer.accelerator.is_main_process:
        return None
    t = recipe.train
    out = run_dir / "train" / folder.replace(t.folder, t.partner_folder, 1)
    final = out / "final"
    out.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(final)
    save_partner(trainer, tokenizer, staging)
    path = t.teacher if t.codistill.partner == "teacher" else t.codistill.partner
    path = recipe.model.path if path == "self" else path
    as_partner = recipe.model_copy(update={"model": recipe.model.model_copy(update={"path": path})})
    dump_resolved(as_partner, out / "recipe.resolved.yaml")
    return staging, final


def train_all(recipe: Recipe, run_dir: Path, resume: bool = False) -> list[TrainSummary]:
    """Every model of the arm: one, or one per `train.seeds` entry, each with `train.seed` set to it.

    Seeds are trained one after another into train/<arm>/seed-<s>/; the only thing that differs
    between them is the seed (weights of new layers such as LoRA's, data order, dropout), so their
    spread is what one training run of the method can land on.
    """
    summaries = []
    for seed, folder in recipe.train.runs():
        one = recipe.model_copy(update={"train": recipe.train.model_copy(update={"seed": seed})})
        if recipe.train.seeds is not None:
            _say(f"training seed {seed} into train/{folder}")
        summaries.append(run_train(one, run_dir, resume=resume, folder=folder))
    return summaries


class _TokenCounter:
    """The trainer's data collator, counting the tokens (not the padding) of every batch it builds: TRL
    counts them only in SFTTrainer's own loss, which KD and GKD replace."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.tokens = inner, 0

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        batch = self.inner(features)
        mask = batch.get("attention_mask") if hasattr(batch, "get") else None
        ids = batch.get("input_ids") if hasattr(batch, "get") else None
        if mask is not None:
            self.tokens += int(mask.sum())
        elif ids is not None:
            self.tokens += int(ids.numel())
        return batch

    def __getattr__(self, name: str) -> Any:  # what the trainer reads of the collator it was given
        if name == "inner":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


def _throughput(trainer: Any, tokens: int, seconds: float, device: str, objective: str) -> dict[str, Any]:
    """Trained tokens per second and, on a CPU, the model FLOPs utilisation against this machine's matmul
    rate in the dtype the matmuls ran in (bf16 under autocast, else float32), measured now
    (`synth.throughput`). Not for gkd: its on-policy generation is not in the FLOP count, and an MFU
    without it would mislead."""
    import torch

    from synth.throughput import matmul_gflops, training_flops_per_token

    tokens *= trainer.accelerator.num_processes  # each process counted its own batches
    out: dict[str, Any] = {"tokens": tokens, "seconds": round(seconds, 1), "tokens_per_s": None, "mfu": None}
    if not tokens or seconds <= 0:
        return out
    out["tokens_per_s"] = tokens / seconds
    if device != "cpu" or objective == "gkd":
        return out
    params = sum(p.numel() for p in trainer.model.parameters())
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    teacher = getattr(trainer, "teacher_model", None)
    teacher_params = sum(p.numel() for p in teacher.parameters()) if teacher is not None else 0
    partner = getattr(trainer, "partner", None)  # codistill: a second model trained alongside
    if partner is not None:
        params += sum(p.numel() for p in partner.parameters())
        trainable += sum(p.numel() for p in partner.parameters() if p.requires_grad)
    flops = training_flops_per_token(params, trainable, teacher_params)
    bf16 = bool(trainer.args.bf16)
    peak = matmul_gflops(torch.bfloat16 if bf16 else torch.float32)["median"]
    out |= {
        "flops_per_token": flops,
        "peak_gflops": peak,
        "peak_dtype": "bfloat16" if bf16 else "float32",
        "mfu": out["tokens_per_s"] * flops / (peak * 1e9),
    }
    return out


def _divergence_watch() -> Any:
    """A trainer callback that stops training at the first logged loss or gradient norm that is not a
    finite number: TRL keeps stepping on NaN, and the weights it would save as final/ are NaN too."""
    import math

    from transformers import TrainerCallback

    class DivergenceWatch(TrainerCallback):
        at: tuple[int, str] | None = None

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            for key in ("loss", "grad_norm"):
                value = (logs or {}).get(key)
                if isinstance(value, int | float) and not math.isfinite(value) and self.at is None:
                    self.at = (state.global_step, f"{key} {value}")
                    control.should_training_stop = True
                    control.should_save = False

    return DivergenceWatch()


def _finite_weights(model: Any) -> bool:
    """Whether every trainable weight is a finite number (a last check before final/ is written)."""
    import torch

    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)


def _step_clock() -> Any:
    """A trainer callback timing each optimizer step (data, forward, backward, update; not saves or logs):
    `summary()` gives the median after the first, which pays for warm-up, and the min-max spread."""
    import statistics

    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.began = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.began = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.seconds.append(time.perf_counter() - self.began)

        def summary(self) -> dict[str, Any]:
            steady = self.seconds[1:] or self.seconds
            if not steady:
                return {"step_seconds": None}
            median, spread = round(statistics.median(steady), 3), [round(min(steady), 3), round(max(steady), 3)]
            return {"step_seconds": {"median": median, "spread": spread, "steps": len(steady)}}

    return StepClock()


def _start_watch() -> Any:
    """A trainer callback noting whether training got past its setup (optimizer, scheduler, checkpoint)."""
    from transformers import TrainerCallback

    class StartWatch(TrainerCallback):
        began = False

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.began = True

    return StartWatch()
