"""Answer quality beside behaviour: word-level degeneration measures.

A behaviour rate can rise while the text turns into loops; these numbers are what `sft eval` puts
next to it so that such a student is not called a success. Word-level, language-neutral measures:
- repeated n-gram share: the share of an answer's word n-grams that repeat an earlier one
  (0 for fresh text, near 1 for "les bébé, les bébé, les bébé…");
- distinct-n: distinct n-grams / all n-grams (Li et al. 2016), the complement seen per answer.
Intervals come from `synth.stats.bootstrap_ci`.
"""

from __future__ import annotations

from synth.curate.base import ngrams, words


def repeated_ngram_share(text: str, n: int = 3) -> float:
    """Share of the word n-grams of `text` that are repeats of an earlier one (0 when none)."""
    grams = ngrams(words(text), n)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def distinct_n(text: str, n: int = 2) -> float:
    """Distinct word n-grams / all word n-grams; 1.0 for texts too short to have any."""
    grams = ngrams(words(text), n)
    return len(set(grams)) / len(grams) if grams else 1.0
