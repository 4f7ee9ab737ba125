"""Answer quality beside behaviour: word-level degeneration measures, judged on the text there is.

A behaviour rate can rise while the text turns into loops; these numbers are what `sft eval` puts
next to it so that such a student is not called a success. Word-level, language-neutral measures:
- repeated n-gram share: the share of an answer's word n-grams that repeat an earlier one
  (0 for fresh text, near 1 for "les bébé, les bébé, les bébé…");
- distinct-n: distinct n-grams / all n-grams (Li et al. 2016), the complement seen per answer.

Three per-answer facts keep apart what the recipe's "clean" mixes (`answer_measures`):
- empty: the answer has no word (only whitespace, punctuation or symbols), or the engine failed and
  gave none. There is nothing to judge in it, so it is neither loop-free nor finished: counting it as
  either would give a model that says nothing a perfect score. Empty answers get their own rate.
- finished: a non-empty answer that ended by itself (finish reason "stop"), not cut at
  `eval.max_new_tokens`. A fluent long answer cut at the budget is unfinished but not a loop: whether
  a model finishes says as much about the budget as about the model.
- loop-free: a non-empty answer whose repeated word 3-gram share and repeated line share are both at
  most the `repetition` check's defaults (0.3), whatever the recipe's own checks: judged on the words
  there are, whether the answer finished or was cut.
Intervals come from `synth.stats`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from synth.curate.base import ngrams, words
from synth.curate.checks.filters import RepetitionCheck

LOOP_NGRAM = 3
"""Word n-gram size of the loop measure (the `repetition` check's default)."""
MAX_NGRAM_REPEAT: float = RepetitionCheck.model_fields["max_ngram_repeat"].default
"""Above this share of repeated word 3-grams an answer is a loop (the `repetition` check's default, 0.3)."""
MAX_LINE_REPEAT: float = RepetitionCheck.model_fields["max_line_repeat"].default
"""Above this share of repeated non-empty lines an answer is a loop (the `repetition` check's default, 0.3)."""


def repeated_ngram_share(text: str, n: int = 3) -> float:
    """Share of the word n-grams of `text` that are repeats of an earlier one (0 when none)."""
    grams = ngrams(words(text), n)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def distinct_n(text: str, n: int = 2) -> float:
    """Distinct word n-grams / all word n-grams; 1.0 for texts too short to have any (see
    `answer_measures`, which reports None for those instead: no pair of words is not diversity)."""
    grams = ngrams(words(text), n)
    return len(set(grams)) / len(grams) if grams else 1.0


def repeated_line_share(text: str) -> float:
    """Share of the non-empty lines of `text` that repeat an earlier one (0 when none): a list whose
    items repeat is a loop even when each line is short."""
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    return 1 - len(set(lines)) / len(lines) if lines else 0.0


def is_empty(text: str | None, error: str | None = None) -> bool:
    """No word to judge: whitespace, punctuation or symbols only, or no answer at all (an engine error)."""
    return error is not None or not words(text or "")


def is_loop_free(text: str) -> bool | None:
    """Whether a non-empty answer is free of loops (repeated 3-grams and repeated lines both at most 0.3);
    None for an empty one, which has no text to be free of anything."""
    if is_empty(text):
        return None
    return repeated_ngram_share(text, LOOP_NGRAM) <= MAX_NGRAM_REPEAT and repeated_line_share(text) <= MAX_LINE_REPEAT


def is_finished(text: str, finish_reason: str | None) -> bool | None:
    """Whether a non-empty answer ended by itself rather than at the token budget; None for an empty one
    (stopping at once with nothing said is not finishing an answer)."""
    if is_empty(text):
        return None
    return finish_reason == "stop"


def answer_measures(text: str | None, finish_reason: str | None, error: str | None) -> dict[str, Any]:
    """The per-answer quality columns of eval/answers.parquet: `empty`, `finished`, `loop_free` (None for
    an empty answer), `repeated_3gram_share` (None for an empty answer) and `distinct_2` (None for an
    answer with fewer than two words: the 1.0 of `distinct_n` would read as perfect diversity)."""
    text = text or ""
    if is_empty(text, error):
        return {"empty": True, "finished": None, "loop_free": None, "repeated_3gram_share": None, "distinct_2": None}
    return {
        "empty": False,
        "finished": is_finished(text, finish_reason),
        "loop_free": is_loop_free(text),
        "repeated_3gram_share": repeated_ngram_share(text, LOOP_NGRAM),
        "distinct_2": distinct_n(text, 2) if len(words(text)) >= 2 else None,
    }


def normalised(text: str) -> str:
    """An answer as compared for sameness: case and runs of whitespace do not make two answers differ."""
    return " ".join(text.split()).casefold()


def most_common_answer(answers: Iterable[tuple[str, str]]) -> tuple[str, int] | None:
    """Over (prompt id, text) pairs of non-empty answers: the text given to the most prompts and how many
    prompts it answers; None without any answer.

    Counted per prompt, not per answer: a prompt's greedy and sampled answers may rightly agree, but one
    text answering different prompts is a model that no longer reads them.
    """
    by_text: dict[str, set[str]] = {}
    first: dict[str, str] = {}
    for prompt_id, text in answers:
        key = normalised(text)
        by_text.setdefault(key, set()).add(prompt_id)
        first.setdefault(key, text)
    if not by_text:
        return None
    key, n = Counter({k: len(v) for k, v in by_text.items()}).most_common(1)[0]
    return first[key], n
