"""Dataset and model cards that say how the data and the model were made (huggingface_hub's card API).

The metadata we own (license, language, task categories, size, tags, base model...) is merged into
whatever the card already has, so `dataset_info` and `configs` written by `datasets.push_to_hub`
survive a publish, and a later `push_to_hub` (which keeps the card it finds) keeps our provenance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from synth import __version__
from synth.errors import UserError
from synth.io import read_json
from synth.publish.hub import model_id, size_category
from synth.recipe import Recipe
from synth.redact import redact

FOOTER = "Made with [Distillery](https://github.com/distillery) {version}."


def _json(path: Path) -> dict[str, Any] | None:
    hint = "run the stage that writes it again, or remove it to publish without it"
    return read_json(path, f"{path.name}", hint) if path.is_file() else None


def _resolved_recipe(run_dir: Path) -> str:
    """The run's resolved recipe, redacted again: a run folder written by an older version may hold a token."""
    for p in (run_dir / "curated" / "recipe.resolved.yaml", run_dir / "recipe.resolved.yaml"):
        if p.is_file():
            try:
                data = yaml.safe_load(p.read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError) as exc:
                raise UserError(f"{p}: damaged ({exc})", "run `synth generate` again to rewrite it") from None
            return yaml.safe_dump(redact(data), sort_keys=False, allow_unicode=True)
    return ""


def _recipe_and_footer(run_dir: Path) -> list[str]:
    """The closing sections both cards share: the resolved recipe and the Distillery version."""
    return [
        "",
        "## Recipe",
        "",
        "```yaml",
        _resolved_recipe(run_dir).rstrip(),
        "```",
        "",
        FOOTER.format(version=__version__),
        "",
    ]


def dataset_metadata(recipe: Recipe, teacher: dict[str, Any], rows: int) -> dict[str, Any]:
    """The card metadata Distillery owns for a dataset."""
    spec = recipe.publish
    tags = ["distillery", "synthetic", "distillation", model_id(teacher["model"]), *spec.tags]
    meta: dict[str, Any] = {
        "license": spec.license or "other",
        "task_categories": spec.task_categories,
        "size_categories": [size_category(rows)],
        "tags": list(dict.fromkeys(tags)),
        "pretty_name": spec.pretty_name or recipe.name,
    }
    if spec.language:
        meta["language"] = spec.language
    return meta


def dataset_body(recipe: Recipe, run_dir: Path, repo_id: str, teacher: dict[str, Any], configs: dict[str, int]) -> str:
    """The card's text: what each config holds and how it was made, step by step."""
    s = teacher.get("sampling") or {}
    lines = [
        f"# {recipe.publish.pretty_name or recipe.name}",
        "",
        recipe.description or "Synthetic instruction data distilled from a teacher model.",
        "",
        "## Configs",
        "",
        "| config | rows | what |",
        "|---|---:|---|",
    ]
    what = {
        "curated": "the training set: rows every check kept (TRL prompt-completion format)",
        "rejected": "rows a check or a reviewer rejected, with `rejected_by` and `reason`",
        "generations": "every sampled completion, before curation",
    }
    lines += [f"| `{c}` | {n} | {what[c]} |" for c, n in configs.items()]
    first = next(iter(configs))
    config_arg = "" if first == "curated" else f', "{first}"'
    lines += [
        "",
        "```python",
        "from datasets import load_dataset",
        f'ds = load_dataset("{repo_id}"{config_arg}, split="train")',
        "```",
        "",
        "## How it was made",
        "",
        f"- Teacher model: `{teacher['model']}`, revision `{teacher.get('revision') or 'unpinned'}`",
        f"- Engine: `{teacher['engine']}`" + (f", weights in `{teacher['dtype']}`" if teacher.get("dtype") else ""),
        "- Sampling: " + ", ".join(f"{k}={v}" for k, v in s.items() if v is not None),
        f"- Prompts: `{recipe.prompts.path}`; the teacher saw "
        + (
            f"the system prompt {recipe.teacher.system_prompt!r}" if recipe.teacher.system_prompt else "the same prompt"
        ),
        f"- Recipe hash: `{recipe.content_hash()}`",
    ]
    logprobs = (_json(run_dir / "generations" / "_manifest.json") or {}).get("logprobs")
    if logprobs:
        tok = logprobs.get("tokenizer") or {}
        lines += [
            f"- Teacher log-probabilities: top-{logprobs['k']} per generated token in the `logprobs` column "
            f"(int32 `top_ids`, float16 `top_logprobs`), sampled at temperature {logprobs['temperature']}; "
            f"{logprobs['mode']}",
            f"- Tokenizer of those ids: `{tok.get('name', 'unknown')}`, vocabulary hash `{tok.get('vocab_hash')}` "
            f"({tok.get('vocab_size')} tokens); a student must use the same vocabulary to train on them",
        ]
    report = _json(run_dir / "curated" / "report.json")
    if report:
        lines += ["", "## Curation", "", "| check | type | evaluated | rejected |", "|---|---|---:|---:|"]
        lines += [
            f"| {c['name']} | {c['type']} | {c['evaluated']} | {c['rejected']} |" for c in report.get("checks", [])
        ]
        lines += [
            "",
            f"Kept {report.get('kept')} of {report.get('rows_in')} rows; selection: {recipe.curate.select.strategy}.",
        ]
    review = _json(run_dir / "review" / "report.json")
    if review:
        lines += ["", "## Human review (Argilla)", "", "| what | rows |", "|---|---:|"]
        lines += [f"| {k.replace('_', ' ')} | {v} |" for k, v in review.get("counts", {}).items()]
    return "\n".join(lines + _recipe_and_footer(run_dir))


def merged_card(card_cls: Any, existing: str | None, metadata: dict[str, Any], body: str) -> Any:
    """Our metadata over the existing card's (its other keys, e.g. dataset_info and configs, kept) + our body."""
    data: dict[str, Any] = {}
    if existing:
        data = card_cls(existing).data.to_dict()
    data.update(metadata)
    header = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return card_cls(f"---\n{header}---\n\n{body}")


def model_metadata(recipe: Recipe, base: str, adapter: bool, dataset: str | None) -> dict[str, Any]:
    """The card metadata Distillery owns for a model."""
    spec = recipe.publish
    tags = ["distillery", "trl", recipe.train.objective, *(["lora", "peft"] if adapter else []), *spec.tags]
    meta: dict[str, Any] = {
        "license": spec.license or "other",
        "base_model": base,
        "library_name": "peft" if adapter else "transformers",
        "pipeline_tag": "text-generation",
        "tags": list(dict.fromkeys(tags)),
    }
    if dataset:
        meta["datasets"] = [dataset]
    if spec.language:
        meta["language"] = spec.language
    return meta


def model_body(recipe: Recipe, run_dir: Path, repo_id: str, base: str, adapter: bool, dataset: str | None) -> str:
    """The model card's text: base, data, objective, evaluation, recipe."""
    t = recipe.train
    load = (
        [
            "from peft import AutoPeftModelForCausalLM",
            f'model = AutoPeftModelForCausalLM.from_pretrained("{repo_id}")',
        ]
        if adapter
        else [
            "from transformers import AutoModelForCausalLM",
            f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
        ]
    )
    lines = [
        f"# {repo_id.split('/')[-1]}",
        "",
        recipe.description or f"A student distilled from {base}.",
        "",
        f"- Base model: [{base}](https://huggingface.co/{base})",
        f"- Training data: [{dataset}](https://huggingface.co/datasets/{dataset})"
        if dataset
        else "- Training data: the run's curated set (not published)",
        f"- Objective: `{t.objective}` ({'LoRA adapter' if adapter else 'full fine-tune'}) with TRL; "
        f"epochs {t.epochs}, learning rate {t.learning_rate}, batch size {t.batch_size}, max length {t.max_length}"
        + (f", lmbda {t.lmbda}, beta {t.beta}, teacher `{t.teacher}`" if t.objective == "gkd" else "")
        + (
            f", soft labels from {'the stored top-k' if t.kd.source == 'stored' else f'the model `{t.teacher}`'}: "
            f"alpha {t.kd.alpha}, temperature {t.kd.temperature}, beta {t.kd.beta}"
            if t.objective == "kd"
            else ""
        ),
        "",
        "```python",
        *load,
        "```",
    ]
    ev = _json(run_dir / "eval" / "report.json")
    if ev:
        lines += [
            "",
            "## Evaluation",
            "",
            f"`sft eval` on {ev.get('prompts')} held-out prompts × {ev.get('samples_per_prompt')} answers per "
            f"model. Behaviour: {', '.join(ev.get('behaviour_checks') or [])}; clean: every other check passes "
            "(but `truncated`, reported as finished); joint: both; relevance: prompt↔answer similarity (English "
            "answers); empty, finished and loop-free: see Distillery's README. Brackets: bootstrap 95% intervals.",
            "",
        ]
        lines += [f"**{w}**" for w in ev.get("warnings", [])]
        head = ev.get("headline") or {}
        cols, rows = head.get("columns") or [], head.get("rows") or []
        if cols:
            lines += ["| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1)]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines + _recipe_and_footer(run_dir))
