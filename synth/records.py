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
import math
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
# `dtype`: what a local model's weights ran in (transformers engine; null for a server, where the
# server decides); rows written before it was recorded have no such field.
TEACHER = pa.struct(
    [
        ("model", pa.string()),
        ("revision", pa.string()),
        ("engine", pa.string()),
        ("sampling", SAMPLING),
        ("dtype", pa.string()),
    ]
)


def stored_teacher(value: dict[str, Any]) -> dict[str, Any]:
    """A `teacher` value as read from a shard, in the form the engines write it: a null `dtype` (an
    engine that does not record one) left out, so old and new shards of one teacher compare equal."""
    return {k: v for k, v in value.items() if not (k == "dtype" and v is None)}


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


# --- the contract of stored teacher log-probabilities ------------------------------------------------
# One place for what a stored top-k step must be: `synth generate` turns a completion whose steps
# break it into a failed row (`logprobs_problem`), and `sft run` leaves out stored rows that break it
# (sft/objectives/kd_data.py, for shards written before this check or edited since).

PROBABILITY_SLACK = 1e-2
"""How far above 1 the stored top-k probabilities may sum (float16 storage rounds each log-prob)."""
FLOAT16_LOWEST = -65504.0
"""The lowest finite float16: a log-prob below it (probability 0 to any float) is stored as it, not as -inf."""
STORED_ID_LIMIT = 2**31
"""Ids a shard's int32 columns can hold: the range checked when the vocabulary is unknown (a server)."""


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _ids_problem(top: list[Any] | tuple[Any, ...], token_id: Any, vocab_size: int | None) -> str | None:
    """Why top-k ids (and the sampled id) are not distinct ids of the vocabulary, or None."""
    ids = [*top, token_id] if token_id is not None else list(top)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        return "an id that is not an integer"
    limit = vocab_size if vocab_size is not None else STORED_ID_LIMIT
    if any(i < 0 or i >= limit for i in ids):
        where = "the vocabulary" if vocab_size is not None else "what a shard stores"
        return f"an id outside {where} (0..{limit - 1})"
    if len(set(top)) != len(top):
        return "the same id twice in the top-k"
    return None


def _logprobs_problem(logprobs: list[Any] | tuple[Any, ...]) -> str | None:
    """Why top-k log-probabilities are not a (partial) distribution: finite, <= 0, summing to at most 1."""
    if not all(_is_number(x) and math.isfinite(x) for x in logprobs):
        return "a log-probability that is not a finite number"
    if any(x > 0 for x in logprobs):
        return "a positive log-probability (probability above 1)"
    if sum(math.exp(x) for x in logprobs) > 1 + PROBABILITY_SLACK:
        return "the top-k probabilities sum above 1"
    return None


def step_problem(
    j: int, top: Any, logprobs: Any, token_id: Any, vocab_size: int | None, *, ids: bool = True
) -> str | None:
    """Why token j's top-k cannot be a teacher's distribution, or None when it can.

    Soft labels that are NaN, positive, out of the vocabulary or summing past 1 train to loss 0 or
    renormalise garbage without a sign, so such a step is never trained on. `top` holds the top-k ids,
    or with `ids=False` the token strings of a server that gave no ids (mapped by `sft run`);
    `vocab_size` None (a server's vocabulary, unknown at generate) checks only that ids fit a shard."""
    if not isinstance(top, list | tuple) or not isinstance(logprobs, list | tuple) or not top:
        return f"token {j}: no top-k ids and log-probabilities"
    if len(top) != len(logprobs):
        return f"token {j}: {len(top)} ids but {len(logprobs)} log-probabilities"
    if ids:
        problem = _ids_problem(top, token_id, vocab_size)
    elif not all(isinstance(s, str) for s in top):
        problem = "a top-k token that is not a string"
    else:
        problem = None if token_id is None else _ids_problem([], token_id, vocab_size)
    problem = problem or _logprobs_problem(logprobs)
    return f"token {j}: {problem}" if problem else None


def _text_problem(text: Any) -> str | None:
    """Why a token string cannot be stored (a shard holds UTF-8 text), or None."""
    if text is None:
        return None
    if not isinstance(text, str):
        return f"a token that is {type(text).__name__}, not a string"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "a token holding half of a UTF-16 surrogate pair, which is not text"
    return None


def logprobs_problem(c: Completion, k: int, vocab_size: int | None) -> str | None:
    """Why a completion's log-probabilities, asked for with `generate.logprobs: k`, cannot be stored, or None.

    The manifest promises k alternatives per token to `sft run`: a server that ignored the request
    (no log-probs at all, or none for a non-empty answer) or sent NaN, positive, repeated or
    out-of-range values must not leave rows that look like soft labels. The number of alternatives
    is not held to k: servers give k, or k+1 with the sampled token, and both are distributions."""
    if c.logprobs is None:
        return f"no log-probabilities, although generate.logprobs={k} asked for them"
    if not c.logprobs and c.text:
        return f"no log-probabilities for a non-empty answer, although generate.logprobs={k} asked for them"
    for j, t in enumerate(c.logprobs):
        if not isinstance(t, TokenLogprob):
            return f"token {j}: not a log-probability record"
        if not _is_number(t.logprob) or not math.isfinite(t.logprob) or t.logprob > 0:
            return f"token {j}: the sampled token's log-probability {t.logprob!r} is not a finite number <= 0"
        strings = [t.token, *(t.top_tokens or [])]
        if problem := next((p for s in strings if (p := _text_problem(s))), None):
            return f"token {j}: {problem}"
        top = t.top_ids if t.top_ids is not None else t.top_tokens
        if problem := step_problem(j, top, t.top_logprobs, t.token_id, vocab_size, ids=t.top_ids is not None):
            return problem
    return None


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


def _storable(logprobs: list[float] | None) -> list[float] | None:
    """Top-k log-probs as the float16 column keeps them meaningfully: below its lowest value (-65504,
    already probability 0) a value is stored as that value, not rounded to -inf, which `sft run`
    would take for a broken row."""
    if logprobs is None:
        return None
    return [max(x, FLOAT16_LOWEST) if _is_number(x) and math.isfinite(x) else x for x in logprobs]


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
                        "top_logprobs": _storable(t.top_logprobs),
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
