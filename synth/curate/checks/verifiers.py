"""Programmatic verifiers: regex, JSON schema, exact match against a reference, and user functions.

Each gives a score (1/0, or the user's number) that can rank samples for best-of-n. A user function
that raises on a row rejects that row with the exception as its reason; it never stops the run.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import string
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from synth.curate.base import CheckSpec, Context, Row, RowCheck, Verdict, runs, snippet
from synth.errors import UserError
from synth.records import completion_text

FENCE = re.compile(r"^\s*```[\w-]*\s*\n(.*?)\n\s*```\s*$", re.DOTALL)


class RegexCheck(CheckSpec):
    type: Literal["regex"]
    scores = True  # 1 or 0
    score_bounds = (0.0, 1.0)
    pattern: str
    must_match: bool = True
    ignore_case: bool = False


@runs(RegexCheck)
class RegexVerifier(RowCheck):
    """Passes when the completion matches (or, with must_match false, does not match) a pattern."""

    def setup(self, ctx: Context) -> None:
        try:
            self.pattern = re.compile(self.spec.pattern, re.IGNORECASE if self.spec.ignore_case else 0)
        except re.error as exc:
            msg = f"curate check {self.name!r}: pattern {self.spec.pattern!r} is not a valid regex: {exc}"
            raise UserError(msg) from None

    def run(self, rows: list[Row]) -> list[Verdict]:
        out = []
        for r in rows:
            found = self.pattern.search(completion_text(r)) is not None
            ok = found == self.spec.must_match
            reason = "" if ok else ("no match for " if self.spec.must_match else "matches ") + repr(self.spec.pattern)
            out.append(Verdict(ok, score=float(ok), reason=reason))
        return out


class JsonSchemaCheck(CheckSpec):
    type: Literal["json_schema"]
    scores = True  # 1 or 0
    score_bounds = (0.0, 1.0)
    json_schema: dict[str, Any] = Field(alias="schema")


@runs(JsonSchemaCheck)
class JsonSchemaVerifier(RowCheck):
    """Passes when the completion (optionally inside a ``` fence) is JSON valid under a schema."""

    def setup(self, ctx: Context) -> None:
        import jsonschema

        self.where = f"{self.field(ctx)}.schema"
        cls = jsonschema.validators.validator_for(self.spec.json_schema)
        try:
            cls.check_schema(self.spec.json_schema)
        except jsonschema.SchemaError as exc:
            raise UserError(f"{self.where}: the schema is not valid: {exc.message}") from None
        self.validator = cls(self.spec.json_schema)
        for ref in _refs(self.spec.json_schema):  # an unresolvable $ref would otherwise fail on the first row
            try:
                self.validator.evolve(schema={"$ref": ref}).is_valid(None)
            except Exception as exc:  # referencing / jsonschema raise several types for a bad reference
                raise UserError(
                    f"{self.where}: $ref {ref!r} cannot be resolved ({type(exc).__name__})",
                    "point $ref at a definition inside the schema (e.g. #/$defs/Name); remote refs are not fetched",
                ) from None

    def run(self, rows: list[Row]) -> list[Verdict]:
        out = []
        for r in rows:
            text = completion_text(r)
            m = FENCE.match(text)
            try:
                value = json.loads(m.group(1) if m else text)
            except json.JSONDecodeError as exc:
                out.append(Verdict(False, 0.0, f"not JSON: {exc.msg} at line {exc.lineno}"))
                continue
            except (ValueError, RecursionError) as exc:  # an integer too long, nesting too deep
                out.append(Verdict(False, 0.0, f"not JSON that can be read: {type(exc).__name__}"))
                continue
            error = next(iter(self.validator.iter_errors(value)), None)
            if error is None:
                out.append(Verdict(True, 1.0))
            else:
                where = "/".join(map(str, error.absolute_path)) or "(root)"
                out.append(Verdict(False, 0.0, f"schema: {where}: {snippet(error.message, 100)}"))
        return out


def _refs(node: Any) -> list[str]:
    """Every `$ref` string in a schema, at any depth."""
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _normalize(text: str) -> str:
    table = str.maketrans("", "", string.punctuation)
    return " ".join(text.lower().translate(table).split())


class ExactMatchCheck(CheckSpec):
    type: Literal["exact_match"]
    scores = True  # 1 or 0
    score_bounds = (0.0, 1.0)
    reference: str = Field(description="name of the meta field holding the reference (see prompts.meta_columns)")
    mode: Literal["exact", "contains"] = "exact"
    normalize: bool = True


@runs(ExactMatchCheck)
class ExactMatchVerifier(RowCheck):
    """Compares the completion with a reference carried in the row's meta (prompts.meta_columns)."""

    def run(self, rows: list[Row]) -> list[Verdict]:
        key, mode = self.spec.reference, self.spec.mode
        out = []
        for r in rows:
            ref = json.loads(r["meta"] or "{}").get(key)
            if ref is None:
                out.append(Verdict(False, 0.0, f"no reference {key!r} in meta; add it to prompts.meta_columns"))
                continue
            got, want = completion_text(r), str(ref)
            if self.spec.normalize:
                got, want = _normalize(got), _normalize(want)
            ok = got == want if mode == "exact" else want in got
            out.append(Verdict(ok, float(ok), "" if ok else f"{mode} match failed: want {snippet(str(ref), 40)!r}"))
        return out


def local_module(ref: str, recipe_dir: Path | None) -> tuple[Path, Path] | None:
    """Where `load_function` finds a check's module beside the recipe or in the working folder: (the
    module's file, what to ship to Ray workers on other machines: that file, or the top package's
    folder for a dotted name or a package); None for a module that is installed (on sys.path) or missing."""
    module = ref.split(":")[0]
    parts = module.split(".")
    for folder in (recipe_dir, Path.cwd()):
        if folder is None:
            continue
        for file in (folder / Path(*parts).with_suffix(".py"), folder / Path(*parts) / "__init__.py"):
            if file.is_file():
                package = len(parts) > 1 or file.name == "__init__.py"
                return file.resolve(), (folder / parts[0]).resolve() if package else file.resolve()
    return None


def check_sources(refs: list[str], recipe_dir: Path | None) -> dict[str, bytes]:
    """The source files of the python check modules that `local_module` finds (a module file, or every
    .py file of the top package of a dotted name or of a package named alone), keyed by their path
    relative to the folder they sit in: what a worker on a machine without that folder needs to import
    them (`install_sources`)."""
    sources: dict[str, bytes] = {}
    for ref in refs:
        if found := local_module(ref, recipe_dir):
            shipped = found[1]
            files = [shipped] if shipped.is_file() else sorted(shipped.rglob("*.py"))
            for path in files:
                sources[str(path.relative_to(shipped.parent))] = path.read_bytes()
    return sources


def install_sources(sources: dict[str, bytes]) -> Path | None:
    """Write shipped check modules into a fresh folder put first on sys.path, as the recipe's folder is
    for the driver (a module there wins over an installed one of the same name); where the recipe's
    and working folders exist too, `load_function` puts them before it, with the same files. Only the
    module, or a dotted module's whole package, travels: helpers imported from beside a single-file
    check do not (make them a package). The folder is removed when the process ends."""
    import atexit
    import shutil
    import tempfile

    if not sources:
        return None
    folder = Path(tempfile.mkdtemp(prefix="distillery-checks-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    for relative, data in sources.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)
    sys.path.insert(0, str(folder))
    return folder


def load_function(ref: str, where: str, recipe_dir: Path | None = None) -> Callable[[Row], Any]:
    """Import `module:function`, looking in the recipe's folder and the working folder too (users keep
    checks beside recipes, and relative paths in a recipe start at its folder)."""
    module_name, func_name = ref.split(":")
    folders = [str(f.resolve()) for f in (recipe_dir, Path.cwd()) if f is not None]
    for folder in reversed(folders):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name.split(".")[0]:
            raise UserError(f"{where}: cannot import {module_name!r}: ModuleNotFoundError: {exc}") from None
        raise UserError(
            f"{where}: no module {module_name!r} in {' or '.join(dict.fromkeys(folders))} or on PYTHONPATH",
            f"put {module_name.replace('.', '/')}.py beside the recipe, or add its folder to PYTHONPATH",
        ) from None
    except Exception as exc:  # any import-time error of user code
        raise UserError(f"{where}: cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise UserError(f"{where}: {module_name!r} has no function {func_name!r}")
    return func


RAISED = "raised"  # the tally item of a row on which the user's function raised


def raised_on_every_row(name: str, function: str, evaluated: int, tally: Counter[tuple[str, str]]) -> UserError | None:
    """The error for a python check whose function raised on every row it saw (two or more): a bug in
    the function, not a verdict on the rows, and rejecting them all would look like a teacher that
    never passes the check. Decided over the whole run (the tally adds up across shards and Ray workers)."""
    raised = {text: n for (item, text), n in tally.items() if item == RAISED}
    if evaluated < 2 or sum(raised.values()) < evaluated:
        return None
    most = max(sorted(raised), key=raised.__getitem__)
    return UserError(
        f"curate check {name!r}: {function} raised on every one of {evaluated} rows ({most})",
        "a function that raises on every row is taken for a bug: fix it (a row is a dict with prompt, "
        "completion, meta; see `synth.records`), and return False to reject a row; the previous curated/ "
        "is untouched",
    )


class PythonCheck(CheckSpec):
    type: Literal["python"]
    scores = True  # the function's number; True/False count as 1/0
    score_bounds = (0.0, 1.0)
    function: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", description="module:function")
    min_score: float | None = None


@runs(PythonCheck)
class PythonVerifier(RowCheck):
    """Calls a user function on each row.

    The function gets the row (a dict with `prompt`, `completion`, `meta`, ...; the completion in TRL's
    conversational shape, so its text is `row["completion"][0]["content"]`, or
    `synth.records.completion_text(row)`) and returns a bool, a number (a score; `min_score` decides),
    `(score, reason)`, or `{"passed", "score", "reason"}`.
    """

    def setup(self, ctx: Context) -> None:
        self.func = load_function(self.spec.function, f"curate check {self.name!r}", ctx.recipe_dir)

    def run(self, rows: list[Row]) -> list[Verdict]:
        out = []
        for r in rows:
            try:
                value = self.func(r)
            except Exception as exc:  # user code: record, never crash the run
                why = f"{type(exc).__name__}: {exc}"
                self.tally[RAISED, snippet(why, 200)] += 1  # see `raised_on_every_row` and the curate report
                out.append(Verdict(False, None, f"{self.spec.function} raised {why}"))
                continue
            try:
                out.append(self._verdict(value))
            except Exception as exc:  # a value that is not a verdict (NaN, passed="no"): that row rejected
                out.append(Verdict(False, None, f"{self.spec.function} raised {type(exc).__name__}: {exc}"))
        return out

    def _verdict(self, value: Any) -> Verdict:
        """The user's return value as a verdict, read strictly: a value that is not what the docstring
        promises (a NaN score, `passed: "no"`) rejects the row saying so, never counts as a pass."""
        min_score = self.spec.min_score
        fn = self.spec.function
        if isinstance(value, bool):
            return Verdict(value, float(value), "" if value else f"{fn} returned False")
        if isinstance(value, int | float):
            score = _score(value)
            ok = min_score is None or score >= min_score
            return Verdict(ok, score, "" if ok else f"score {score:g} < min_score {min_score:g}")
        if isinstance(value, tuple) and len(value) == 2:
            score, reason = _score(value[0]), value[1]
            ok = min_score is None or score >= min_score
            return Verdict(ok, score, "" if ok else str(reason))
        if isinstance(value, dict):
            score = None if value.get("score") is None else _score(value["score"])
            passed = value.get("passed")
            if passed is not None and not isinstance(passed, bool):
                raise TypeError(f"returned passed={passed!r}; `passed` must be true or false")
            ok = passed if passed is not None else min_score is None or (score is not None and score >= min_score)
            return Verdict(ok, score, str(value.get("reason", "")) or ("" if ok else f"{fn} did not pass"))
        raise TypeError(f"returned {type(value).__name__}; expected bool, number, (score, reason) or dict")


def _score(value: Any) -> float:
    """A finite number, or TypeError (the row is rejected with that reason)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"returned the score {value!r}; a score must be a finite number")
    return float(value)
