"""The stored teacher log-probabilities of curated rows, as the columns `sft.objectives.kd.KDTrainer` reads.

Rows carry the teacher's top-k per generated token in their `logprobs` column (written by `synth
generate` with `generate.logprobs: k`, passed through curate unchanged). Before any training:

- the generation manifest must name the tokenizer whose ids those are, and it must be the student's
  (same vocabulary hash): ids of another vocabulary would teach the wrong tokens, silently;
- ids come from the rows where the engine knew them; where a server gave only token strings, each
  string is mapped to the one vocabulary entry that decodes to exactly that text. A row with a
  string that maps to no entry, or to several, is reported by row and left out, never guessed;
- every step must be a distribution over the student's vocabulary: finite log-probabilities ≤ 0
  summing to at most 1, distinct ids inside the vocabulary. A row with a step that is not is
  reported by row and left out: trained on, it would give loss 0 or a renormalised garbage target.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft.objectives.kd import IDS, LOGPROBS, TOKENS, ULD_PROBS, ULD_TOKENS
from sft.training.lengths import chat_ids
from synth.errors import UserError
from synth.io import read_json
from synth.records import step_problem
from synth.tokenizers import vocab_hash


def check_tokenizer(run_dir: Path, tokenizer: Any, student: str, cross: bool = False) -> dict[str, Any]:
    """The manifest's logprob description, after checking that its tokenizer is the student's; with
    `cross` (train.kd.cross_tokenizer=auto) another or an unknown tokenizer passes, `info["cross"]` true."""
    manifest_path = run_dir / "generations" / "_manifest.json"
    manifest = read_json(manifest_path, "the generation manifest", hint="run `synth generate` again to rewrite it")
    info = manifest.get("logprobs") if isinstance(manifest, dict) else None
    if not info:
        raise UserError(
            f"{manifest_path}: the generations carry no teacher log-probabilities",
            "generate with generate.logprobs=K (e.g. 8) in a new run folder, or use train.kd.source=model",
        )
    recorded = info.get("tokenizer") or {}
    if cross and recorded.get("vocab_hash") != vocab_hash(tokenizer):
        return {**info, "cross": True}
    if not recorded.get("vocab_hash"):
        raise UserError(
            f"{manifest_path}: the tokenizer of the stored log-probabilities is unknown (a server's model with "
            "no local tokenizer)",
            "set teacher.path to a local folder or Hub id of the served model and generate again, so its "
            "tokenizer is recorded",
        )
    mine = vocab_hash(tokenizer)
    if recorded["vocab_hash"] != mine:
        raise UserError(
            f"model.path={student!r}: the student's tokenizer (vocabulary hash {mine}, {len(tokenizer)} tokens) "
            f"is not the tokenizer of the stored log-probabilities ({recorded.get('name')}, hash "
            f"{recorded['vocab_hash']}, {recorded.get('vocab_size')} tokens)",
            "set train.kd.cross_tokenizer=auto (aligned by text), use a student with the teacher's tokenizer, "
            "or train.objective=sft (hard labels)",
        )
    return info


class StringMapper:
    """Token string → id, for servers that report strings only: the unique entry decoding to that text."""

    def __init__(self, tokenizer: Any) -> None:
        self.ids: dict[str, int | None] = {}
        for i in range(len(tokenizer)):
            text = tokenizer.decode([i])
            self.ids[text] = None if text in self.ids else i  # None: ambiguous

    def __call__(self, token: str) -> int | None:
        return self.ids.get(token)


def topk_columns(
    row: dict[str, Any], mapper: StringMapper | None, vocab_size: int | None = None
) -> tuple[dict[str, Any] | None, str | None]:
    """The KD columns of one row, or (None, why not): every step must hold a distribution over the
    student's vocabulary (`synth.records.step_problem`, the check `synth generate` makes too)."""
    steps = row.get("logprobs")
    if not steps:
        return None, "no stored log-probabilities"
    ids, logprobs, chosen = [], [], []
    for j, t in enumerate(steps):
        if not isinstance(t, dict):
            return None, f"token {j}: not a log-probability record"
        top = t.get("top_ids")
        if top is None:
            if mapper is None or t.get("top_tokens") is None:
                return None, f"token {j} has neither ids nor token strings"
            top = [mapper(s) if isinstance(s, str) else None for s in t["top_tokens"]]
            if None in top:
                bad = t["top_tokens"][top.index(None)]
                return None, f"token {j}: the string {bad!r} is no single vocabulary entry"
        token_id = t.get("token_id")
        if token_id is None and mapper is not None and isinstance(t.get("token"), str):
            token_id = mapper(t["token"])
        if problem := step_problem(j, top, t.get("top_logprobs"), token_id, vocab_size):
            return None, problem
        ids.append(list(top))
        logprobs.append([float(x) for x in t["top_logprobs"]])
        chosen.append(token_id)
    out = {IDS: ids, LOGPROBS: logprobs}
    if None not in chosen:
        out[TOKENS] = chosen
    return out, None


def with_topk(ds: Any, tokenizer: Any) -> tuple[Any, list[tuple[int, str]]]:
    """The curated dataset with the KD columns, and the rows left out (index, why)."""
    rows = ds.to_list()
    needs_strings = any(t.get("top_ids") is None for r in rows for t in (r.get("logprobs") or [])[:1])
    mapper = StringMapper(tokenizer) if needs_strings else None
    keep, extra, dropped = [], {IDS: [], LOGPROBS: [], TOKENS: []}, []
    for i, r in enumerate(rows):
        cols, why = topk_columns(r, mapper, len(tokenizer))
        if cols is None:
            dropped.append((i, why or ""))
            continue
        keep.append(i)
        for k in extra:
            extra[k].append(cols.get(k))
    out = ds.select(keep)
    for k, values in extra.items():
        if k == TOKENS and any(v is None for v in values):
            continue
        out = out.add_column(k, values)
    return out, dropped


def with_sampled_tokens(ds: Any, tokenizer: Any) -> Any:
    """Rows tokenised from the teacher's own sampled token ids instead of the completion's text.

    Decoding the sampled ids and tokenising the text again does not always give the same ids (a
    byte-level BPE has several spellings of one text; about one row in eight on SmolLM2's answers),
    and the stored top-k belong to the sampled ids. So the row becomes TRL's pre-tokenised form:
    `input_ids` = the prompt as the chat template renders it + the sampled ids + the template's
    closing tokens (those the teacher did not generate: "<|im_end|>" after an answer cut at
    max_new_tokens, the "\\n" after it), and `completion_mask` marks everything after the prompt.
    """
    probe = [{"role": "user", "content": "x"}]
    prompt = chat_ids(tokenizer, probe, generation_prompt=True)
    full = chat_ids(tokenizer, [*probe, {"role": "assistant", "content": "y"}])
    content = tokenizer("y", add_special_tokens=False)["input_ids"]
    suffix = full[len(prompt) + len(content) :]  # e.g. ["<|im_end|>", "\n"]

    def tokenise(row: dict[str, Any]) -> dict[str, Any]:
        prompt_ids = chat_ids(tokenizer, row["prompt"], generation_prompt=True)
        sampled = list(row[TOKENS])
        closing = suffix[1:] if suffix and sampled and sampled[-1] == suffix[0] else suffix
        completion = sampled + closing
        return {"input_ids": prompt_ids + completion, "completion_mask": [0] * len(prompt_ids) + [1] * len(completion)}

    return ds.map(tokenise, remove_columns=[c for c in ds.column_names if c in ("prompt", "completion")])


@dataclass
class CrossReport:
    """What cross-tokenizer alignment made of the stored soft labels, for `sft run` to say."""

    rows: int = 0
    tokens: int = 0  # student answer tokens up to the end of turn
    direct: int = 0  # of them with a mapped teacher distribution (one teacher token, same text)
    uld_groups: int = 0  # stretches the two tokenisers split differently, compared by ULD
    unmapped_mass: float = 0.0  # summed teacher probability of alternatives with no student token

    def sentence(self) -> str:
        share = self.direct / self.tokens if self.tokens else 0.0
        return (
            f"cross-tokenizer soft labels on {self.rows} rows: {share:.0%} of {self.tokens} answer tokens matched one "
            f"teacher token (KL on the mapped top-k), {self.uld_groups} stretches split differently (ULD); "
            f"{self.unmapped_mass / max(1, self.direct):.1%} of the teacher's top-k mass per matched token had no "
            "student token (counted in the tail)"
        )


def with_cross_topk(ds: Any, tokenizer: Any, teacher_tokenizer: Any) -> tuple[Any, list[tuple[int, str]], CrossReport]:
    """Rows whose stored soft labels belong to another tokenizer, in the student's terms
    (`sft.objectives.cross_tokenizer`): pre-tokenised (`input_ids`, `completion_mask`, as TRL takes them),
    the mapped top-k per answer token up to the end of turn (empty where there is none) and the ULD
    groups; rows that cannot be aligned are left out with why. `teacher_tokenizer` None: the rows must
    carry the teacher's token strings (a server's)."""
    from sft.objectives.cross_tokenizer import alternative_texts, char_ends, cross_targets, pieces_from_ids

    mapper = StringMapper(tokenizer)
    rows = ds.to_list()
    keep, dropped, report = [], [], CrossReport()
    extra: dict[str, list[Any]] = {
        "input_ids": [],
        "completion_mask": [],
        IDS: [],
        LOGPROBS: [],
        ULD_TOKENS: [],
        ULD_PROBS: [],
    }
    for i, row in enumerate(rows):
        steps = row.get("logprobs") or []
        if not steps:
            dropped.append((i, "no stored log-probabilities"))
            continue
        by_ids = teacher_tokenizer is not None and all(
            s.get("token_id") is not None and s.get("top_ids") for s in steps
        )
        if not by_ids and any(s.get("token") is None or s.get("top_tokens") is None for s in steps):
            dropped.append((i, "the teacher's token texts are unknown (neither its tokenizer nor token strings)"))
            continue
        problem = next(
            (
                p
                for j, s in enumerate(steps)
                if (p := step_problem(j, s.get("top_ids") if by_ids else s.get("top_tokens"), s.get("top_logprobs"),
                                      s.get("token_id") if by_ids else None, None, ids=by_ids))
            ),
            None,
        )  # fmt: skip
        if problem:
            dropped.append((i, problem))
            continue
        prompt_ids = chat_ids(tokenizer, row["prompt"], generation_prompt=True)
        full = chat_ids(tokenizer, row["prompt"] + row["completion"])
        start = next((n for n, (a, b) in enumerate(zip(prompt_ids, full, strict=False)) if a != b), len(prompt_ids))
        completion = full[start:]
        text = row["completion"][-1]["content"]
        s_ends = char_ends(text, pieces_from_ids(tokenizer, completion))
        if isinstance(s_ends, str):
            dropped.append((i, f"the student's tokens: {s_ends}"))
            continue
        # the end-of-turn token: the first after the tokens that spell the answer (the first, for none)
        spelled = next((j for j, e in enumerate(s_ends) if e == len(text)), len(completion))
        end_at = spelled + 1 if text else spelled
        if end_at >= len(completion):
            dropped.append((i, "the student's tokens: the chat template closes the answer with no token"))
            continue
        if by_ids:
            t_ids = [s["token_id"] for s in steps]
            t_pieces = pieces_from_ids(teacher_tokenizer, t_ids)
            alts = [alternative_texts(teacher_tokenizer, t_ids, j, s["top_ids"]) for j, s in enumerate(steps)]
        else:
            t_pieces = [s["token"] for s in steps]
            alts = [list(s["top_tokens"]) for s in steps]
        targets = cross_targets(s_ends, completion, t_pieces, steps, alts, text, mapper, completion[end_at])
        if isinstance(targets, str):
            dropped.append((i, targets))
            continue
        keep.append(i)
        last = end_at + 1  # one entry per answer token up to the end of turn; the template's rest: none
        extra["input_ids"].append(full[:start] + completion)
        extra["completion_mask"].append([0] * start + [1] * len(completion))
        extra[IDS].append(targets.ids[:last])
        extra[LOGPROBS].append(targets.logprobs[:last])
        extra[ULD_TOKENS].append(targets.uld_tokens)
        extra[ULD_PROBS].append(targets.uld_probs)
        report.rows += 1
        report.tokens += end_at + 1
        report.direct += targets.direct
        report.uld_groups += len(targets.uld_tokens)
        report.unmapped_mass += targets.unmapped_mass
    out = ds.select(keep).remove_columns([c for c in ds.column_names if c in ("prompt", "completion")])
    for k, values in extra.items():
        out = out.add_column(k, values)
    return out, dropped, report
