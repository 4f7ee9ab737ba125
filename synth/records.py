"""The record: one row per prompt × sample, the contract between all stages.

Every engine's output goes through `make_rows`, so a row looks the same whichever engine wrote it.
The arrow schema is fixed (not inferred) so that every shard of a run has identical columns and
`datasets.load_dataset("parquet", ...)` reads them as one table.

One shape from generation to training: TRL's conversational prompt-completion format. `prompt` and
`teacher_prompt` are lists of `{role, content}` messages and `completion` is a list holding the one
assistant message, in every file the pipeline writes (shards, kept, rejected, the Hub dataset), so
TRL trainers take any of them directly. Code that needs the answer as text calls `completion_text`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from synth.redact import scrub

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
SAMPLING = pa.struct(
    [
        ("n", pa.int32()),
        ("temperature", pa.float64()),
        ("top_p", pa.float64()),
        ("top_k", pa.int32()),
        ("max_new_tokens", pa.int32()),
        ("seed", pa.int64()),
        ("logprobs", pa.int32()),
    ]
)
TEACHER = pa.struct(
    [("model", pa.string()), ("revision", pa.string()), ("engine", pa.string()), ("sampling", SAMPLING)]
)
# The teacher's top-k per generated token, compactly: int32 ids and float16 log-probabilities
# (44 bytes per generated token at k = 8 in the shards, the chosen token included). `token_id` and
# `top_ids` are set where the engine knows the ids (transformers, vLLM, llama.cpp's server); an
# OpenAI-compatible server that gives only token strings leaves them null and `top_tokens` holds the
# strings, which `sft run` maps with the tokenizer (rows that do not map are reported, never guessed).
TOKEN_LOGPROBS = pa.struct(
    [
        ("token", pa.string()),
        ("token_id", pa.int32()),
        ("logprob", pa.float32()),
        ("top_tokens", pa.list_(pa.string())),
        ("top_ids", pa.list_(pa.int32())),
        ("top_logprobs", pa.list_(pa.float16())),
    ]
)
VERDICT = pa.struct([("name", pa.string()), ("passed", pa.bool_()), ("score", pa.float64()), ("reason", pa.string())])

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt_id", pa.string()),
        ("sample_index", pa.int32()),
        ("prompt", pa.list_(MESSAGE)),
        ("teacher_prompt", pa.list_(MESSAGE)),
        ("completion", pa.list_(MESSAGE)),
        ("teacher", TEACHER),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("logprobs", pa.list_(TOKEN_LOGPROBS)),
        ("verdicts", pa.list_(VERDICT)),
        ("error", pa.string()),
        ("meta", pa.string()),
        ("recipe_hash", pa.string()),
    ]
)

Messages = list[dict[str, str]]


def assistant(text: str) -> Messages:
    """A completion as the pipeline stores it: one assistant message."""
    return [{"role": "assistant", "content": text}]


def completion_text(row: dict[str, Any]) -> str:
    """The completion's text (what checks read and people see); computed once per row dict."""
    cached = row.get("_text")
    if cached is None:
        cached = row["_text"] = "".join(m["content"] for m in row["completion"] or () if m["role"] == "assistant")
    return cached


@dataclass
class TokenLogprob:
    """The teacher's log-probability of one generated token, with its top-k alternatives.

    Engines that know token ids set `token_id` and `top_ids` (and may leave `top_tokens` None);
    servers that answer with strings only set `top_tokens`.
    """

    token: str | None
    logprob: float
    top_tokens: list[str] | None = field(default_factory=list)
    top_logprobs: list[float] = field(default_factory=list)
    token_id: int | None = None
    top_ids: list[int] | None = None


@dataclass
class Completion:
    """One sampled completion, as every engine reports it."""

    text: str
    finish_reason: str  # "stop", "length" or "error"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    logprobs: list[TokenLogprob] | None = None
    error: str | None = None

    @classmethod
    def failed(cls, error: str) -> Completion:
        """A completion that could not be produced; the row keeps why."""
        return cls(text="", finish_reason="error", error=scrub(error))  # reasons reach verdicts and reports


@dataclass
class PromptItem:
    """One prompt in its two views: what the student sees and what the teacher sees."""

    prompt_id: str
    prompt: Messages
    teacher_prompt: Messages
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # set when the prompt itself is unusable (empty, too long)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def prompt_id_for(prompt: Messages, teacher_prompt: Messages) -> str:
    """Stable id of a prompt: the same two views always give the same id."""
    return _digest({"prompt": prompt, "teacher_prompt": teacher_prompt})


def row_id_for(prompt_id: str, sample_index: int, teacher: dict[str, Any]) -> str:
    """Stable row id: hash of prompt, sample index, teacher model and sampling parameters."""
    return _digest({"p": prompt_id, "i": sample_index, "t": teacher})


def make_rows(
    item: PromptItem, completions: list[Completion], teacher: dict[str, Any], recipe_hash: str
) -> list[dict[str, Any]]:
    """Turn one prompt's completions into rows (the only place rows are built)."""
    rows = []
    for i, c in enumerate(completions):
        error = scrub(c.error)  # a server's error body may echo the request's credentials
        rows.append(
            {
                "id": row_id_for(item.prompt_id, i, teacher),
                "prompt_id": item.prompt_id,
                "sample_index": i,
                "prompt": item.prompt,
                "teacher_prompt": item.teacher_prompt,
                "completion": assistant(c.text),
                "teacher": teacher,
                "finish_reason": c.finish_reason,
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
                "logprobs": None
                if c.logprobs is None
                else [
                    {
                        "token": t.token,
                        "token_id": t.token_id,
                        "logprob": t.logprob,
                        "top_tokens": t.top_tokens,
                        "top_ids": t.top_ids,
                        "top_logprobs": t.top_logprobs,
                    }
                    for t in c.logprobs
                ],
                "verdicts": []
                if error is None
                else [{"name": "generate", "passed": False, "score": None, "reason": error}],
                "error": error,
                "meta": json.dumps(item.meta, ensure_ascii=False, sort_keys=True),
                "recipe_hash": recipe_hash,
            }
        )
    return rows


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows to an arrow table with the fixed schema."""
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def _with(schema: pa.Schema, replace: dict[str, pa.DataType], extra: list[tuple[str, pa.DataType]]) -> pa.Schema:
    fields = [pa.field(f.name, replace.get(f.name, f.type)) for f in schema]
    return pa.schema(fields + [pa.field(n, t) for n, t in extra])


# curated/kept.parquet: the rows SFTTrainer trains on directly (`prompt` = the student's messages,
# loss on the completion only); every provenance column stays, plus the ranking score.
# `original_completion` is set only when a reviewer's correction replaced the completion (synth review).
KEPT_SCHEMA = _with(SCHEMA, {}, [("score", pa.float64()), ("original_completion", pa.list_(MESSAGE))])
# curated/rejected.parquet: the record as generated, plus the first failing check and its reason.
REJECTED_SCHEMA = _with(
    SCHEMA, {}, [("rejected_by", pa.string()), ("reason", pa.string()), ("original_completion", pa.list_(MESSAGE))]
)
