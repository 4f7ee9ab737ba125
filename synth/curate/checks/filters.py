"""Heuristic filters: cheap, per-row, no model. Each rejects with a reason a person can read."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from synth.curate.base import (
    CheckSpec,
    Context,
    Row,
    RowCheck,
    Verdict,
    completion_ngrams,
    completion_words,
    ngrams,
    runs,
    user_text,
    words,
)
from synth.errors import UserError
from synth.records import completion_text

DEFAULT_REFUSALS = [
    "i'm sorry, but",
    "i am sorry, but",
    "i cannot help",
    "i can't help",
    "i can't assist",
    "i cannot assist",
    "as an ai language model",
    "as an ai assistant",
    "i'm not able to",
    "i am not able to",
    "i'm unable to",
    "i am unable to",
    "je suis désolé, mais",
    "je ne peux pas vous aider",
    "en tant qu'ia",
]


class EmptyCheck(CheckSpec):
    type: Literal["empty"]


@runs(EmptyCheck)
class EmptyFilter(RowCheck):
    """Rejects empty or whitespace-only completions."""

    def run(self, rows: list[Row]) -> list[Verdict]:
        empty = Verdict(False, reason="empty completion")
        return [Verdict(True) if completion_text(r).strip() else empty for r in rows]


class TruncatedCheck(CheckSpec):
    type: Literal["truncated"]


@runs(TruncatedCheck)
class TruncatedFilter(RowCheck):
    """Rejects completions cut off by max_new_tokens (finish_reason == "length")."""

    def run(self, rows: list[Row]) -> list[Verdict]:
        bad = Verdict(False, reason="truncated: stopped at max_new_tokens")
        return [bad if r["finish_reason"] == "length" else Verdict(True) for r in rows]


class LengthCheck(CheckSpec):
    type: Literal["length"]
    min_chars: int | None = Field(None, ge=0)
    max_chars: int | None = Field(None, ge=1)
    min_tokens: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)


@runs(LengthCheck)
class LengthFilter(RowCheck):
    """Bounds on characters and/or tokens."""

    def run(self, rows: list[Row]) -> list[Verdict]:
        s = self.spec
        out = []
        for r in rows:
            chars = len(completion_text(r).strip())
            tokens = r.get("completion_tokens")
            reason = ""
            if s.min_chars is not None and chars < s.min_chars:
                reason = f"too short: {chars} chars < min_chars {s.min_chars}"
            elif s.max_chars is not None and chars > s.max_chars:
                reason = f"too long: {chars} chars > max_chars {s.max_chars}"
            elif (s.min_tokens is not None or s.max_tokens is not None) and tokens is None:
                reason = "token count unknown (the engine did not report it); use min_chars/max_chars"
            elif s.min_tokens is not None and tokens < s.min_tokens:
                reason = f"too short: {tokens} tokens < min_tokens {s.min_tokens}"
            elif s.max_tokens is not None and tokens > s.max_tokens:
                reason = f"too long: {tokens} tokens > max_tokens {s.max_tokens}"
            out.append(Verdict(not reason, reason=reason))
        return out


class RepetitionCheck(CheckSpec):
    type: Literal["repetition"]
    ngram: int = Field(3, ge=1, le=20, description="word n-gram size")
    max_ngram_repeat: float = Field(0.3, ge=0, le=1, description="max share of n-grams that are repeats")
    max_line_repeat: float = Field(0.3, ge=0, le=1, description="max share of non-empty lines that are repeats")


@runs(RepetitionCheck)
class RepetitionFilter(RowCheck):
    """Rejects degenerate loops: many repeated word n-grams or repeated lines."""

    def run(self, rows: list[Row]) -> list[Verdict]:
        s = self.spec
        out = []
        for r in rows:
            grams = completion_ngrams(r, s.ngram)
            gram_rep = 1 - len(set(grams)) / len(grams) if grams else 0.0
            lines = [x.strip() for x in completion_text(r).splitlines() if x.strip()]
            line_rep = 1 - len(set(lines)) / len(lines) if lines else 0.0
            if gram_rep > s.max_ngram_repeat:
                reason = f"repetitive: {gram_rep:.0%} of {s.ngram}-grams repeat (max {s.max_ngram_repeat:.0%})"
            elif line_rep > s.max_line_repeat:
                reason = f"repetitive: {line_rep:.0%} of lines repeat (max {s.max_line_repeat:.0%})"
            else:
                reason = ""
            out.append(Verdict(not reason, score=1.0 - gram_rep, reason=reason))
        return out


class RefusalCheck(CheckSpec):
    type: Literal["refusal"]
    phrases: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSALS))


@runs(RefusalCheck)
class RefusalFilter(RowCheck):
    """Rejects refusals and boilerplate, matched case-insensitively against a phrase list."""

    def run(self, rows: list[Row]) -> list[Verdict]:
        phrases = [p.lower() for p in self.spec.phrases]
        out = []
        for r in rows:
            text = completion_text(r).lower()
            hit = next((p for p in phrases if p in text), None)
            out.append(Verdict(True) if hit is None else Verdict(False, reason=f"refusal phrase {hit!r}"))
        return out


@lru_cache(maxsize=1)
def language_identifier() -> Any:
    """py3langid's identifier with normalised probabilities, loaded once per process."""
    try:
        from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier
    except ImportError:
        raise UserError("the language check needs py3langid: pip install py3langid") from None
    return LanguageIdentifier.from_modelpath(Path(MODEL_DIR) / MODEL_FILE, norm_probs=True)


class LanguageCheck(CheckSpec):
    type: Literal["language"]
    scores = True  # the detector's probability of a wanted language
    score_bounds = (0.0, 1.0)
    languages: list[str] = Field(min_length=1, description="ISO 639-1 codes, e.g. [fr]")
    min_confidence: float = Field(0.5, ge=0, le=1)


@runs(LanguageCheck)
class LanguageFilter(RowCheck):
    """Keeps completions in the wanted languages, by py3langid (offline, ~30k texts/s here).

    The score is the detector's probability of the wanted language (0 when another language wins),
    so it can rank samples for best-of-n.
    """

    def setup(self, ctx: Context) -> None:
        self.identifier = language_identifier()
        unknown = [code for code in self.spec.languages if code not in self.identifier.nb_classes]
        if unknown:  # a code the detector never outputs would silently reject every row
            raise UserError(
                f"{self.field(ctx)}.languages: {', '.join(map(repr, unknown))} is not a language code py3langid knows",
                "use lower-case ISO 639-1 codes, e.g. en, fr, de, es, zh; known: "
                + " ".join(self.identifier.nb_classes),
            )

    def run(self, rows: list[Row]) -> list[Verdict]:
        s = self.spec
        out = []
        for r in rows:
            lang, prob = self.identifier.classify(completion_text(r))
            prob = float(prob)
            ok = lang in s.languages and prob >= s.min_confidence
            score = prob if lang in s.languages else 0.0
            reason = "" if ok else f"language {lang} ({prob:.2f}), want {'/'.join(s.languages)} ≥ {s.min_confidence}"
            out.append(Verdict(ok, score=score, reason=reason))
        return out


class EchoCheck(CheckSpec):
    type: Literal["echo"]
    max_overlap: float = Field(0.8, ge=0, le=1, description="max share of completion words copied from the prompt")


@runs(EchoCheck)
class EchoFilter(RowCheck):
    """Rejects completions that mostly repeat the prompt."""

    def run(self, rows: list[Row]) -> list[Verdict]:
        out = []
        prompt_grams: dict[tuple[str, int], set[tuple[str, ...]]] = {}  # the n samples of a prompt share it
        for r in rows:
            n = 3 if len(completion_words(r)) >= 3 else 1
            grams = completion_ngrams(r, n)
            seen = prompt_grams.get((r["prompt_id"], n))
            if seen is None:
                seen = prompt_grams[(r["prompt_id"], n)] = set(ngrams(words(user_text(r)), n))
            overlap = (sum(map(seen.__contains__, grams)) / len(grams)) if grams else 0.0
            if overlap > self.spec.max_overlap:
                out.append(
                    Verdict(False, reason=f"echoes the prompt: {overlap:.0%} of its {n}-grams are in the prompt")
                )
            else:
                out.append(Verdict(True))
        return out
