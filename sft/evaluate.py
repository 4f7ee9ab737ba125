"""`sft eval`: base student, trained student(s) and teacher side by side on held-out prompts.

Every model answers the held-out prompts through the same engine interface as generation: the
students see the student's view, the teacher sees the teacher's view (with its privileged context).
Metrics: the compliance rate of the recipe's behaviour check (a curate check, e.g. `french`), the
pass rate of every other curate row check (decontamination aside), the mean LLM-judge score where
the recipe has an `llm_judge` check, and token-level agreement with the teacher: how often a
student's top-1 next token equals the teacher's token when reading the teacher's own answers
(teacher-forced, on the student's view).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from synth.curate.base import Context
from synth.curate.stage import ROW_CHECKS
from synth.engines.base import SamplingParams
from synth.engines.hf import TransformersEngine
from synth.errors import UserError
from synth.io import atomic_write_text
from synth.models import resolve_model
from synth.prompts import load_prompts, teacher_view
from synth.recipe import PromptsSpec, Recipe

EXAMPLES = 3


def _checks(recipe: Recipe, recipe_dir: Path | None) -> tuple[str, list[Any]]:
    """The behaviour check's name and every curate row check to apply to answers (set up once)."""
    name = recipe.eval.behaviour_check or recipe.curate.score
    specs = [c for c in recipe.curate.checks if c.type in ROW_CHECKS and c.type != "decontaminate"]
    if not any(c.label == name for c in specs):
        raise UserError(
            f"eval.behaviour_check names {name!r}, which is not a row check in curate.checks",
            "set eval.behaviour_check to the name of the check that defines the behaviour",
        )
    checks = []
    for spec in specs:
        check = ROW_CHECKS[spec.type](spec)
        check.setup(Context(recipe, recipe_dir))
        checks.append(check)
    return name, checks


def _load_student(final: Path, base: str) -> tuple[Any, Any]:
    """A trained student: a full model folder, or a LoRA adapter merged into its base."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(final)
    if (final / "adapter_config.json").is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), final).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(final)
    return model, tokenizer


def _agreement(model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], answers: list[str]) -> float:
    """Share of the teacher's answer tokens that are the student's top-1 prediction (teacher-forced)."""
    hits = total = 0
    with torch.inference_mode():
        for messages, answer in zip(prompts, answers, strict=True):
            prompt_ids = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False
            )
            answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
            if not answer_ids:
                continue
            ids = torch.tensor([list(prompt_ids) + answer_ids], device=model.device)
            logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1]
            hits += int((logits.argmax(-1).cpu() == torch.tensor(answer_ids)).sum())
            total += len(answer_ids)
    return hits / total if total else 0.0


def run_eval(recipe: Recipe, run_dir: Path, recipe_dir: Path | None = None) -> dict[str, Any]:
    """Write run_dir/eval/report.json and report.md; return the report."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ev = recipe.eval
    spec = PromptsSpec(path=ev.prompts, prompt_column=ev.prompt_column, system_prompt=recipe.prompts.system_prompt)
    items, _ = load_prompts(spec, recipe.teacher, recipe_dir, ev.limit)
    behaviour, checks = _checks(recipe, recipe_dir)
    objectives = ev.objectives or sorted(p.parent.name for p in (run_dir / "train").glob("*/final"))
    for obj in objectives:
        if not (run_dir / "train" / obj / "final").is_dir():
            raise UserError(
                f"no trained model at {run_dir / 'train' / obj / 'final'}", f"run `sft run` with objective {obj}"
            )
    base_path, _ = resolve_model(recipe.model.path)
    teacher_path = base_path if recipe.teacher.path == "self" else resolve_model(recipe.teacher.path)[0]
    params = SamplingParams(
        n=1, temperature=ev.temperature, max_new_tokens=ev.max_new_tokens, seed=recipe.generate.seed
    )
    student_prompts = [it.prompt for it in items]
    teacher_prompts = [teacher_view(it.prompt, recipe.teacher) for it in items]

    def base(path: str) -> Any:
        return lambda: (AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(base_path))

    # (name, loader, prompts): each model is loaded when its turn comes and dropped after it.
    models: list[tuple[str, Any, list[list[dict[str, str]]]]] = [
        ("teacher", base(teacher_path), teacher_prompts),
        ("base_student", base(base_path), student_prompts),
    ]
    for obj in objectives:
        final = run_dir / "train" / obj / "final"
        models.append((obj, lambda final=final: _load_student(final, base_path), student_prompts))

    report: dict[str, Any] = {
        "prompts": len(items),
        "behaviour_check": behaviour,
        "compliance": {},
        "checks": {},
        "judge_mean_score": {},
        "agreement_top1_with_teacher": {},
        "seconds": {},
        "examples": {},
    }
    teacher_answers: list[str] = []
    for name, loader, prompts in models:
        t0 = time.perf_counter()
        model, tokenizer = loader()
        engine = TransformersEngine.from_loaded(model, tokenizer, name, batch_size=ev.batch_size)
        answers = [c[0].text for c in engine.generate(prompts, params)]
        rows = [
            {
                "id": f"{name}-{i}",
                "prompt_id": it.prompt_id,
                "sample_index": 0,
                "prompt": it.prompt,
                "completion": a,
                "finish_reason": "stop",
                "completion_tokens": None,
                "meta": "{}",
            }
            for i, (it, a) in enumerate(zip(items, answers, strict=True))
        ]
        report["checks"][name] = {}
        for check in checks:
            verdicts = check.run(rows)
            report["checks"][name][check.name] = sum(v.passed for v in verdicts) / len(verdicts)
            if check.spec.type == "llm_judge":
                scores = [v.score for v in verdicts if v.score is not None]
                report["judge_mean_score"].setdefault(name, {})[check.name] = (
                    sum(scores) / len(scores) if scores else None
                )
        report["compliance"][name] = report["checks"][name][behaviour]
        if name == "teacher":
            teacher_answers = answers
        else:
            report["agreement_top1_with_teacher"][name] = _agreement(model, tokenizer, student_prompts, teacher_answers)
        report["seconds"][name] = round(time.perf_counter() - t0, 1)
        report["examples"][name] = [
            {"prompt": it.prompt[-1]["content"], "answer": a} for it, a in zip(items[:EXAMPLES], answers, strict=False)
        ]
        del engine, model
    t = report["compliance"]["teacher"]
    report["ratio_to_teacher"] = {k: (v / t if t else None) for k, v in report["compliance"].items()}
    for check in checks:
        check.close()
    out = run_dir / "eval"
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out / "report.md", to_markdown(report))
    return report


def to_markdown(rep: dict[str, Any]) -> str:
    lines = [
        "# Evaluation: before vs after",
        "",
        f"{rep['prompts']} held-out prompts; behaviour check: `{rep['behaviour_check']}`.",
        "",
        "| model | compliance | × teacher | top-1 agreement with teacher | seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, rate in rep["compliance"].items():
        ratio = rep["ratio_to_teacher"][name]
        agree = rep["agreement_top1_with_teacher"].get(name)
        lines.append(
            f"| {name} | {rate:.3f} | {ratio:.2f} | {'-' if agree is None else f'{agree:.3f}'} | "
            f"{rep['seconds'][name]} |"
        )
    names = list(next(iter(rep["checks"].values()), {}))
    if names:
        lines += [
            "",
            "## Every curate check, as pass rates",
            "",
            "| model | " + " | ".join(names) + " |",
            "|---|" + "---:|" * len(names),
        ]
        for model, rates in rep["checks"].items():
            lines.append(f"| {model} | " + " | ".join(f"{rates[n]:.3f}" for n in names) + " |")
    if rep["judge_mean_score"]:
        lines += ["", "## LLM judge, mean score", ""]
        lines += [f"- {m}: {scores}" for m, scores in rep["judge_mean_score"].items()]
    lines += ["", "## Examples", ""]
    for name, examples in rep["examples"].items():
        lines.append(f"**{name}**")
        lines += [f"- {e['prompt']} → {' '.join(e['answer'].split())[:160]}" for e in examples]
        lines.append("")
    return "\n".join(lines) + "\n"
