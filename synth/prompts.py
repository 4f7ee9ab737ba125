"""Load prompts from local files or a `datasets` name and build the student's and teacher's views.

Structural problems (a malformed JSON line, a broken CSV quote, a missing column, a wrongly typed
value, a file that is not UTF-8) stop the run before any generation with a `UserError` naming the
file and line (or item / row), so the CLI prints one line and exits 2. Nothing is silently merged
or dropped: a CSV row with the wrong number of fields or a JSON object with a repeated key is an
error, not a guess. An empty prompt is not a structural problem: it becomes a row rejected with its
reason, so one bad prompt never costs the rest of the run.
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import numbers
import reprlib
import uuid
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from synth.errors import UserError, first_line
from synth.records import Messages, PromptItem, prompt_id_for
from synth.specs import PromptsSpec, TeacherSpec

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
ROLES = ("system", "user", "assistant")
# Python's csv refuses fields over 128 KiB by default. A long prompt is not a malformed file
# (generation rejects a prompt too long for the model as a row error), so allow fields up to 2 GiB.
CSV_FIELD_LIMIT = 2**31 - 1
MAX_META_DEPTH = 64  # deeper meta would overflow json.dumps when the rows are written

UTF8_HINT = "re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 IN > OUT`, or 'Save as UTF-8' in an editor)"
JSONL_HINT = "each line of a .jsonl file must be one JSON object; fix or remove that line"
JSON_HINT = 'a .json prompts file holds one list of objects, [{"prompt": "..."}, ...]; fix it or use .jsonl'
CSV_QUOTE_HINT = 'a field that starts with " must end with "; write a quote inside it as "" or leave the field unquoted'
CSV_FIELDS_HINT = 'quote fields that contain a comma ("a, b"), or fix the commas of that row'
MESSAGES_HINT = 'each message is {"role": "system" | "user" | "assistant", "content": "text"}'
META_KINDS = "meta columns must hold text, numbers, booleans, lists or mappings"

_peek = reprlib.Repr()
_peek.maxstring = _peek.maxother = 60


def resolve_path(path: str, recipe_dir: Path | None, field: str = "prompts.path") -> Path:
    """Relative paths resolve against the recipe's folder (so a recipe and its data move together),
    then, for recipes written before that rule, against the working folder. `field` is the recipe
    setting that named the file, for the message."""
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() else ([recipe_dir / p] if recipe_dir else []) + [Path.cwd() / p]
    fix = f"set {field}=FILE"
    for c in candidates:
        try:
            if c.is_file():
                return c
            is_dir, exists = c.is_dir(), c.exists()
        except OSError as exc:  # a parent folder we may not enter, a name too long
            raise UserError(f"{field} {c}: {exc.strerror or exc}", "check the path and its permissions") from None
        if is_dir:
            raise UserError(f"{field} {c} is a folder, not a file", fix)
        if exists:  # a FIFO, a device: reading it could block forever or never end
            raise UserError(f"{field} {c} is not a regular file (a pipe or a device)", fix)
    tried = ", ".join(str(c) for c in candidates)
    raise UserError(f"{field} {path} not found (tried {tried})", fix)


# --- JSON -------------------------------------------------------------------------------------------


class _RepeatedKey(ValueError):
    """A JSON object names one key twice; `json` alone would silently keep only the last value."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object_without_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook` for json: build the dict, refusing a repeated key instead of losing a value."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return obj


def _parse_json(text: str, path: Path, line: int | None, hint: str) -> Any:
    """json.loads where every failure is a UserError naming the file and line.

    `line` is the file line of a .jsonl record; for a whole .json file (None) the decoder's line is
    used. Besides JSONDecodeError, json raises a plain ValueError (an integer too long to convert)
    and RecursionError (nesting too deep): malformed input too, not bugs.
    """
    where = f"{path}:{line}" if line is not None else str(path)
    try:
        return json.loads(text, object_pairs_hook=_object_without_repeats)
    except _RepeatedKey as exc:
        raise UserError(f"{where}: key {exc.key!r} appears twice in one object", hint) from None
    except json.JSONDecodeError as exc:
        at = f"{path}:{line if line is not None else exc.lineno}"
        raise UserError(f"{at}: not valid JSON ({exc.msg.removesuffix(' at')} at column {exc.colno})", hint) from None
    except RecursionError:
        raise UserError(f"{where}: JSON nested too deeply to read", hint) from None
    except ValueError as exc:
        raise UserError(f"{where}: not valid JSON ({first_line(exc, 200)})", hint) from None


def _iter_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """One object per line; blank lines are skipped, a BOM (utf-8-sig) is not garbage."""
    with path.open(encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            line = line.lstrip("\ufeff")  # files joined with `cat` carry each one's BOM into the middle
            if not line.strip():
                continue
            obj = _parse_json(line, path, n, JSONL_HINT)
            if not isinstance(obj, dict):
                raise UserError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}", JSONL_HINT)
            yield f"{path}:{n}", obj


def _iter_json(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """One list of objects; errors name the decoder's line, or the item."""
    data = _parse_json(path.read_text(encoding="utf-8-sig"), path, None, JSON_HINT)
    if not isinstance(data, list):
        raise UserError(
            f"{path}: a .json prompts file must hold a list of objects, got {type(data).__name__}", JSON_HINT
        )
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise UserError(f"{path} item {i}: expected an object, got {type(obj).__name__}", JSON_HINT)
        yield f"{path} item {i}", obj


# --- CSV --------------------------------------------------------------------------------------------


class _Tap:
    """Iterate a file's lines, keeping those of the current CSV row, to locate an unclosed quote."""

    def __init__(self, lines: Iterator[str]) -> None:
        self.lines = lines
        self.row: list[str] = []

    def __iter__(self) -> _Tap:
        return self

    def __next__(self) -> str:
        line = next(self.lines)
        self.row.append(line)
        return line


def _unclosed_quote_line(lines: list[str]) -> int | None:
    """Index in `lines` of the line whose opening quote is never closed (the excel CSV dialect)."""
    state, opened = "start", None
    for n, line in enumerate(lines):
        for ch in line:
            if state == "quoted":
                state = "quote?" if ch == '"' else state
            elif state == "quote?" and ch == '"':
                state = "quoted"  # "" inside a quoted field is one quote
            elif ch == '"' and state == "start":
                state, opened = "quoted", n
            elif ch in ",\r\n":
                state = "start"
            else:
                state = "field"
    return opened if state == "quoted" else None


def _csv_error(path: Path, exc: csv.Error, start: int, reported: int, lines: list[str]) -> UserError:
    """A csv.Error as a UserError at the line that matters: where the unclosed quote began, if it did."""
    if "end of data" in str(exc):
        opened = _unclosed_quote_line(lines)
        line = start + (opened or 0)
        return UserError(
            f"{path}:{line}: a quoted field starting on this line is never closed "
            "(every line after it would be read as part of it)",
            CSV_QUOTE_HINT,
        )
    row = f" (in the row starting at line {start})" if start != reported else ""
    return UserError(f"{path}:{reported}: malformed CSV: {exc}{row}", CSV_QUOTE_HINT)


def _iter_csv(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Read a CSV strictly: a broken quote or a row whose field count differs from the header's is an
    error naming the line, never lines merged into one prompt or a field quietly dropped."""
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)
    with path.open(encoding="utf-8-sig", newline="") as f:
        tap = _Tap(iter(f))
        reader = csv.reader(tap, strict=True)
        header: list[str] | None = None
        header_line = 0
        while True:
            start, tap.row = reader.line_num + 1, []
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise _csv_error(path, exc, start, reader.line_num, tap.row) from None
            if not fields:  # a blank line
                continue
            if header is None:
                header, header_line = fields, start
                _check_header(path, header, header_line)
                continue
            if len(fields) != len(header):
                raise UserError(
                    f"{path}:{start}: {len(fields)} field(s), but the header (line {header_line}) has {len(header)}",
                    CSV_FIELDS_HINT,
                )
            yield f"{path}:{start}", dict(zip(header, fields, strict=True))


def _check_header(path: Path, header: list[str], line: int) -> None:
    """Two columns with one name would silently become one; refuse the file instead."""
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise UserError(
                f"{path}:{line}: column {name!r} appears twice in the header", "give every column its own name"
            )
        seen.add(name)


# --- parquet and datasets ---------------------------------------------------------------------------


def _iter_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of a parquet file; a corrupt or foreign file (read_parquet) and values Python cannot
    hold (a timestamp out of range) are UserErrors naming the file, converted batch by batch."""
    import pyarrow as pa

    from synth.io import read_parquet

    table = read_parquet(
        path,
        "a prompts file",
        hint="check that it is a parquet file (e.g. re-export it with pandas' to_parquet), or use .jsonl",
    )
    first = 0
    for batch in table.to_batches():
        try:
            rows = batch.to_pylist()
        except (pa.ArrowException, ValueError, OverflowError) as exc:  # a date out of range, text not UTF-8
            rows_at = f"row {first}" if batch.num_rows == 1 else f"rows {first}-{first + batch.num_rows - 1}"
            raise UserError(
                f"{path} {rows_at}: values that cannot be read: {first_line(exc, 200)}",
                "re-export the file with plain text, number and date columns",
            ) from None
        for i, row in enumerate(rows, first):
            yield f"{path} row {i}", row
        first += batch.num_rows


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


# --- the source -------------------------------------------------------------------------------------


def _not_utf8(path: Path) -> UserError:
    """Name the line and column of the first byte that is not UTF-8, from the raw bytes.

    Lines split as Python's text files and csv split them (\\n, \\r\\n, \\r), so the number matches
    the other errors; UTF-8 never uses those bytes inside a character, so splitting first is safe.
    """
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return UserError(f"{path}:1: the file is UTF-16 text, not UTF-8", UTF8_HINT)
    for n, line in enumerate(raw.splitlines(), 1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            return UserError(
                f"{path}:{n}: not UTF-8 text (byte 0x{line[exc.start]:02x} at column {exc.start + 1})", UTF8_HINT
            )
    return UserError(f"{path}: not UTF-8 text", UTF8_HINT)


def iter_source(
    spec: PromptsSpec, recipe_dir: Path | None, field: str = "prompts.path"
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (location, raw row) from the configured source; location is used in error messages.

    Every failure while reading a file is a UserError naming it: undecodable bytes (with the line),
    an unreadable file (permissions, a device error), nesting too deep to parse.
    """
    if bool(spec.path) == bool(spec.dataset):
        raise UserError(
            "set exactly one of prompts.path (a local file) or prompts.dataset (a dataset name)",
            "e.g. prompts.path=my.jsonl",
        )
    if spec.dataset:
        yield from _iter_dataset(spec)
        return
    path = resolve_path(spec.path or "", recipe_dir, field)
    readers = {".jsonl": _iter_jsonl, ".json": _iter_json, ".csv": _iter_csv, ".parquet": _iter_parquet}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise UserError(
            f"{path}: unsupported prompts file type {path.suffix!r}; use one of {', '.join(SUFFIXES)}",
            'e.g. a .jsonl file with one {"prompt": "..."} object per line',
        )
    try:
        yield from reader(path)
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    except OSError as exc:
        raise UserError(
            f"{path}: cannot read the prompts file: {exc.strerror or first_line(exc, 200)}",
            "check that the file exists and that you may read it",
        ) from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to read", "flatten the file's structure") from None


# --- rows to prompts --------------------------------------------------------------------------------


def _check_text(text: str, where: str, what: str) -> None:
    """Refuse a lone UTF-16 surrogate (a JSON "\\ud800" escape): it is not text and cannot be written out."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UserError(
            f"{where}: {what} holds {text[exc.start]!r}, half of a UTF-16 surrogate pair, which is not text",
            "fix that \\uXXXX escape (a surrogate must be followed by its pair) or remove it",
        ) from None


def _messages_from(value: Any, where: str, column: str) -> Messages:
    """Chat messages, checked: known roles, text content, at least one user message.

    An unknown role ("tool", "User") or a non-text content would otherwise reach the chat template
    as something else, or make the row look like an empty prompt.
    """
    shape = f"{where}: column {column!r} must be a list of {{role, content}} messages"
    if not isinstance(value, list):
        raise UserError(f"{shape}, got {type(value).__name__} {_peek.repr(value)}", MESSAGES_HINT)
    messages: Messages = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise UserError(f"{shape}; message {i} is {_peek.repr(m)}", MESSAGES_HINT)
        role, content = m["role"], m["content"]
        if not isinstance(role, str) or role not in ROLES:
            raise UserError(
                f"{where}: column {column!r}, message {i}: role {_peek.repr(role)} is not one of {', '.join(ROLES)}",
                MESSAGES_HINT,
            )
        if not isinstance(content, str):
            raise UserError(
                f"{where}: column {column!r}, message {i}: content must be a string, "
                f"got {type(content).__name__} {_peek.repr(content)}",
                MESSAGES_HINT,
            )
        _check_text(content, where, f"column {column!r}, message {i}")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "user" for m in messages):
        raise UserError(f"{where}: column {column!r} holds no user message", MESSAGES_HINT)
    return messages


def _student_view(row: dict[str, Any], where: str, spec: PromptsSpec) -> Messages:
    column = spec.messages_column or spec.prompt_column
    if column not in row:
        raise UserError(
            f"{where}: no column {column!r}; columns here: {', '.join(map(repr, row)) or '(none)'}",
            "map yours with prompts.prompt_column=NAME (a string) or prompts.messages_column=NAME (chat messages)",
        )
    value = row[column]
    if spec.messages_column:
        messages = _messages_from(value, where, column)
    elif value is None or isinstance(value, str):
        _check_text(value or "", where, f"column {column!r}")
        messages = [{"role": "user", "content": value or ""}]
    else:
        raise UserError(
            f"{where}: column {column!r} must be a string, got {type(value).__name__} {value!r:.60}",
            "map the text column with prompts.prompt_column=NAME, or chat messages with prompts.messages_column=NAME",
        )
    if spec.system_prompt and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": spec.system_prompt}, *messages]
    return messages


def _meta_value(value: Any, where: str, column: str, depth: int = 0) -> Any:
    """A meta value as plain JSON: meta is stored with json.dumps, which refuses dates, Decimal and
    UUID and writes NaN as invalid JSON. Dates become ISO text, Decimal and UUID text, NaN/inf null;
    bytes are refused rather than stored as an unreadable repr."""
    if depth > MAX_META_DEPTH:
        raise UserError(f"{where}: meta column {column!r} nests deeper than {MAX_META_DEPTH} levels", META_KINDS)
    if isinstance(value, str):
        _check_text(value, where, f"meta column {column!r}")
        return value
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, (datetime.date, datetime.time)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, (Decimal, uuid.UUID, datetime.timedelta)):
        return str(value)
    if isinstance(value, numbers.Integral):  # numpy integers
        return int(value)
    if isinstance(value, numbers.Real):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise UserError(f"{where}: meta column {column!r} holds bytes", f"{META_KINDS}; decode or drop that column")
    if isinstance(value, Mapping):
        out = {str(k): _meta_value(v, where, column, depth + 1) for k, v in value.items()}
        if len(out) != len(value):
            raise UserError(f"{where}: meta column {column!r} holds a mapping whose keys clash as text", META_KINDS)
        return out
    if isinstance(value, (list, tuple)):
        return [_meta_value(v, where, column, depth + 1) for v in value]
    raise UserError(f"{where}: meta column {column!r} holds a {type(value).__name__}", META_KINDS)


def _meta_for(row: dict[str, Any], where: str, spec: PromptsSpec) -> dict[str, Any]:
    """The row's provenance: its source, its id (as text) and the meta columns, all JSON-safe."""
    meta: dict[str, Any] = {"source": spec.dataset or spec.path}
    if spec.id_column and row.get(spec.id_column) is not None:
        meta["source_id"] = str(row[spec.id_column])
        _check_text(meta["source_id"], where, f"column {spec.id_column!r}")
    for col in spec.meta_columns:
        if col not in row:
            raise UserError(
                f"{where}: prompts.meta_columns names {col!r}, which this row does not have",
                "add that column to every row, or remove it from prompts.meta_columns",
            )
        meta[col] = _meta_value(row[col], where, col)
    return meta


def teacher_view(prompt: Messages, teacher: TeacherSpec) -> Messages:
    """The teacher's view: the student's messages with the privileged system prompt added."""
    if not teacher.system_prompt:
        return [dict(m) for m in prompt]
    rest = [dict(m) for m in prompt if m["role"] != "system"]
    own = [m["content"] for m in prompt if m["role"] == "system"]
    system = "\n\n".join([teacher.system_prompt, *own])
    return [{"role": "system", "content": system}, *rest]


def load_prompts(
    spec: PromptsSpec,
    teacher: TeacherSpec,
    recipe_dir: Path | None = None,
    limit: int | None = None,
    field: str = "prompts.path",
) -> tuple[list[PromptItem], int]:
    """Read prompts, build both views, drop exact repeats; return (items, repeats dropped).

    Every record read is accounted for: an item, a counted repeat, or an item whose `error` says
    why it cannot be generated (an empty prompt).
    """
    items: list[PromptItem] = []
    seen: set[str] = set()
    repeats = 0
    limit = limit or spec.limit
    for where, row in iter_source(spec, recipe_dir, field):
        prompt = _student_view(row, where, spec)
        tprompt = teacher_view(prompt, teacher)
        pid = prompt_id_for(prompt, tprompt)
        if pid in seen:
            repeats += 1
            continue
        seen.add(pid)
        meta = _meta_for(row, where, spec)
        empty = not any(m["content"].strip() for m in prompt if m["role"] == "user")
        items.append(PromptItem(pid, prompt, tprompt, meta, error="empty prompt" if empty else None))
        if limit and len(items) >= limit:
            break
    if not items:
        raise UserError(
            f"{spec.dataset or spec.path}: the prompts source holds no prompts",
            "give it at least one prompt (a CSV needs a header line, then one row per prompt)",
        )
    return items, repeats
