"""word_count: bounds on the number of words, for behaviours like "answer in at most 40 words".

Words are whitespace-separated pieces, as a reader counts them ("3.5" and "well-known" are one word
each). The score is the word count, so reports show the distribution.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from synth.curate.base import CheckSpec, Row, RowCheck, Verdict, runs
from synth.records import completion_text


class WordCountCheck(CheckSpec):
    type: Literal["word_count"]
    min_words: int | None = Field(None, ge=0, description="fewest whitespace-separated words")
    max_words: int | None = Field(None, ge=1, description="most whitespace-separated words")

    @model_validator(mode="after")
    def _bounds(self) -> WordCountCheck:
        if self.min_words is None and self.max_words is None:
            raise ValueError("give min_words, max_words or both")
        if self.min_words is not None and self.max_words is not None and self.min_words > self.max_words:
            raise ValueError(f"min_words {self.min_words} > max_words {self.max_words}")
        return self


@runs(WordCountCheck)
class WordCountFilter(RowCheck):
    """Keeps completions with min_words ≤ words ≤ max_words (either bound optional)."""

    def run(self, rows: list[Row]) -> list[Verdict]:
        lo, hi = self.spec.min_words, self.spec.max_words
        out = []
        for r in rows:
            n = len(completion_text(r).split())
            if lo is not None and n < lo:
                out.append(Verdict(False, float(n), f"too few words: {n} < min_words {lo}"))
            elif hi is not None and n > hi:
                out.append(Verdict(False, float(n), f"too many words: {n} > max_words {hi}"))
            else:
                out.append(Verdict(True, float(n)))
        return out
