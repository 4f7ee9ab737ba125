"""The recipe: one YAML file that every stage reads its own section of.

Validated with pydantic before any model loads, so that a typo fails in a second instead of after a
long download or generation. Errors name the file, the line, the field path and what is allowed.
`key.path=value` overrides from the command line are applied to the raw YAML before validation, so
they are checked exactly like the file itself.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from synth.errors import UserError

SECRET_WORDS = ("key", "token", "secret", "password")


class Strict(BaseModel):
    """Base for recipe sections: unknown fields are errors, so typos never pass silently."""

    model_config = ConfigDict(extra="forbid")


class RuntimeSpec(Strict):
    """Where and how models run on this machine."""

    threads: int | None = Field(None, ge=1, description="torch CPU threads; on a busy 2-core box 1 can beat 2")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"


class ModelSpec(Strict):
    """The student model."""

    path: str = Field("smollm2", description="'smollm2' = the embedded SmolLM2-135M-Instruct, else a folder")
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class OpenAISettings(Strict):
    """How to reach an OpenAI-compatible server. The API key comes from the environment only."""

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str | None = Field(None, description="model name sent to the server (default: teacher.path)")
    api_key_env: str = Field("OPENAI_API_KEY", description="name of the environment variable with the key")
    concurrency: int = Field(8, ge=1, le=1024)
    max_retries: int = Field(5, ge=0, le=100)
    timeout_s: float = Field(120.0, gt=0)
    backoff_s: float = Field(1.0, ge=0)


class VLLMSettings(Strict):
    """Settings for vLLM's offline engine (GPU only)."""

    tensor_parallel_size: int = Field(1, ge=1)
    data_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_model_len: int | None = Field(None, ge=1)
    engine_args: dict[str, Any] = Field(default_factory=dict, description="passed to vllm.LLM as they are")


class TeacherSpec(Strict):
    """The model that writes the completions, and the view of the prompt it gets."""

    path: str = Field("self", description="'self' = the student's own initial weights, else a model")
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    engine: Literal["transformers", "openai", "vllm"] = "transformers"
    system_prompt: str | None = Field(None, description="privileged context: only the teacher sees it")
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)


class PromptsSpec(Strict):
    """Where the prompts come from and which columns hold them."""

    path: str | None = Field(None, description="local .jsonl/.json/.parquet/.csv file")
    dataset: str | None = Field(None, description="a name for datasets.load_dataset, instead of a path")
    dataset_config: str | None = None
    split: str = "train"
    prompt_column: str = "prompt"
    messages_column: str | None = Field(None, description="a column of chat messages instead of a string")
    id_column: str | None = Field("id", description="source ids kept in meta, used when present")
    system_prompt: str | None = Field(None, description="system prompt the student sees (both views)")
    meta_columns: list[str] = Field(default_factory=list)
    limit: int | None = Field(None, ge=1)


class GenerateSpec(Strict):
    """Sampling parameters and batching for `synth generate`."""

    n: int = Field(4, ge=1, le=256, description="samples per prompt")
    temperature: float = Field(0.7, ge=0, le=5)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    max_new_tokens: int = Field(64, ge=1)
    seed: int = 0
    logprobs: int | None = Field(None, ge=1, le=20, description="keep the teacher's top-k logprobs")
    batch_size: int = Field(32, ge=1, description="sequences per forward pass (transformers engine)")
    prompts_per_shard: int = Field(32, ge=1, description="prompts per parquet shard (the unit of resume)")


class Recipe(Strict):
    """A whole Distillery recipe. Later stages fill their sections in their own issues."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    recipe_hash: str | None = Field(None, description="written into recipe.resolved.yaml; ignored on load")
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    teacher: TeacherSpec = Field(default_factory=TeacherSpec)
    prompts: PromptsSpec = Field(default_factory=PromptsSpec)
    generate: GenerateSpec = Field(default_factory=GenerateSpec)
    curate: dict[str, Any] = Field(default_factory=dict)
    review: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(default_factory=dict)
    publish: dict[str, Any] = Field(default_factory=dict)

    def content_hash(self) -> str:
        """Hash of everything the recipe says (not where it was read from)."""
        data = self.model_dump(mode="json", exclude={"recipe_hash"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into its path and a YAML-typed value (numbers, booleans, null, lists)."""
    if "=" not in text:
        raise UserError(f"override {text!r} is not of the form key.path=value", "e.g. generate.n=4")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in parts):
        raise UserError(f"override {text!r}: {key!r} is not a field path", "e.g. prompts.path=my.jsonl")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each `key.path=value` in the raw recipe dict, creating sections as needed."""
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                path = ".".join(parts[: i + 1])
                raise UserError(f"override {text!r}: {path} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def _line_index(text: str) -> dict[tuple[str, ...], int]:
    """Map each field path in the YAML text to its 1-based line number, for error messages."""
    index: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                child = (*path, str(key_node.value))
                index[child] = key_node.start_mark.line + 1
                walk(value_node, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                index[(*path, str(i))] = item.start_mark.line + 1
                walk(item, (*path, str(i)))

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return index
    if root is not None:
        walk(root, ())
    return index


def _allowed_fields(loc: tuple[Any, ...]) -> list[str]:
    """The field names allowed in the section that holds `loc`, for 'unknown field' errors."""
    model: Any = Recipe
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return []
        model = field.annotation
    return sorted(getattr(model, "model_fields", {}))


def format_validation_error(err: ValidationError, source: str, lines: dict[tuple[str, ...], int]) -> str:
    """One line per problem: `file:line: field.path: what is wrong (what is allowed)`."""
    out = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        path = ".".join(loc) or "(top level)"
        where = f"{source}:{lines[loc]}" if loc in lines else source
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            if any(w in loc[-1].lower() for w in SECRET_WORDS):
                msg = (
                    "unknown field; secrets never go in a recipe: put the key in an environment "
                    "variable (for the openai engine, the one named by teacher.openai.api_key_env)"
                )
            else:
                allowed = _allowed_fields(loc)
                msg = "unknown field" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
        elif "input" in e and not isinstance(e["input"], dict | list):
            msg = f"{msg} (got {e['input']!r})"
        out.append(f"{where}: {path}: {msg}")
    return "recipe is not valid:\n  " + "\n  ".join(out)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; raise UserError naming the file, line and field."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"recipe {p} not found", "give the path to a YAML recipe, e.g. recipes/answer-in-french.yaml")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"recipe {p} cannot be read: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise UserError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise UserError(f"{p}: a recipe is a YAML mapping (name:, model:, teacher:, ...), got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    data.pop("recipe_hash", None)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, str(p), _line_index(text))) from None


def dump_resolved(recipe: Recipe, path: Path) -> str:
    """Write the recipe after overrides, with its hash, next to a run's outputs; return the hash."""
    digest = recipe.content_hash()
    data = {"recipe_hash": digest, **recipe.model_dump(mode="json", exclude={"recipe_hash"})}
    from synth.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return digest
