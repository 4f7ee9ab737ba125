"""Stored soft labels from a teacher whose tokenizer is not the student's (`train.kd.cross_tokenizer: auto`).

The teacher's stored steps (one per token it generated, each with its top-k alternatives) and the
student's tokens of the same answer are two tokenisations of one text. They are aligned by text, as
TRL's GOLD aligns them on-policy (`ULDLoss._align_by_byte_offsets`): each token gets the character
offset where its text ends in the answer, and a group closes wherever both sides end at the same
offset. Then, per group:

- one teacher token and one student token with the same text: the teacher's top-k alternatives are
  mapped to the student's vocabulary by their text (the one student entry decoding to exactly it; the
  teacher's end-of-turn token to the student's), and the usual sparse KD loss applies (alternatives
  with no student entry fall into the tail bucket, as the mass outside the top-k does);
- any other group (the tokenisers split this stretch of text differently): ULD, a vocabulary-free
  distance. Each side's probabilities are merged over the group as GOLD's "observed" strategy does
  (the first token's distribution times the probabilities of the tokens actually written after it),
  sorted, and compared by L1 distance, the mass outside the top-k as one more entry.

A token's text is its share of the decoded answer: with token ids and the tokenizer, what decoding
up to it adds (a token holding part of a multi-byte character adds nothing; the token completing
the character adds all of it; special tokens add nothing); with a server's token strings, the
string itself, a run of strings holding parts of a character (U+FFFD) taking the characters up to
where the next string resumes. A row whose tokens do not spell its answer is reported and left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

REPLACEMENT = "\ufffd"  # what a decoder writes for the bytes of an unfinished character
WINDOW = 8  # tokens of context a decoder needs to give a token's text (spaces, byte fallback)


def pieces_from_ids(tokenizer: Any, ids: list[int]) -> list[str]:
    """Each token's share of the decoded text: what decoding it after the tokens before it adds."""
    out = []
    for i in range(len(ids)):
        context = ids[max(0, i - WINDOW) : i]
        before = tokenizer.decode(context, skip_special_tokens=True).rstrip(REPLACEMENT)
        now = tokenizer.decode([*context, ids[i]], skip_special_tokens=True).rstrip(REPLACEMENT)
        out.append(now[len(before) :] if now.startswith(before) else now)
    return out


def alternative_texts(tokenizer: Any, ids: list[int], step: int, alternatives: list[int]) -> list[str | None]:
    """The text each alternative token would have added at `step` (None: a special token)."""
    context = ids[max(0, step - WINDOW) : step]
    before = tokenizer.decode(context, skip_special_tokens=True)
    special = set(tokenizer.all_special_ids)
    out: list[str | None] = []
    for alt in alternatives:
        if alt in special:
            out.append(None)
            continue
        now = tokenizer.decode([*context, alt], skip_special_tokens=True)
        out.append(now[len(before) :] if now.startswith(before) else None)
    return out


def char_ends(text: str, pieces: list[str]) -> list[int] | str:
    """Where in `text` (a character offset) each token's piece ends, or why the pieces do not spell it.

    An empty piece (a special token, a partial character) ends where the previous one did; a piece past
    the end of the answer (a stop or template token) ends at its end. Pieces holding U+FFFD (a server's
    strings for parts of one character) take the characters up to where the next piece resumes.
    """
    ends: list[int] = []
    cursor, partial = 0, None  # partial: the last token of a run still waiting for its characters
    for i, piece in enumerate(pieces):
        if REPLACEMENT in piece:
            ends.append(cursor)
            partial = i
            continue
        if not piece:
            ends.append(cursor)
            continue
        if partial is not None:
            at = text.find(piece, cursor, cursor + 8 + len(piece))
            if at < 0:
                return f"token {i} ({piece!r}) does not follow the partial characters at character {cursor}"
            cursor = ends[partial] = at
            partial = None
        if text.startswith(piece, cursor):
            cursor += len(piece)
        elif cursor < len(text):
            return f"token {i} ({piece!r}) is not the answer's text at character {cursor}"
        ends.append(cursor)
    if partial is not None:
        cursor = ends[partial] = len(text)
    if cursor != len(text):
        return f"the tokens spell the answer only up to character {cursor} of {len(text)}"
    return ends


def groups(student_ends: list[int], teacher_ends: list[int]) -> list[tuple[list[int], list[int]]]:
    """(student tokens, teacher tokens) covering the same text, in order: a group closes where both
    sides' tokens end at the same offset (GOLD's byte-offset walk); what is left after the last common
    end (e.g. the template's closing tokens) forms a last group, one side possibly empty."""
    out: list[tuple[list[int], list[int]]] = []
    s = t = s0 = t0 = 0
    while s < len(student_ends) and t < len(teacher_ends):
        if student_ends[s] < teacher_ends[t]:
            s += 1
        elif student_ends[s] > teacher_ends[t]:
            t += 1
        else:
            s, t = s + 1, t + 1
            out.append((list(range(s0, s)), list(range(t0, t))))
            s0, t0 = s, t
    if s0 < len(student_ends) or t0 < len(teacher_ends):
        out.append((list(range(s0, len(student_ends))), list(range(t0, len(teacher_ends)))))
    return out


@dataclass
class CrossTargets:
    """The soft labels of one row in the student's terms: per student completion token, the mapped
    top-k (ids in the student's vocabulary, log-probs; empty where a ULD group or nothing covers it),
    and the ULD groups (student completion token indices, the teacher's merged probabilities sorted,
    with the mass outside the top-k last)."""

    ids: list[list[int]]
    logprobs: list[list[float]]
    uld_tokens: list[list[int]]
    uld_probs: list[list[float]]
    direct: int  # tokens with mapped targets
    unmapped_mass: float  # teacher probability at direct tokens whose alternative has no student entry


def cross_targets(
    student_ends: list[int],
    student_ids: list[int],
    teacher_pieces: list[str],
    steps: list[dict[str, Any]],
    alt_texts: list[list[str | None]],
    text: str,
    student_id_of: Any,
    end_id: int,
) -> CrossTargets | str:
    """Align one row and build its targets (see the module docstring), or why it cannot be aligned.

    `student_ends`: where each student token ends in `text` (`char_ends`, which the caller needs anyway
    to find the end of turn); `steps`: the teacher's stored steps (`logprob` of the written token,
    `top_logprobs`); `alt_texts`: the text of each step's alternatives (None: a special token, taken as
    the end of the answer);
    `student_id_of`: text → the student's token id or None; `end_id`: the student's end-of-turn token.
    """
    t_ends = char_ends(text, teacher_pieces)
    if isinstance(t_ends, str):
        return f"the teacher's tokens: {t_ends}"
    n = len(student_ids)
    ids: list[list[int]] = [[] for _ in range(n)]
    lps: list[list[float]] = [[] for _ in range(n)]
    uld_tokens, uld_probs = [], []
    direct, unmapped = 0, 0.0
    for s_group, t_group in groups(student_ends, t_ends):
        if not s_group or not t_group:
            continue  # text (or a closing token) on one side only: cross-entropy alone there
        if len(s_group) == 1 and len(t_group) == 1:
            j, step = s_group[0], steps[t_group[0]]
            mapped: dict[int, float] = {}
            for alt, lp in zip(alt_texts[t_group[0]], step["top_logprobs"], strict=True):
                sid = end_id if alt is None else student_id_of(alt)
                if sid is None or not math.isfinite(lp):
                    unmapped += math.exp(lp) if math.isfinite(lp) else 0.0
                    continue
                mapped[sid] = _logaddexp(mapped[sid], lp) if sid in mapped else lp  # two spellings, one entry
            if mapped:
                ids[j], lps[j] = list(mapped), list(mapped.values())
                direct += 1
            continue
        first = steps[t_group[0]]
        later = sum(float(steps[t]["logprob"]) for t in t_group[1:])
        merged = sorted((math.exp(lp + later) for lp in first["top_logprobs"] if math.isfinite(lp)), reverse=True)
        tail = max(0.0, math.exp(later) - sum(merged))
        uld_tokens.append(s_group)
        uld_probs.append([*merged, tail])
    return CrossTargets(ids, lps, uld_tokens, uld_probs, direct, unmapped)


def _logaddexp(a: float, b: float) -> float:
    top = max(a, b)
    return top + math.log(math.exp(a - top) + math.exp(b - top))


def uld_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, spans: list[list[tuple[list[int], list[float]]]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over ULD groups of the L1 distance between the sorted merged probabilities of student and
    teacher, and the number of groups.

    `logits` [B, L, V] (position p predicts token p + 1); `spans[b]`: (the group's token positions in
    row b, the teacher's sorted merged probabilities with the tail last). The student's merged
    distribution: softmax at the position before the group's first token, times the probabilities
    the student gives the group's later tokens.
    """
    total, count = logits.new_zeros((), dtype=torch.float32), 0
    for b, row in enumerate(spans):
        for positions, teacher in row:
            first, later = positions[0], positions[1:]
            log_first = torch.log_softmax(logits[b, first - 1].float(), dim=-1)
            scale = logits.new_zeros((), dtype=torch.float32)
            for p in later:
                scale = scale + torch.log_softmax(logits[b, p - 1].float(), dim=-1)[input_ids[b, p]]
            k = len(teacher) - 1
            top = (log_first.topk(k).values + scale).exp()
            student = torch.cat([top, (scale.exp() - top.sum()).clamp(min=0).view(1)])
            total = total + (student - torch.tensor(teacher, dtype=student.dtype, device=student.device)).abs().sum()
            count += 1
    return total, torch.tensor(count, device=logits.device)
