"""The word_count check through the real curate stage, and its recipe validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from synth.errors import UserError
from tests.curate_helpers import rows_for
from tests.test_curate_checks import curate, reasons, texts


def test_word_count_bounds(tmp_path: Path) -> None:
    short, ok, long = "Yes.", "Bees make honey to eat in winter.", " ".join(["word"] * 41)
    rows = rows_for("Why do bees make honey?", [short, ok, long, "well-known 3.5 facts here"])
    kept, rejected, report = curate(tmp_path, [rows], [{"type": "word_count", "min_words": 4, "max_words": 40}])
    assert texts(kept) == [ok, "well-known 3.5 facts here"]  # whitespace words: 4
    why = reasons(rejected)
    assert why[short] == ("word_count", "too few words: 1 < min_words 4")
    assert why[long] == ("word_count", "too many words: 41 > max_words 40")
    assert next(c for c in report["checks"] if c["name"] == "word_count")["rejected"] == 2


@pytest.mark.parametrize(
    ("check", "message"),
    [
        ({"type": "word_count"}, "give min_words, max_words or both"),
        ({"type": "word_count", "min_words": 5, "max_words": 2}, "min_words 5 > max_words 2"),
    ],
)
def test_word_count_bad_bounds_are_recipe_errors(tmp_path: Path, check: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        curate(tmp_path, [rows_for("q", ["a b c"])], [check])
