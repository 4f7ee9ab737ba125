"""The one engine interface behind generation (and, later, judging).

Stage code calls `engine.generate(prompts, params, on_progress)` and gets `n` `Completion`s per
prompt back, whatever runs underneath; it never branches on the engine. An engine never raises for
one bad prompt: it returns `Completion.failed(reason)` for it, so a row keeps the reason.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from synth.records import Completion, Messages

ProgressFn = Callable[[int, int], None]
"""Called as completions finish: (completions done, completion tokens in them)."""


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings every engine understands; recorded in each row's provenance."""

    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int | None = None
    max_new_tokens: int = 64
    seed: int = 0
    logprobs: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Engine(ABC):
    """A text generator: a model id, an engine name, and `generate`."""

    name: str = "engine"

    def __init__(self, model_id: str, revision: str | None = None) -> None:
        self.model_id = model_id
        self.revision = revision

    def provenance(self, params: SamplingParams) -> dict[str, Any]:
        """The `teacher` column: which model, revision, engine and sampling made a row."""
        return {"model": self.model_id, "revision": self.revision, "engine": self.name, "sampling": params.as_dict()}

    @property
    def vocab_size(self) -> int | None:
        """Size of the vocabulary its token ids index, where the engine holds the tokenizer; None for a
        server (then `synth generate` checks only that stored ids fit a shard, and `sft run` the rest)."""
        return None

    def check_prompt(self, messages: Messages, params: SamplingParams) -> str | None:
        """Reason a prompt cannot be generated from (e.g. longer than the context), else None."""
        return None

    @abstractmethod
    def generate(
        self, prompts: list[Messages], params: SamplingParams, on_progress: ProgressFn | None = None
    ) -> list[list[Completion]]:
        """Return `params.n` completions for each prompt, in the order of `prompts`."""

    def close(self) -> None:
        """Release models, connections or worker processes."""
