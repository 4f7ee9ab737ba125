"""Standard benchmarks (`eval.benchmarks`): lm-evaluation-harness tasks on every model `sft eval` loads.

Behaviour rates and fidelity say how close a student came to its teacher on the recipe's own prompts;
papers state compression as "N% smaller at M% loss" on public tasks (ARC, HellaSwag, PIQA,
WinoGrande). This runs those tasks with lm-eval 0.4's `hf` model type (`HFLM`) on the model the eval
already loaded (a LoRA student merged into its base, the teacher when it runs on transformers), so
each model is loaded once, and keeps every example's score: the report's intervals resample examples
(and training seeds), and differences between models are paired on the same examples.

A task is an lm-eval task name, or a task YAML in lm-eval's own format (tests ship one, no Hub access).
lm-eval resolves a YAML's `data_files` against the working folder; here they resolve against the YAML's
folder, so a task and its data move together.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.errors import UserError, first_line
from synth.prompts import resolve_path
from synth.specs import BenchmarksSpec

FIELD = "eval.benchmarks.tasks"


@dataclass
class TaskScores:
    """One task's scores for one model: the task's first metric per example, in example (doc_id) order."""

    metric: str
    doc_ids: list[int]
    values: list[float]
    aggregate: float | None  # lm-eval's own aggregate, for metrics that are not a mean of examples


def _is_yaml(task: str) -> bool:
    return task.endswith((".yaml", ".yml"))


def _local_files(value: Any, folder: Path) -> Any:
    """`data_files` (a path, a list, or split → path(s)) with relative entries made absolute from `folder`."""
    if isinstance(value, str):
        return value if "://" in value or Path(value).is_absolute() else str(folder / value)
    if isinstance(value, list):
        return [_local_files(v, folder) for v in value]
    if isinstance(value, dict):
        return {k: _local_files(v, folder) for k, v in value.items()}
    return value


def task_configs(spec: BenchmarksSpec, recipe_dir: Path | None) -> list[str | dict[str, Any]]:
    """What lm-eval's `tasks=` gets: names as they are, YAML files loaded into configs with their data
    files resolved next to them. A missing or malformed YAML is a UserError naming the field."""
    from lm_eval.tasks._yaml_loader import load_yaml

    out: list[str | dict[str, Any]] = []
    for i, task in enumerate(spec.tasks):
        if not _is_yaml(task):
            out.append(task)
            continue
        path = resolve_path(task, recipe_dir, f"{FIELD}[{i}]")
        try:
            config = load_yaml(path)
        except Exception as exc:  # yaml errors, a bad include or !function: lm-eval raises many kinds
            raise UserError(
                f"{FIELD}[{i}] {path}: not a task YAML lm-eval can read: {first_line(exc)}",
                "fix the file (lm-eval's task format: task, dataset_path, output_type, doc_to_text, ...)",
            ) from None
        if not isinstance(config.get("task"), str):
            raise UserError(f"{FIELD}[{i}] {path}: no `task:` name", "add `task: <name>` to the YAML")
        kwargs = dict(config.get("dataset_kwargs") or {})
        if "data_files" in kwargs:
            kwargs["data_files"] = _local_files(kwargs["data_files"], path.parent)
            config["dataset_kwargs"] = kwargs
        out.append(config)
    return out


def _task_names(tasks: list[str | dict[str, Any]]) -> list[str]:
    return [t if isinstance(t, str) else t["task"] for t in tasks]


def check_tasks(spec: BenchmarksSpec, recipe_dir: Path | None) -> list[str | dict[str, Any]]:
    """Every task built once (its data loaded) before any model answers, so a wrong name or data the
    machine cannot reach fails in seconds, not after the other models' minutes."""
    from lm_eval.tasks import TaskManager

    tasks = task_configs(spec, recipe_dir)
    manager = TaskManager()
    for i, (task, name) in enumerate(zip(tasks, _task_names(tasks), strict=True)):
        try:
            with _quiet():
                manager.load([task])
        except Exception as exc:  # unknown name (KeyError/ValueError), dataset download, bad config
            where = (
                "its data comes from the Hugging Face Hub: run where it is reachable, or "
                if isinstance(task, str)
                else ""
            )
            raise UserError(
                f"{FIELD}[{i}] {name!r}: lm-eval could not build the task: {first_line(exc)}",
                f"{where}name an lm-eval task (`lm-eval ls tasks`) or a task YAML",
            ) from None
    return tasks


class _quiet:
    """lm-eval logs every task's config choices at WARNING; the eval's own output is what matters."""

    def __enter__(self) -> None:
        self.logger = logging.getLogger("lm_eval")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        self.logger.setLevel(self.level)


def run_benchmarks(
    model: Any, tokenizer: Any, tasks: list[str | dict[str, Any]], spec: BenchmarksSpec
) -> dict[str, TaskScores]:
    """Every task on one loaded transformers model: per leaf task, its first metric for each example."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    with _quiet():
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=spec.batch_size)
        result = simple_evaluate(
            model=lm,
            tasks=list(tasks),
            num_fewshot=spec.num_fewshot,
            limit=spec.limit,
            log_samples=True,
            bootstrap_iters=0,  # intervals are ours: over examples and training seeds, paired between models
            apply_chat_template=spec.chat_template,
        )
    if result is None:  # only on non-zero ranks of a distributed run, which `sft eval` is not
        raise RuntimeError("lm-eval returned no result")
    # every leaf task that ran: a group name (mmlu) stands for its subtasks, each reported on its own
    return {name: _scores(name, result) for name in result["samples"]}


def _scores(name: str, result: dict[str, Any]) -> TaskScores:
    """The task's first metric per example (sorted by doc_id), and lm-eval's aggregate of it."""
    metrics = list((result.get("higher_is_better") or {}).get(name) or {})
    samples = sorted(result["samples"][name], key=lambda s: s["doc_id"])
    if not metrics:
        metrics = [k for k in samples[0]["metrics"]] if samples else []
    metric = metrics[0]
    aggregate = next((v for k, v in result["results"][name].items() if k.split(",")[0] == metric), None)
    values = [s.get(metric) for s in samples]
    numeric = all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
    return TaskScores(
        metric,
        [s["doc_id"] for s in samples],
        [float(v) for v in values] if numeric else [],  # perplexities etc. aggregate otherwise: no interval
        aggregate if isinstance(aggregate, (int, float)) else None,
    )


Scores = dict[str, list[tuple[int | None, dict[str, TaskScores]]]]
"""Per arm, per training seed (None: not one of several), each task's scores."""


def seed_tables(scores: Scores, task: str) -> dict[str, list[list[float | None]]]:
    """Per arm, table[seed][example] of the task's metric, for arms whose every seed has per-example
    values on the same examples as every other such arm (paired comparisons need that)."""
    out: dict[str, list[list[float | None]]] = {}
    reference: list[int] | None = None
    for arm, entries in scores.items():
        runs = [tasks[task] for _, tasks in entries if task in tasks]
        if not runs or any(not r.values for r in runs):
            continue
        ids = runs[0].doc_ids
        if any(r.doc_ids != ids for r in runs) or (reference is not None and ids != reference):
            continue
        reference = ids
        out[arm] = [list(r.values) for r in runs]
    return out


def summarise(scores: Scores) -> dict[str, dict[str, dict[str, Any]]]:
    """report.json's `benchmarks.<model>.<task>`: {metric, value, ci, examples, seeds}. The value is the
    mean over seeds of each seed's mean over examples, the interval resamples seeds then examples; a
    metric that is not a mean of examples (a perplexity) gets lm-eval's aggregate and no interval."""
    from synth.stats import hierarchical_ci, mean, seed_mean

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for arm, entries in scores.items():
        for task in dict.fromkeys(t for _, tasks in entries for t in tasks):
            runs = [(seed, tasks[task]) for seed, tasks in entries if task in tasks]
            table = [r.values for _, r in runs]
            per_example = all(table)
            if per_example:
                value, ci = seed_mean(table), hierarchical_ci([table])
                per_seed = [mean(r.values) for _, r in runs]
            else:
                per_seed = [r.aggregate for _, r in runs]
                known = [v for v in per_seed if v is not None]
                value, ci = mean(known), None
            out.setdefault(arm, {})[task] = {
                "metric": runs[0][1].metric,
                "value": value,
                "ci": list(ci) if ci else None,
                "examples": len(runs[0][1].doc_ids),
                "seeds": [{"seed": seed, "value": v} for (seed, _), v in zip(runs, per_seed, strict=True)],
            }
    return out
