"""Relevance: rejects answers that do not address their prompt (embedding similarity).

Cosine similarity between the user's prompt and the answer under all-MiniLM-L6-v2 (see
synth/embeddings.py, the `relevance` extra). The model reads English: an answer in another language
passes with no score and the reason "relevance n/a", instead of being judged by a number that means
nothing for it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from synth import embeddings
from synth.curate.base import CheckSpec, Context, Row, RowCheck, Verdict, runs, user_text
from synth.records import completion_text


class RelevanceCheck(CheckSpec):
    type: Literal["relevance"]
    scores = True  # cosine similarity; no quality rating: 0.3 is a fine answer, not a poor one
    min_similarity: float = Field(
        0.3, ge=-1, le=1, description="min cosine similarity prompt↔answer (all-MiniLM-L6-v2; English answers only)"
    )


@runs(RelevanceCheck)
class RelevanceFilter(RowCheck):
    """Keeps answers whose prompt↔answer similarity is at least `min_similarity`; scores it."""

    def setup(self, ctx: Context) -> None:
        embeddings.model_dir()  # fail before any row if the extra is missing

    def run(self, rows: list[Row]) -> list[Verdict]:
        texts = [completion_text(r) for r in rows]
        english = [i for i, text in enumerate(texts) if text.strip() and embeddings.is_english(text)]
        sims = embeddings.similarity([user_text(rows[i]) for i in english], [texts[i] for i in english])
        by_row = dict(zip(english, sims, strict=True))
        out = []
        for i in range(len(rows)):
            if i not in by_row:
                out.append(Verdict(True, None, "relevance n/a: answer not English"))
                continue
            s = by_row[i]
            ok = s >= self.spec.min_similarity
            reason = "" if ok else f"off-topic: prompt↔answer similarity {s:.2f} < {self.spec.min_similarity}"
            out.append(Verdict(ok, s, reason))
        return out
