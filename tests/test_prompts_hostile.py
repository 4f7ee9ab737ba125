"""Hostile prompt files: every malformed file is one UserError naming file and line, nothing is lost.

The unit tests pin one class of malformed input each (CSV quoting and field counts, BOMs, other
encodings, chat roles, foreign parquet, meta types, broken JSON, unreadable paths). The property
test then writes many seeded variations across the four formats, each knowing what it wrote, and
checks the contract: a UserError naming the file (and the line, where the generator knows it), or
every record accounted for as an item, a counted repeat, or an item rejected as an empty prompt.
"""

from __future__ import annotations

import csv
import datetime
import decimal
import io
import json
import math
import os
import random
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synth.errors import UserError
from synth.prompts import load_prompts
from synth.recipe import PromptsSpec, TeacherSpec
from tests.conftest import RECIPE, run_cli


def _load(path: Path, **spec: Any) -> tuple[list[Any], int]:
    return load_prompts(PromptsSpec(path=str(path), **spec), TeacherSpec())


def _fails(path: Path, **spec: Any) -> str:
    """The UserError's message (asserted to name the file); its hint must say what to do."""
    with pytest.raises(UserError) as info:
        _load(path, **spec)
    assert str(path) in info.value.message, info.value.message
    assert info.value.hint, info.value.message
    assert "\n" not in info.value.message + info.value.hint  # the CLI prints it on one line
    return info.value.message


def _contents(items: list[Any]) -> list[str]:
    return [[m for m in i.prompt if m["role"] == "user"][-1]["content"] for i in items]


# --- 1. CSV: strict quoting, field counts, header, large fields --------------------------------------


def test_csv_unterminated_quote_names_the_line_it_opens_on(tmp_path: Path) -> None:
    p = tmp_path / "p.csv"
    p.write_text('prompt\nfirst\n"second\nthird\nfourth\n')
    msg = _fails(p)
    assert f"{p}:3:" in msg and "never closed" in msg
    p.write_text('prompt,topic\n"multi\nline",a\nb,"x\ny\nz\n')  # after a legitimate multi-line field
    assert f"{p}:4:" in _fails(p)
    p.write_text('prompt,topic\n"two\nlines","opened on line 3\nmore\n')  # not the line the row starts on
    assert f"{p}:3:" in _fails(p)


def test_csv_text_after_a_closing_quote_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "p.csv"
    p.write_text('prompt\nok\n"closed"junk\nfine\n')
    assert f"{p}:3: malformed CSV" in _fails(p)


def test_csv_rows_with_extra_or_missing_fields(tmp_path: Path) -> None:
    p = tmp_path / "p.csv"
    p.write_text('prompt,topic\n"a\nb",t\nc,d,e\n')
    assert f"{p}:4: 3 field(s), but the header (line 1) has 2" in _fails(p)
    p.write_text("prompt,topic\na,b\n\nc\n")
    assert f"{p}:4: 1 field(s), but the header (line 1) has 2" in _fails(p)


def test_csv_duplicate_header_and_header_only(tmp_path: Path) -> None:
    p = tmp_path / "p.csv"
    p.write_text("prompt,topic,prompt\na,b,c\n")
    assert f"{p}:1: column 'prompt' appears twice" in _fails(p)
    for text in ["prompt\n", "", "\n\n"]:
        p.write_text(text)
        assert "holds no prompts" in _fails(p)


def test_csv_large_fields_and_legitimate_quoting_load(tmp_path: Path) -> None:
    p = tmp_path / "p.csv"
    big = "long " * 60_000  # 300 KB, over csv's default 128 KiB field limit
    with p.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["prompt", "topic"], [big, "t"], ['He said "hi", twice', "q"], ["two\nlines", ""]])
    items, _ = _load(p)
    assert _contents(items) == [big, 'He said "hi", twice', "two\nlines"]
    p.write_text('prompt,topic\n"two\nlines",a\nb,c,d\n')  # line numbers count the lines inside fields
    assert f"{p}:4:" in _fails(p)


def test_csv_row_errors_name_the_line_the_row_starts_on(tmp_path: Path) -> None:
    p = tmp_path / "p.csv"
    p.write_text('messages,topic\n"not\na list",t\n')
    assert f"{p}:2: column 'messages' must be a list" in _fails(p, messages_column="messages")


# --- 2. a UTF-8 BOM is accepted ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,text",
    [
        ("p.jsonl", '{"prompt": "Hi"}\n'),
        ("p.json", '[{"prompt": "Hi"}]'),
        ("p.csv", "prompt\nHi\n"),
    ],
)
def test_utf8_bom_is_accepted(tmp_path: Path, name: str, text: str) -> None:
    p = tmp_path / name
    p.write_bytes(b"\xef\xbb\xbf" + text.encode())
    items, _ = _load(p)
    assert _contents(items) == ["Hi"]


# --- 3. not UTF-8: the line of the first bad byte ---------------------------------------------------


@pytest.mark.parametrize(
    "name,lines",
    [
        ("p.jsonl", ['{"prompt": "a"}', "", '{"prompt": "caf\xe9"}']),
        ("p.csv", ["prompt", "a", "caf\xe9"]),
        ("p.json", ["[", '{"prompt": "a"},', '{"prompt": "caf\xe9"}', "]"]),
    ],
)
def test_latin1_names_the_line_and_says_to_resave(tmp_path: Path, name: str, lines: list[str]) -> None:
    p = tmp_path / name
    p.write_bytes("\r\n".join(lines).encode("latin-1"))
    msg = _fails(p)
    assert f"{p}:3: not UTF-8" in msg and "0xe9" in msg
    with pytest.raises(UserError) as info:
        _load(p)
    assert "UTF-8" in (info.value.hint or "")


def test_utf16_file_says_so(tmp_path: Path) -> None:
    p = tmp_path / "p.jsonl"
    p.write_bytes('{"prompt": "a"}\n'.encode("utf-16"))
    assert "UTF-16" in _fails(p)


# --- 4. chat messages -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "messages,needle",
    [
        ([{"role": "tool", "content": "x"}, {"role": "user", "content": "q"}], "message 0: role 'tool'"),
        ([{"role": "user", "content": "q"}, {"role": "User", "content": "x"}], "message 1: role 'User'"),
        ([{"role": "user", "content": ["parts"]}], "message 0: content must be a string, got list"),
        ([{"role": "user", "content": None}], "content must be a string, got NoneType"),
        ([{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}], "holds no user message"),
        ([], "holds no user message"),
        ([{"role": "user"}], "list of {role, content} messages"),
        ("hello", "list of {role, content} messages"),
    ],
)
def test_bad_chat_messages_name_row_and_problem(tmp_path: Path, messages: Any, needle: str) -> None:
    p = tmp_path / "m.jsonl"
    p.write_text(
        json.dumps({"messages": [{"role": "user", "content": "fine"}]}) + "\n" + json.dumps({"messages": messages})
    )
    msg = _fails(p, messages_column="messages")
    assert f"{p}:2: column 'messages'" in msg and needle in msg


def test_blank_user_message_stays_a_rejected_row(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    rows = [[{"role": "user", "content": "q"}], [{"role": "system", "content": "s"}, {"role": "user", "content": " "}]]
    p.write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows))
    items, _ = _load(p, messages_column="messages")
    assert [i.error for i in items] == [None, "empty prompt"]


# --- 5. parquet: corrupt or foreign files, wrong types ------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"PAR1", b"not parquet at all\n", b"prompt\nhello\n", b"PAR1" + bytes(range(256)) + b"PAR1"],
)
def test_corrupt_or_foreign_parquet_names_the_file(tmp_path: Path, data: bytes) -> None:
    p = tmp_path / "p.parquet"
    p.write_bytes(data)
    assert "cannot read a prompts file" in _fails(p)


def test_truncated_parquet_and_wrong_types(tmp_path: Path) -> None:
    p = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"]}), p)
    p.write_bytes(p.read_bytes()[:-10])
    assert "cannot read" in _fails(p)
    pq.write_table(pa.table({"prompt": ["a", None], "n": [1, 2]}), p)
    assert _contents(_load(p)[0]) == ["a", ""]
    assert f"{p} row 0: column 'n' must be a string, got int" in _fails(p, prompt_column="n")


def test_parquet_values_python_cannot_hold_name_the_rows(tmp_path: Path) -> None:
    p = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["a"], "ts": pa.array([2**62], pa.timestamp("ms"))}), p)
    assert f"{p} row 0: values that cannot be read" in _fails(p)


# --- 6. meta columns hold JSON-safe values -----------------------------------------------------------


def test_meta_dates_decimals_uuids_and_non_finite_floats_become_json(tmp_path: Path) -> None:
    p = tmp_path / "p.parquet"
    u = uuid.UUID(int=7)
    table = pa.table(
        {
            "prompt": ["a"],
            "ts": pa.array([datetime.datetime(2024, 5, 6, 7, 8, 9)], pa.timestamp("us")),
            "tz": pa.array([datetime.datetime(2024, 5, 6, tzinfo=datetime.timezone.utc)], pa.timestamp("s", tz="UTC")),
            "day": pa.array([datetime.date(2024, 1, 2)]),
            "money": pa.array([decimal.Decimal("1.50")], pa.decimal128(5, 2)),
            "f": [math.nan],
            "nested": [[{"at": datetime.date(2020, 1, 1), "x": math.inf}]],
        }
    )
    pq.write_table(table, p)
    cols = ["ts", "tz", "day", "money", "f", "nested"]
    meta = _load(p, meta_columns=cols)[0][0].meta
    assert meta["ts"] == "2024-05-06T07:08:09" and meta["tz"].startswith("2024-05-06T00:00:00")
    assert meta["day"] == "2024-01-02" and meta["money"] == "1.50" and meta["f"] is None
    assert meta["nested"] == [{"at": "2020-01-01", "x": None}]
    json.dumps(meta, allow_nan=False, sort_keys=True)  # what records.make_rows stores, as strict JSON
    j = tmp_path / "p.jsonl"
    j.write_text('{"prompt": "a", "m": {"u": NaN, "v": [-Infinity, 1]}}\n')
    assert _load(j, meta_columns=["m"])[0][0].meta["m"] == {"u": None, "v": [None, 1]}
    from synth.prompts import _meta_value

    assert _meta_value({"id": u, "d": decimal.Decimal("2")}, "here", "m") == {"id": str(u), "d": "2"}


def test_meta_bytes_are_refused_naming_row_and_column(tmp_path: Path) -> None:
    p = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "blob": [b"x", b"\xff"]}), p)
    msg = _fails(p, meta_columns=["blob"])
    assert f"{p} row 0: meta column 'blob' holds bytes" in msg
    with pytest.raises(UserError) as info:
        _load(p, meta_columns=["blob"])
    assert "meta columns must hold text, numbers, booleans, lists or mappings" in (info.value.hint or "")


def test_meta_nested_too_deep_is_an_error_not_a_crash(tmp_path: Path) -> None:
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "a", "m": 1}\n{"prompt": "b", "m": ' + "[" * 500 + "]" * 500 + "}\n")
    assert f"{p}:2: meta column 'm' nests deeper" in _fails(p, meta_columns=["m"])


# --- 7. JSON: empty, trailing garbage, wrong shapes, hostile values ----------------------------------


@pytest.mark.parametrize(
    "text,where",
    [
        ("", ":1: not valid JSON"),
        ("\n\n   \n", ":4: not valid JSON"),
        ('[{"prompt": "a"}]\n\nxyz\n', ":3: not valid JSON"),
        ('[\n{"prompt": "a"},\n{"prompt": "b"}\n', ":4: not valid JSON"),
        ('{"prompt": "a"}', ": a .json prompts file must hold a list"),
        ('[{"prompt": "a"}, 3]', " item 1: expected an object"),
        ('[{"prompt": "a", "prompt": "b"}]', ": key 'prompt' appears twice"),
    ],
)
def test_malformed_json_file(tmp_path: Path, text: str, where: str) -> None:
    p = tmp_path / "p.json"
    p.write_text(text)
    assert f"{p}{where}" in _fails(p)


@pytest.mark.parametrize(
    "line,needle",
    [
        ('{"prompt": "a", "prompt": "b"}', "key 'prompt' appears twice"),
        ('{"prompt": "\\ud800 half a pair"}', "surrogate"),
        ('{"prompt": "a", "id": "\\udfff"}', "surrogate"),
        ('{"prompt": ' + "[" * 5000 + "]" * 5000 + "}", "nested too deeply"),
        ('{"prompt": ' + "9" * 5000 + "}", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"prompt": "a"', "not valid JSON"),
    ],
)
def test_hostile_jsonl_line(tmp_path: Path, line: str, needle: str) -> None:
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "fine"}\n\n' + line + "\n")
    msg = _fails(p)
    assert f"{p}:3:" in msg and needle in msg


# --- 8. unreadable paths ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["p.jsonl", "p.json", "p.csv", "p.parquet"])
def test_folder_or_unreadable_file_is_a_user_error(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "dir" / name
    folder.mkdir(parents=True)
    assert "is a folder" in _fails(folder)
    p = tmp_path / name
    p.write_text("prompt\n")
    real_open = Path.open

    def denied(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == p:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", denied)
    if name != "p.parquet":  # pyarrow opens files itself; see the chmod test
        assert "Permission denied" in _fails(p)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_file_without_read_permission(tmp_path: Path) -> None:
    for name in ["p.jsonl", "p.parquet"]:
        p = tmp_path / name
        p.write_text("x")
        p.chmod(0)
        _fails(p)


# --- the property: seeded hostile files across formats -------------------------------------------------

TEXTS = [
    "Hello",
    "What, if anything?",
    'He said "hi"',
    "two\nlines",
    "café ünïcode ✓",
    "emoji 🤖🎉",
    "עברית RTL",
    "tab\there",
    "",
    "   ",
    "NUL\x00inside",
    "line\u2028separator",
    "back\\slash",
    "'single'",
    "crlf\r\ninside",
    "semi;colon",
]
SAFE = ["Hello", "plain words", "café", "emoji 🤖", "tab\there", "   ", "x;y"]  # no quote, comma or newline
BIG = "big " * 40_000  # 160 KB, over csv's default field limit
LATIN = "@LATIN1-E-ACUTE@"  # replaced by the byte 0xe9 (é in Latin-1) once the file is encoded


@dataclass
class Case:
    """One generated file and what a correct loader must make of it."""

    name: str
    data: bytes
    spec: dict[str, Any] = field(default_factory=dict)
    records: list[str] | None = None  # the prompt of every record written; None: the file is malformed
    where: str = ""  # what must follow the path in the error: ":3:", " item 2", " row 1"

    @property
    def ok(self) -> bool:
        return self.records is not None


def _lines_of(text: str) -> int:
    """Line breaks as Python's text files and csv count them (\\r\\n, \\r, \\n; not \\u2028)."""
    return len(re.findall(r"\r\n|\r|\n", text))


def _records(rng: random.Random, pool: list[str] = TEXTS) -> list[str]:
    return [rng.choice(pool) for _ in range(rng.randint(1, 7))]


def _jsonl_case(rng: random.Random, kind: str, i: int) -> Case:
    prompts = _records(rng)
    objs: list[Any] = [{"prompt": t, "id": n} for n, t in enumerate(prompts)]
    spec: dict[str, Any] = {}
    if kind == "nulls":  # null reads as an empty prompt
        prompts = [t if t.strip() else "" for t in prompts]
        objs = [{"prompt": t or None} for t in prompts]
    if kind == "huge":
        j = rng.randrange(len(objs))
        objs[j]["prompt"] = prompts[j] = BIG
    if kind == "meta":
        spec = {"meta_columns": ["m"]}
        for o in objs:
            o["m"] = {"score": rng.choice([math.nan, math.inf, -1.5, None]), "tags": ["a", {"b": math.inf}]}
    if kind in ("messages", "bad_role", "content_type"):
        spec = {"messages_column": "messages"}
        objs = [
            {"messages": [{"role": "system", "content": "s"}] * rng.randint(0, 1) + [{"role": "user", "content": t}]}
            for t in prompts
        ]
    k = rng.randrange(len(objs))
    bad: str | None = None
    if kind == "bad_role":
        objs[k]["messages"][-1]["role"] = rng.choice(["tool", "User", "function", "", None, 3])
    elif kind == "content_type":
        objs[k]["messages"][-1]["content"] = rng.choice([None, 3, ["a"], {"text": "a"}])
    elif kind == "wrong_type":
        objs[k]["prompt"] = rng.choice([42, 1.5, True, ["a"], {"a": 1}])
    elif kind == "missing_column":
        objs[k] = {"text": "no prompt key"}
    elif kind == "latin1":
        objs[k] = {"prompt": f"caf{LATIN}"}
    text_lines = [json.dumps(o, ensure_ascii=rng.random() < 0.5) for o in objs]
    if kind == "truncated":
        bad = text_lines[k][: rng.randrange(len(text_lines[k]))]
    elif kind == "not_object":
        bad = json.dumps(rng.choice([[1, 2], "a string", 3, None, True]))
    elif kind == "repeated_key":
        bad = '{"prompt": "a", "id": 1, "prompt": "b"}'
    elif kind == "surrogate":
        bad = '{"prompt": "broken \\ud83d pair"}'
    elif kind == "deep":
        bad = '{"prompt": ' + "[" * 3000 + "]" * 3000 + "}"
    if bad is not None:
        text_lines[k] = bad
    # blank lines and a BOM are odd but fine; the error line must still be counted right
    out: list[str] = []
    line_of: list[int] = []
    for line in text_lines:
        while rng.random() < 0.3:
            out.append(rng.choice(["", "   ", "\t"]))
        out.append(line)
        line_of.append(len(out))
    eol = rng.choice(["\n", "\r\n"])
    body = eol.join(out) + rng.choice([eol, ""])
    raw = body.encode().replace(LATIN.encode(), b"\xe9")
    if kind == "bom" or rng.random() < 0.2:
        raw = b"\xef\xbb\xbf" + raw
    malformed = kind not in ("plain", "bom", "nulls", "huge", "meta", "messages")
    return Case(f"c{i}-{kind}.jsonl", raw, spec, None if malformed else prompts, f":{line_of[k]}:")


def _json_case(rng: random.Random, kind: str, i: int) -> Case:
    prompts = _records(rng)
    objs: list[Any] = [{"prompt": t, "id": str(n)} for n, t in enumerate(prompts)]
    if kind == "nulls":  # null reads as an empty prompt
        prompts = [t if t.strip() else "" for t in prompts]
        objs = [{"prompt": t or None} for t in prompts]
    k = rng.randrange(len(objs))
    where = ""
    if kind == "latin1":
        objs[k]["prompt"] = f"caf{LATIN}"
    if kind == "item_not_object":
        objs[k], where = rng.choice([["a"], "a", 1, None]), f" item {k}"
    if kind == "wrong_type":
        objs[k]["prompt"], where = rng.choice([1, ["a"], {"x": "y"}, False]), f" item {k}: column 'prompt'"
    data: Any = {"data": objs} if kind == "top_dict" else objs
    text = json.dumps(data, indent=rng.choice([None, 1, 2]), ensure_ascii=rng.random() < 0.5)
    if kind == "trailing_garbage":
        text += "\n" * rng.randint(0, 2) + rng.choice(["]", "xyz", "{}", '{"prompt": "more"}'])
        where = f":{text.count(chr(10)) + 1}:"
    elif kind == "truncated":
        cut = rng.randrange(len(text))
        text, where = text[:cut], f":{text[:cut].count(chr(10)) + 1}:"
    elif kind == "empty":
        text = "\n" * rng.randint(0, 3)
        where = f":{text.count(chr(10)) + 1}:"
    elif kind == "top_dict":
        where = ": a .json prompts file must hold a list"
    raw = text.encode()
    if kind == "latin1":
        bad_line = raw[: raw.index(LATIN.encode())].count(b"\n") + 1
        where = f":{bad_line}: not UTF-8"
        raw = raw.replace(LATIN.encode(), b"\xe9")
    if kind == "bom":
        raw = b"\xef\xbb\xbf" + raw
    malformed = kind not in ("plain", "bom", "nulls")
    return Case(f"c{i}-{kind}.json", raw, {}, None if malformed else prompts, where)


def _csv_row(fields: list[str], eol: str) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator=eol).writerow(fields)
    return buf.getvalue()


def _csv_case(rng: random.Random, kind: str, i: int) -> Case:
    header = rng.choice([["prompt"], ["id", "prompt"], ["prompt", "topic", "id"]])
    if kind == "missing_field" and len(header) == 1:
        header = ["prompt", "topic"]
    at = header.index("prompt")
    eol = rng.choice(["\n", "\r\n"])
    prompts = _records(rng)
    k = rng.randrange(len(prompts))
    if kind in ("unterminated", "after_quote", "latin1"):
        prompts = [p if n < k else rng.choice(SAFE) for n, p in enumerate(prompts)]  # nothing after k closes it
    if kind == "huge":
        prompts[k] = BIG
    if kind == "latin1":
        prompts[k] = f"caf{LATIN}"
    rows_text: list[str] = []
    line = _lines_of(_csv_row(header, eol)) + 1
    starts: list[int] = []
    for n, prompt in enumerate(prompts):
        fields = [f"{n}" if h == "id" else "t" if h == "topic" else prompt for h in header]
        text = _csv_row(fields, eol)
        if n == k and kind == "unterminated":
            fields[at] = '"never closed'
            text = ",".join(fields) + eol
        elif n == k and kind == "after_quote":
            fields[at] = '"closed"junk'
            text = ",".join(fields) + eol
        elif n == k and kind == "extra_field":
            text = _csv_row([*fields, "surplus"], eol)
        elif n == k and kind == "missing_field":
            text = _csv_row(fields[:-1], eol)
        while kind == "blank_lines" and rng.random() < 0.4:
            rows_text.append(eol)
            line += 1
        starts.append(line)
        rows_text.append(text)
        line += _lines_of(text)
    head = [*header, "prompt"] if kind == "dup_header" else header
    text = _csv_row(head, eol) + "".join(rows_text)
    where = f":{starts[k]}:"
    if kind == "dup_header":
        where = ":1:"
    elif kind == "header_only":
        text, where = _csv_row(header, eol), ": the prompts source holds no prompts"
    raw = text.encode().replace(LATIN.encode(), b"\xe9")
    if kind == "bom" or rng.random() < 0.2:
        raw = b"\xef\xbb\xbf" + raw
    malformed = kind not in ("plain", "bom", "blank_lines", "huge")
    return Case(f"c{i}-{kind}.csv", raw, {}, None if malformed else prompts, where)


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _parquet_case(rng: random.Random, kind: str, i: int) -> Case:
    prompts = _records(rng)
    values: list[str | None] = [None if not p and rng.random() < 0.5 else p for p in prompts]
    spec: dict[str, Any] = {}
    cols: dict[str, Any] = {"prompt": values}
    k = rng.randrange(len(prompts))
    where = ""
    if kind == "meta":
        spec = {"meta_columns": ["ts", "money", "score", "nested"]}
        cols["ts"] = pa.array([datetime.datetime(2020, 1, 1) + datetime.timedelta(hours=n) for n in range(len(values))])
        cols["money"] = pa.array([decimal.Decimal(f"{n}.25") for n in range(len(values))], pa.decimal128(6, 2))
        cols["score"] = [rng.choice([math.nan, math.inf, 0.5]) for _ in values]
        cols["nested"] = [[{"d": datetime.date(2021, 1, 1 + n % 28), "f": math.nan}] for n in range(len(values))]
    elif kind == "dictionary":
        cols["prompt"] = pa.array(values, pa.string()).dictionary_encode()
    elif kind in ("messages", "bad_role"):
        spec = {"messages_column": "conv"}
        msgs = [[{"role": "user", "content": p}] for p in prompts]
        if kind == "bad_role":
            msgs[k][0]["role"] = rng.choice(["tool", "human", ""])
            where = f" row {k}: column 'conv', message 0: role"
        cols = {"conv": msgs}
    elif kind == "wrong_type":
        cols["prompt"], where = [n for n in range(len(values))], " row 0: column 'prompt' must be a string"
    elif kind == "meta_bytes":
        spec, cols["blob"], where = {"meta_columns": ["blob"]}, [b"\x00\xff"] * len(values), " row 0: meta column"
    elif kind == "missing_column":
        cols = {"text": values}
        where = " row 0: no column 'prompt'"
    data = _parquet_bytes(pa.table(cols))
    if kind == "garbage":
        data = rng.choice([b"", b"PAR1"]) + rng.randbytes(rng.randint(0, 300))
    elif kind == "truncated":
        data = data[: rng.randrange(len(data))]
    elif kind == "not_parquet":
        data = rng.choice([b"prompt\nhello\n", b'{"prompt": "hi"}\n', "caf\xe9".encode("latin-1")])
    if kind in ("garbage", "truncated", "not_parquet"):
        where = ": cannot read a prompts file"
    malformed = kind not in ("plain", "meta", "dictionary", "messages")
    return Case(f"c{i}-{kind}.parquet", data, spec, None if malformed else prompts, where)


GENERATORS: dict[str, tuple[Callable[[random.Random, str, int], Case], list[str]]] = {
    "jsonl": (
        _jsonl_case,
        [
            "plain",
            "bom",
            "nulls",
            "huge",
            "meta",
            "messages",
            "bad_role",
            "content_type",
            "wrong_type",
            "missing_column",
            "truncated",
            "not_object",
            "repeated_key",
            "surrogate",
            "deep",
            "latin1",
        ],
    ),
    "json": (
        _json_case,
        [
            "plain",
            "bom",
            "nulls",
            "item_not_object",
            "wrong_type",
            "top_dict",
            "trailing_garbage",
            "truncated",
            "empty",
            "latin1",
        ],
    ),
    "csv": (
        _csv_case,
        [
            "plain",
            "bom",
            "blank_lines",
            "huge",
            "unterminated",
            "after_quote",
            "extra_field",
            "missing_field",
            "dup_header",
            "header_only",
            "latin1",
        ],
    ),
    "parquet": (
        _parquet_case,
        [
            "plain",
            "meta",
            "dictionary",
            "messages",
            "bad_role",
            "wrong_type",
            "meta_bytes",
            "missing_column",
            "garbage",
            "truncated",
            "not_parquet",
        ],
    ),
}


def generate_cases(seed: int = 0, rounds: int = 2) -> list[Case]:
    """Every kind of every format `rounds` times, from one seeded generator: the same files every run."""
    rng = random.Random(seed)
    cases = []
    for make, kinds in GENERATORS.values():
        for _ in range(rounds):
            for kind in kinds:
                cases.append(make(rng, kind, len(cases)))
    return cases


CASES = generate_cases()


def _check_case(case: Case, path: Path) -> None:
    """The contract for one file: an error naming file (and line), or no record lost or merged."""
    try:
        items, repeats = _load(path, **case.spec)
    except UserError as exc:
        assert not case.ok, f"{case.name}: a well-formed file was refused: {exc}"
        assert f"{path}{case.where}" in exc.message, (case.name, exc.message)
        assert exc.hint and "\n" not in exc.message + exc.hint, case.name
        return
    assert case.ok, f"{case.name}: a malformed file loaded: {[i.prompt for i in items][:3]}"
    assert case.records is not None
    assert len(items) + repeats == len(case.records), case.name  # nothing lost
    assert sorted(_contents(items)) == sorted(set(case.records)), case.name  # nothing merged or changed
    for item in items:
        assert (item.error == "empty prompt") == (not _contents([item])[0].strip()), case.name
        json.dumps(item.meta, allow_nan=False, sort_keys=True, ensure_ascii=False).encode()


def test_generated_cases_cover_every_format() -> None:
    by_format: dict[str, list[Case]] = {}
    for case in CASES:
        by_format.setdefault(case.name.rsplit(".", 1)[1], []).append(case)
    assert len(CASES) >= 60 and all(len(v) >= 16 for v in by_format.values()), {k: len(v) for k, v in by_format.items()}
    assert all(any(c.ok for c in v) and any(not c.ok for c in v) for v in by_format.values())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_file_is_an_error_naming_it_or_loses_nothing(tmp_path: Path, case: Case) -> None:
    path = tmp_path / case.name
    path.write_bytes(case.data)
    _check_case(case, path)


def _cli_cases() -> list[Case]:
    """Two failing files per format, with specs the recipe overrides can express simply."""
    picked: list[Case] = []
    for ext in ("jsonl", "json", "csv", "parquet"):
        picked += [c for c in CASES if c.name.endswith(f".{ext}") and not c.ok and not c.spec][:2]
    return picked


@pytest.mark.parametrize("case", _cli_cases(), ids=[c.name for c in _cli_cases()])
def test_cli_prints_one_line_and_exits_2(tmp_path: Path, case: Case) -> None:
    path = tmp_path / case.name
    path.write_bytes(case.data)
    res = run_cli("synth", "generate", str(RECIPE), f"prompts.path={path}", "--run-dir", str(tmp_path / "r"))
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and case.name in lines[0], res.stderr
