"""What each curate check declares on its spec, and the stages that read it (recipe, curate, review, eval)."""

from __future__ import annotations

import pytest

from synth.curate.base import RowCheck
from synth.curate.checks import check_specs
from synth.curate.checks.dedup import GroupCheck
from synth.curate.config import CurateSpec
from synth.review.layout import rating_for, scored_checks


def test_every_check_module_registers_a_runnable_check() -> None:
    specs = {s.model_fields["type"].annotation.__args__[0]: s for s in check_specs()}
    assert {"word_count", "llm_judge", "near_dedup", "decontaminate"} <= set(specs)
    for name, spec in specs.items():
        assert issubclass(spec.runner, RowCheck | GroupCheck), name
    curate = CurateSpec(checks=[{"type": "word_count", "max_words": 40}, {"type": "near_dedup"}])
    assert [c.per_row for c in curate.checks] == [True, False]


@pytest.mark.parametrize(
    ("check", "score", "rating"),
    [
        ({"type": "llm_judge", "scale": 5}, 5.0, 5),
        ({"type": "llm_judge", "scale": 5}, 1.0, 1),
        ({"type": "llm_judge", "scale": 10}, 5.5, 3),
        ({"type": "regex", "pattern": "x"}, 1.0, 5),
        ({"type": "regex", "pattern": "x"}, 0.0, 1),
        ({"type": "reward_model", "path": "rm"}, 3.2, None),  # unbounded: no rating
        ({"type": "relevance"}, 0.9, None),
    ],
)
def test_review_rating_follows_the_declared_score_range(check: dict, score: float, rating: int | None) -> None:
    (spec,) = CurateSpec(checks=[check]).checks
    assert rating_for(score, spec) == rating


def test_ranking_and_review_use_only_scoring_checks() -> None:
    curate = CurateSpec(
        checks=[{"type": "empty"}, {"type": "language", "languages": ["fr"]}, {"type": "word_count", "min_words": 1}]
    )
    assert [c.label for c in scored_checks(curate)] == ["language"]
    assert curate.ranking_check() == "language"
