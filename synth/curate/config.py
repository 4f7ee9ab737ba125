"""The recipe's `curate:` section: an ordered list of checks, a ranking score, and a selection rule.

Each check is `{type: ..., name: ..., <its parameters>}`; a user adds, removes or reorders them
without code. Validated with the rest of the recipe, so an unknown check or a threshold out of range
fails before any work, naming the field (e.g. `curate.checks.3.threshold`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from synth.specs import Strict, TeacherSpec

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


class CheckBase(Strict):
    """Fields every check has."""

    name: str | None = Field(None, description="name in verdicts and reports (default: the type)")

    @property
    def label(self) -> str:
        return self.name or self.type  # type: ignore[attr-defined]


class EmptyCheck(CheckBase):
    type: Literal["empty"]


class TruncatedCheck(CheckBase):
    type: Literal["truncated"]


class LengthCheck(CheckBase):
    type: Literal["length"]
    min_chars: int | None = Field(None, ge=0)
    max_chars: int | None = Field(None, ge=1)
    min_tokens: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)


class RepetitionCheck(CheckBase):
    type: Literal["repetition"]
    ngram: int = Field(3, ge=1, le=20, description="word n-gram size")
    max_ngram_repeat: float = Field(0.3, ge=0, le=1, description="max share of n-grams that are repeats")
    max_line_repeat: float = Field(0.3, ge=0, le=1, description="max share of non-empty lines that are repeats")


class WordCountCheck(CheckBase):
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


class RefusalCheck(CheckBase):
    type: Literal["refusal"]
    phrases: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSALS))


class LanguageCheck(CheckBase):
    type: Literal["language"]
    languages: list[str] = Field(min_length=1, description="ISO 639-1 codes, e.g. [fr]")
    min_confidence: float = Field(0.5, ge=0, le=1)


class EchoCheck(CheckBase):
    type: Literal["echo"]
    max_overlap: float = Field(0.8, ge=0, le=1, description="max share of completion words copied from the prompt")


class ExactDedupCheck(CheckBase):
    type: Literal["exact_dedup"]


class NearDedupCheck(CheckBase):
    type: Literal["near_dedup"]
    threshold: float = Field(0.8, gt=0, lt=1, description="estimated Jaccard similarity that makes a duplicate")
    ngram: int = Field(3, ge=1, le=20, description="word shingle size")
    num_perm: int = Field(128, ge=16, le=1024)


class EvalSet(Strict):
    """An evaluation set whose items must not leak into training data."""

    path: str | None = None
    dataset: str | None = None
    split: str = "test"
    columns: list[str] = Field(default_factory=lambda: ["prompt"], min_length=1)

    @model_validator(mode="after")
    def _one_source(self) -> EvalSet:
        if bool(self.path) == bool(self.dataset):
            raise ValueError("give exactly one of path or dataset")
        return self


class DecontaminateCheck(CheckBase):
    type: Literal["decontaminate"]
    eval_sets: list[EvalSet] = Field(min_length=1)
    ngram: int = Field(13, ge=3, le=50, description="word n-gram size (eval items shorter than this match whole)")
    fields: list[Literal["prompt", "completion"]] = Field(default_factory=lambda: ["prompt", "completion"])


class RegexCheck(CheckBase):
    type: Literal["regex"]
    pattern: str
    must_match: bool = True
    ignore_case: bool = False


class JsonSchemaCheck(CheckBase):
    type: Literal["json_schema"]
    json_schema: dict[str, Any] = Field(alias="schema")


class ExactMatchCheck(CheckBase):
    type: Literal["exact_match"]
    reference: str = Field(description="name of the meta field holding the reference (see prompts.meta_columns)")
    mode: Literal["exact", "contains"] = "exact"
    normalize: bool = True


class PythonCheck(CheckBase):
    type: Literal["python"]
    function: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", description="module:function")
    min_score: float | None = None


class RelevanceCheck(CheckBase):
    type: Literal["relevance"]
    min_similarity: float = Field(
        0.3, ge=-1, le=1, description="min cosine similarity prompt↔answer (all-MiniLM-L6-v2; English answers only)"
    )


class LLMJudgeCheck(CheckBase):
    type: Literal["llm_judge"]
    model: TeacherSpec = Field(default_factory=TeacherSpec, description="the judge; path: self = the student")
    scale: Literal[5, 10] = 10
    rubric: str = "Is the response helpful, correct, clear and a direct answer to the instruction?"
    template: str | None = Field(None, description="custom prompt with {instruction} {response} {scale} {rubric}")
    min_score: float | None = Field(None, ge=0)
    max_new_tokens: int = Field(16, ge=1)
    batch_size: int = Field(16, ge=1)
    on_unparsable: Literal["reject", "keep"] = "reject"


class RewardModelCheck(CheckBase):
    type: Literal["reward_model"]
    path: str
    min_score: float | None = None
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(1024, ge=16)


Check = Annotated[
    EmptyCheck
    | TruncatedCheck
    | LengthCheck
    | WordCountCheck
    | RepetitionCheck
    | RefusalCheck
    | LanguageCheck
    | EchoCheck
    | RelevanceCheck
    | ExactDedupCheck
    | NearDedupCheck
    | DecontaminateCheck
    | RegexCheck
    | JsonSchemaCheck
    | ExactMatchCheck
    | PythonCheck
    | LLMJudgeCheck
    | RewardModelCheck,
    Field(discriminator="type"),
]


class SelectSpec(Strict):
    """How many of a prompt's passing samples to keep."""

    strategy: Literal["best_of_n", "top_k", "threshold", "all"] = "all"
    k: int = Field(1, ge=1, description="samples kept per prompt by top_k")
    min_score: float | None = Field(None, description="threshold: keep rows whose score is at least this")


# Check types whose verdicts carry a score that can rank rows (dedup keeper, best-of-n, review)
SCORED = {"language", "relevance", "regex", "json_schema", "exact_match", "python", "llm_judge", "reward_model"}


class CurateSpec(Strict):
    """The `curate:` section."""

    checks: list[Check] = Field(default_factory=list)
    score: str | None = Field(
        None, description="name of the check whose score ranks rows (dedup keeper, best-of-n); default: the last scored"
    )
    select: SelectSpec = Field(default_factory=SelectSpec)

    def ranking_check(self) -> str | None:
        """The check whose score ranks rows: `score` when set, else the last scored check."""
        if self.score:
            return self.score
        scored = [c.label for c in self.checks if c.type in SCORED]
        return scored[-1] if scored else None

    @model_validator(mode="after")
    def _names(self) -> CurateSpec:
        labels = [c.label for c in self.checks]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"check names must be unique; give these a `name:`: {', '.join(dupes)}")
        if self.score is not None and self.score not in labels:
            raise ValueError(f"score names {self.score!r}, which is not a check here ({', '.join(labels) or 'none'})")
        if self.select.strategy == "threshold" and self.select.min_score is None:
            raise ValueError("select.strategy threshold needs select.min_score")
        return self
