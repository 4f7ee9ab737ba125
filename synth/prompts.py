"""Load prompts from local files or a `datasets` name and build the student's and teacher's views.

Structural problems (a malformed JSON line, a missing column, a wrongly typed value) stop the run
before any generation, naming the file and line. An empty prompt is not a structural problem: it
becomes a row rejected with its reason, so one bad prompt never costs the rest of the run.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from synth.errors import UserError
from synth.recipe import PromptsSpec, TeacherSpec
from synth.records import Messages, PromptItem, prompt_id_for

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def resolve_path(path: str, recipe_dir: Path | None) -> Path:
    """Relative paths resolve against the recipe's folder (so a recipe and its data move together),
    then, for recipes written before that rule, against the working folder."""
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() else ([recipe_dir / p] if recipe_dir else []) + [Path.cwd() / p]
    for c in candidates:
        if c.is_file():
            return c
    tried = ", ".join(str(c) for c in candidates)
    raise UserError(f"prompts file {path} not found (tried {tried})", "set prompts.path=FILE")


def _iter_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(
                    f"{path}:{n}: not valid JSON ({exc.msg} at column {exc.colno})",
                    "each line of a .jsonl file must be one JSON object; fix or remove that line",
                ) from None
            if not isinstance(obj, dict):
                raise UserError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            yield f"{path}:{n}", obj


def _iter_json(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: a .json prompts file must hold a list of objects")
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise UserError(f"{path}: item {i}: expected an object, got {type(obj).__name__}")
        yield f"{path} item {i}", obj


def _iter_csv(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            yield f"{path}:{reader.line_num}", dict(row)


def _iter_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    for i, row in enumerate(pq.read_table(path).to_pylist()):
        yield f"{path} row {i}", row


def _iter_dataset(spec: PromptsSpec) -> Iterator[tuple[str, dict[str, Any]]]:
    import datasets

    try:
        ds = datasets.load_dataset(spec.dataset, spec.dataset_config, split=spec.split)
    except Exception as exc:  # datasets raises many types for a missing or unreachable dataset
        raise UserError(
            f"dataset {spec.dataset!r} (split {spec.split!r}) could not be loaded: {exc}",
            "check prompts.dataset / prompts.split, or use prompts.path for a local file",
        ) from None
    for i, row in enumerate(ds):
        yield f"dataset {spec.dataset} row {i}", row


def iter_source(spec: PromptsSpec, recipe_dir: Path | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (location, raw row) from the configured source; location is used in error messages."""
    if bool(spec.path) == bool(spec.dataset):
        raise UserError("set exactly one of prompts.path (a local file) or prompts.dataset (a dataset name)")
    if spec.dataset:
        yield from _iter_dataset(spec)
        return
    path = resolve_path(spec.path or "", recipe_dir)
    readers = {".jsonl": _iter_jsonl, ".json": _iter_json, ".csv": _iter_csv, ".parquet": _iter_parquet}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise UserError(f"{path}: unsupported prompts file type {path.suffix!r}; use one of {', '.join(SUFFIXES)}")
    try:
        yield from reader(path)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason})") from None


def _messages_from(value: Any, where: str, column: str) -> Messages:
    if not isinstance(value, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        raise UserError(
            f"{where}: column {column!r} must be a list of {{role, content}} messages, got {str(value)[:80]!r}"
        )
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _student_view(row: dict[str, Any], where: str, spec: PromptsSpec) -> Messages:
    column = spec.messages_column or spec.prompt_column
    if column not in row:
        raise UserError(
            f"{where}: no column {column!r}; columns here: {', '.join(map(str, row)) or '(none)'}",
            "map yours with prompts.prompt_column=NAME (a string) or prompts.messages_column=NAME (chat messages)",
        )
    value = row[column]
    if spec.messages_column:
        messages = _messages_from(value, where, column)
    elif value is None or isinstance(value, str):
        messages = [{"role": "user", "content": value or ""}]
    else:
        raise UserError(f"{where}: column {column!r} must be a string, got {type(value).__name__} {value!r:.60}")
    if spec.system_prompt and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": spec.system_prompt}, *messages]
    return messages


def teacher_view(prompt: Messages, teacher: TeacherSpec) -> Messages:
    """The teacher's view: the student's messages with the privileged system prompt added."""
    if not teacher.system_prompt:
        return [dict(m) for m in prompt]
    rest = [dict(m) for m in prompt if m["role"] != "system"]
    own = [m["content"] for m in prompt if m["role"] == "system"]
    system = "\n\n".join([teacher.system_prompt, *own])
    return [{"role": "system", "content": system}, *rest]


def load_prompts(
    spec: PromptsSpec, teacher: TeacherSpec, recipe_dir: Path | None = None, limit: int | None = None
) -> tuple[list[PromptItem], int]:
    """Read prompts, build both views, drop exact repeats; return (items, repeats dropped)."""
    items: list[PromptItem] = []
    seen: set[str] = set()
    repeats = 0
    limit = limit or spec.limit
    for where, row in iter_source(spec, recipe_dir):
        prompt = _student_view(row, where, spec)
        tprompt = teacher_view(prompt, teacher)
        pid = prompt_id_for(prompt, tprompt)
        if pid in seen:
            repeats += 1
            continue
        seen.add(pid)
        meta: dict[str, Any] = {"source": spec.dataset or spec.path}
        if spec.id_column and row.get(spec.id_column) is not None:
            meta["source_id"] = str(row[spec.id_column])
        for col in spec.meta_columns:
            if col not in row:
                raise UserError(f"{where}: prompts.meta_columns names {col!r}, which this row does not have")
            meta[col] = row[col]
        empty = not any(m["content"].strip() for m in prompt if m["role"] == "user")
        items.append(PromptItem(pid, prompt, tprompt, meta, error="empty prompt" if empty else None))
        if limit and len(items) >= limit:
            break
    if not items:
        raise UserError("the prompts source holds no prompts", "check prompts.path / prompts.dataset")
    return items, repeats
