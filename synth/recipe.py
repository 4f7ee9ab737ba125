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
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from synth.curate.config import CurateSpec
from synth.errors import UserError
from synth.publish.config import PublishSpec
from synth.review.config import ReviewSpec
from synth.specs import (
    EvalSpec,
    GenerateSpec,
    ModelSpec,
    OpenAISettings,
    PromptsSpec,
    PruneSpec,
    RuntimeSpec,
    Strict,
    SynthesizeSpec,
    TeacherSpec,
    TrainSpec,
    VLLMSettings,
)

__all__ = [
    "GenerateSpec",
    "ModelSpec",
    "OpenAISettings",
    "PromptsSpec",
    "Recipe",
    "RuntimeSpec",
    "TeacherSpec",
    "VLLMSettings",
    "load_recipe",
]

SECRET_WORDS = ("key", "token", "secret", "password")


class Recipe(Strict):
    """A whole Distillery recipe. Later stages fill their sections in their own issues."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    teacher: TeacherSpec = Field(default_factory=TeacherSpec)
    prompts: PromptsSpec = Field(default_factory=PromptsSpec)
    synthesize: SynthesizeSpec | None = None
    generate: GenerateSpec = Field(default_factory=GenerateSpec)
    curate: CurateSpec = Field(default_factory=CurateSpec)
    review: ReviewSpec = Field(default_factory=ReviewSpec)
    prune: PruneSpec | None = None
    train: TrainSpec = Field(default_factory=TrainSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    publish: PublishSpec = Field(default_factory=PublishSpec)

    @model_validator(mode="after")
    def _scratch_arm(self) -> Recipe:
        """A from-scratch student trains into its own arm (train/<objective>-scratch), never over the
        pretrained one's; LoRA on random weights would train almost nothing, so it is refused."""
        if self.model.init == "random":
            if self.train.lora.enabled:
                raise ValueError(
                    "model.init=random needs train.lora.enabled=false (a random model must train every weight)"
                )
            if self.train.name is None:
                self.train = self.train.model_copy(update={"name": f"{self.train.folder}-scratch"})
        if self.train.folder in ("teacher", "base_student"):
            raise ValueError(f"train.name {self.train.folder!r} is the name of a model sft eval always shows")
        return self

    @model_validator(mode="after")
    def _codistill_pair(self) -> Recipe:
        """Refuse a co-distillation pair that cannot learn from each other: two copies of the same weights,
        trained in full on the same batches, stay identical (their divergence is 0 at every step)."""
        t = self.train
        if t.objective != "codistill":
            return self
        if self.model.init == "random":
            raise ValueError(
                "train.objective=codistill trains a pretrained student (model.init=random is not supported)"
            )
        # (the teacher as a copy of the student reads teacher_prompt: whether that differs from the prompt
        # is for `sft run` to see in the rows)
        if t.codistill.partner in ("self", self.model.path) and not t.lora.enabled:
            raise ValueError(
                "train.codistill.partner is a copy of the student: trained in full on the same batches the two stay "
                "identical; set train.lora.enabled=true (each draws its own adapter) or name another model"
            )
        return self

    def content_hash(self) -> str:
        """Hash of what the recipe asks for: everything it says but `runtime` (threads, device, executor,
        cluster), which says where and how fast the work runs; a run moved to a Ray cluster, or resumed
        there, keeps its hash. (Another thread count or device can still change float sums, hence a
        sampled token: the rows' `teacher` provenance says how they were sampled, not on what.)"""
        data = self.model_dump(mode="json", exclude={"runtime"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def objective_overrides(folder: str) -> str:
    """The overrides that train into train/<folder>: `kd-stored` is `train.objective=kd train.kd.source=stored`,
    `sft-scratch` is `train.objective=sft model.init=random`, `codistill-partner` is trained by the
    `codistill` run; another name, `train.name=<folder>`."""
    if folder == "codistill-partner":
        return "train.objective=codistill (which trains codistill and its partner)"
    if folder.endswith("-scratch") and folder != "-scratch":
        return f"{objective_overrides(folder.removesuffix('-scratch'))} model.init=random"
    if folder in ("kd-stored", "kd-model"):
        return f"train.objective=kd train.kd.source={folder.removeprefix('kd-')}"
    if folder in ("sft", "gkd", "kd", "codistill"):
        return f"train.objective={folder}"
    return f"train.name={folder} (with the settings that arm was trained with)"


def behaviour_checks(recipe: Recipe, among: set[str] | None = None) -> list[str]:
    """The curate checks that define the behaviour (all must pass): `eval.behaviour_check`, else
    `curate.score`. With `among` (the row checks the caller will run), every name must be one of them:
    a misnamed check is a UserError before any model time is spent. One rule for `sft eval`,
    `synth probe` and curate's advice when nothing is kept."""
    names = recipe.eval.behaviour_check or recipe.curate.score
    if not names:
        raise UserError(
            "no behaviour check: neither eval.behaviour_check nor curate.score names one",
            "set eval.behaviour_check to the curate check(s) that define the behaviour (a name or a list)",
        )
    names = [names] if isinstance(names, str) else list(names)
    missing = [n for n in names if among is not None and n not in among]
    if missing:
        raise UserError(
            f"eval.behaviour_check names {', '.join(map(repr, missing))}, not a row check in curate.checks "
            f"(row checks: {', '.join(sorted(among or ())) or 'none'})",
            "set eval.behaviour_check to the name(s) of the check(s) that define the behaviour",
        )
    return names


def teacher_path(recipe: Recipe) -> str:
    """The teacher's model path, `self` resolved to the student's (model.path)."""
    return recipe.model.path if recipe.teacher.path == "self" else recipe.teacher.path


def shown_override(text: str) -> str:
    """An override as messages may show it: the value masked where the key names a credential
    (`review.api_key=***`) or where a variable's name belongs but something else was given."""
    from synth.redact import MASK, is_secret_key, is_variable_name

    key, sep, value = text.partition("=")
    last = key.strip().split(".")[-1]
    hidden = is_secret_key(last) or (last.lower().endswith("_env") and not is_variable_name(value.strip()))
    return f"{key}{sep}{MASK}" if sep and hidden and value else text


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into its path and a YAML-typed value (numbers, booleans, null, lists)."""
    if "=" not in text:
        raise UserError(f"override {shown_override(text)!r} is not of the form key.path=value", "e.g. generate.n=4")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*|\d+", p) for p in parts):
        raise UserError(f"override {shown_override(text)!r}: {key!r} is not a field path", "e.g. prompts.path=my.jsonl")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each `key.path=value` in the raw recipe dict, creating sections as needed.

    A number in the path indexes a list, e.g. `curate.checks.2.threshold=0.9`.
    """
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(parts):
            path = ".".join(parts[: i + 1])
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    items = f"the list has {len(node)} items (0..{len(node) - 1})"
                    raise UserError(f"override {shown_override(text)!r}: {path}: {items}")
                key: Any = int(part)
            elif isinstance(node, dict):
                key = part
            else:
                raise UserError(f"override {shown_override(text)!r}: {'.'.join(parts[:i])} is a value, not a section")
            if last:
                node[key] = value
            else:
                if isinstance(node, dict) and node.get(key) is None:
                    node[key] = {}
                node = node[key]
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


def _model_at(model: Any, part: str) -> Any:
    """Step from a model (or list / tagged union of models) to what `part` of an error path names."""
    origin = typing.get_origin(model)
    if origin is typing.Annotated:
        return _model_at(typing.get_args(model)[0], part)
    if origin is list:
        return typing.get_args(model)[0] if part.isdigit() else None
    if origin in (typing.Union, types.UnionType):  # a tagged union: `part` is the tag
        for member in typing.get_args(model):
            tag = getattr(member, "model_fields", {}).get("type")
            if tag is not None and part in typing.get_args(tag.annotation):
                return member
        return None
    field = getattr(model, "model_fields", {}).get(part)
    return None if field is None else field.annotation


def _allowed_fields(loc: tuple[Any, ...]) -> list[str]:
    """The field names allowed in the section that holds `loc`, for 'unknown field' errors."""
    model: Any = Recipe
    for part in loc[:-1]:
        model = _model_at(model, str(part))
        if model is None:
            return []
    return sorted(getattr(model, "model_fields", {}))


def format_validation_error(
    err: ValidationError,
    source: str,
    lines: dict[tuple[str, ...], int],
    overridden: dict[tuple[str, ...], str] | None = None,
) -> str:
    """One line per problem: `file:line: field.path: what is wrong (what is allowed)`.

    A value set by a command-line override is blamed on the override (`override a.b=x`), not on
    the recipe line that the override replaced.
    """
    out = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        # A tagged union adds its tag to the path (curate.checks.0.near_dedup.x); the YAML has no such key.
        spellings = [loc, *(loc[:i] + loc[i + 1 :] for i in range(len(loc)))]
        override = next(
            (
                text
                for path, text in (overridden or {}).items()
                if any(c[: len(path)] == path for c in spellings) or path[: len(loc)] == loc
            ),
            None,
        )
        path = ".".join(loc) or "(top level)"
        key = next((k for k in spellings if k in lines), None)
        where = f"override {shown_override(override)}" if override else f"{source}:{lines[key]}" if key else source
        msg = e["msg"]
        secret_field = bool(loc) and any(w in loc[-1].lower() for w in SECRET_WORDS)
        if e["type"] == "extra_forbidden":
            if secret_field:
                msg = f"unknown field; secrets never go in a recipe: {_secret_home(loc)}"
            else:
                allowed = _allowed_fields(loc)
                msg = "unknown field" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
        elif "input" in e and not isinstance(e["input"], dict | list) and not secret_field:
            msg = f"{msg} (got {e['input']!r})"
        out.append(f"{where}: {path}: {msg}")
    return "recipe is not valid: " + "; ".join(out)  # one line, however many problems


def _secret_home(loc: tuple[str, ...]) -> str:
    """Where the credential of a recipe section comes from instead (named per section: a hint naming
    the openai engine's variable to someone setting review's key sends them the wrong way)."""
    section = loc[0] if loc else ""
    if section == "review":
        return "put the Argilla API key in the environment variable ARGILLA_API_KEY"
    if section == "publish":
        return "put the Hugging Face token in the environment variable HF_TOKEN (or run `hf auth login`)"
    if section == "teacher":
        return (
            "put the key in an environment variable and name it in teacher.openai.api_key_env (default OPENAI_API_KEY)"
        )
    return "put it in an environment variable"


MAX_NODES = 100_000  # values after alias expansion: a recipe has hundreds, a "billion laughs" bomb billions


def _expanded_size(node: yaml.Node | None, memo: dict[int, int] | None = None) -> int:
    """How many values `node` holds once every alias is expanded (shared nodes counted each time)."""
    if node is None:
        return 0
    memo = {} if memo is None else memo
    if id(node) not in memo:
        memo[id(node)] = 1  # a self-referencing alias counts once
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        memo[id(node)] = 1 + sum(_expanded_size(c, memo) for c in children)
    return memo[id(node)]


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML would silently keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be a plain value, not a list or mapping", key_node.start_mark
                ) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _too_deep(p: Path) -> UserError:
    """Nesting deep enough to exhaust Python's recursion (in YAML parsing or in validation)."""
    return UserError(f"{p}: nested too deeply to read", "a recipe is a few levels of sections; flatten it")


def _parse_yaml(text: str, p: Path) -> Any:
    """The recipe's YAML as data; every way it can be unreadable is a UserError naming file:line."""
    hint = "fix the YAML at that line (indent with spaces, quote values with ':' or '#')"
    try:
        size = _expanded_size(yaml.compose(text, Loader=yaml.SafeLoader))
        if size > MAX_NODES:
            raise UserError(
                f"{p}: its YAML aliases (*name) expand to {size:,} values; a recipe may hold at most {MAX_NODES:,}",
                "write the values out instead of nesting aliases of aliases",
            )
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        raise UserError(f"{where}: not valid YAML: {problem}", hint) from None
    except RecursionError:
        raise _too_deep(p) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; raise UserError naming the file, line and field."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"recipe {p} not found", "give the path to a YAML recipe, e.g. recipes/answer-in-french.yaml")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"recipe {p} cannot be read: {exc}", "save the recipe as UTF-8 text") from None
    data = _parse_yaml(text, p)
    if not isinstance(data, dict):
        raise UserError(
            f"{p}: a recipe is a YAML mapping (name:, model:, teacher:, ...), got {type(data).__name__}",
            "start from recipes/concise-answers.yaml",
        )
    data = apply_overrides(data, overrides or [])
    data.pop("recipe_hash", None)  # a recipe.resolved.yaml loads as a recipe; its hash is recomputed
    overridden = {tuple(parse_override(o)[0]): o for o in overrides or []}
    try:
        return _anchor_model_paths(Recipe.model_validate(data), p.parent)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, str(p), _line_index(text), overridden)) from None
    except RecursionError:
        raise _too_deep(p) from None


PATHS_RULE = (
    "Relative paths: what a recipe reads (prompt files, eval sets, check modules, local models) is looked up "
    "beside the recipe first, then in the folder you run in; what a command writes (runs/NAME, --run-dir, "
    "prune.out) goes under the folder you run in."
)


def _anchor_model_paths(recipe: Recipe, recipe_dir: Path) -> Recipe:
    """Model folders follow `PATHS_RULE` as data files do (`synth.prompts.resolve_path`): a relative
    path that exists beside the recipe is rewritten relative to the working folder, where every
    loader looks. Aliases ('self', the embedded model's names) win over a folder of that name, as in
    `resolve_model`; a server teacher's `teacher.path` is the name it serves, not a folder."""
    import os

    from synth.models import EMBEDDED_ALIASES

    def anchored(value: str) -> str:
        p = Path(value).expanduser()
        if p.is_absolute() or value == "self" or value.lower() in EMBEDDED_ALIASES:
            return value
        if recipe_dir.resolve() == Path.cwd().resolve():
            return value
        beside = recipe_dir / p
        return os.path.relpath(beside) if (beside / "config.json").is_file() else value

    served = recipe.teacher.engine == "openai"
    updates = {
        "model": recipe.model.model_copy(update={"path": anchored(recipe.model.path)}),
        "teacher": recipe.teacher.model_copy(
            update={"path": recipe.teacher.path if served else anchored(recipe.teacher.path)}
        ),
        "train": recipe.train.model_copy(update={"teacher": anchored(recipe.train.teacher)}),
    }
    if recipe.prune is not None:
        updates["prune"] = recipe.prune.model_copy(update={"source": anchored(recipe.prune.source)})
    return recipe.model_copy(update=updates)


def dump_resolved(recipe: Recipe, path: Path) -> str:
    """Write the recipe after overrides, with its hash, next to a run's outputs; return the hash."""
    digest = recipe.content_hash()
    data = {"recipe_hash": digest, **recipe.model_dump(mode="json")}
    from synth.io import atomic_write_text
    from synth.redact import redact

    atomic_write_text(path, yaml.safe_dump(redact(data), sort_keys=False, allow_unicode=True))
    return digest
