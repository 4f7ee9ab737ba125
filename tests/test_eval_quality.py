"""Quality beside behaviour: degeneration and relevance on planted answers, intervals, the warning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sft.evaluation.quality import distinct_n, repeated_ngram_share
from sft.evaluation.report import to_markdown
from synth.stats import bootstrap_ci
from tests.eval_helpers import PROMPT, answer_rows, report_for, write_eval

CLEAN = (
    "Bees make honey to feed their colony through the winter. They collect nectar from flowers, "
    "store it in wax cells and fan it with their wings until most of the water evaporates."
)
LOOP = "Bees, les bébé, sont les bébé, les bébé, les bébé, les bébé, les bébé, les bébé, les bébé."
SALAD = "Purple seven quickly under tomorrow sandwich, bicycle of the yes window marble sings elbow."
OFF_TOPIC = "The French Revolution began in 1789 with the storming of the Bastille in Paris."


def test_degeneration_measures_separate_a_loop_from_a_clean_answer() -> None:
    assert repeated_ngram_share(CLEAN, 3) == 0.0 and distinct_n(CLEAN, 2) == 1.0
    assert repeated_ngram_share(LOOP, 3) > 0.6 and distinct_n(LOOP, 2) < 0.3
    # word salad repeats nothing: only relevance can tell it from a good answer
    assert repeated_ngram_share(SALAD, 3) == 0.0
    assert repeated_ngram_share("", 3) == 0.0 and distinct_n("one", 2) == 1.0


@pytest.mark.slow
def test_relevance_ranks_the_on_topic_answer_above_salad_and_off_topic() -> None:
    from sft.evaluation.report import DEFAULT_RELEVANCE
    from synth import embeddings

    sims = embeddings.similarity([PROMPT] * 3, [CLEAN, SALAD, OFF_TOPIC])
    assert sims[0] >= DEFAULT_RELEVANCE > max(sims[1], sims[2]), sims
    assert embeddings.is_english(CLEAN) and not embeddings.is_english("Les abeilles font du miel pour l'hiver.")


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_prompts() -> None:
    few = [1.0, 0.0] * 5
    many = [1.0, 0.0] * 200
    lo, hi = bootstrap_ci(few)
    assert lo < 0.5 < hi
    lo2, hi2 = bootstrap_ci(many)
    assert lo < lo2 < 0.5 < hi2 < hi
    assert bootstrap_ci(few) == bootstrap_ci(few)  # seeded: a report is reproducible
    assert bootstrap_ci([]) is None
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)
    # samples of one prompt move together: 10 prompts × 20 identical samples ≈ 10 prompts, not 200
    grouped = bootstrap_ci([v for v in few for _ in range(20)], [str(i) for i in range(10) for _ in range(20)])
    assert grouped is not None and grouped[1] - grouped[0] > (hi2 - lo2) * 2


def test_hierarchical_interval_holds_the_spread_between_training_seeds() -> None:
    """Two seeds that disagree by far more than the prompts vary: the interval over seeds and prompts
    is wide, the one over prompts of either seed alone is not; a difference of an arm with itself
    brackets zero, and one between clearly separated arms excludes it."""
    import random

    from synth.stats import hierarchical_ci, seed_mean

    rng = random.Random(0)
    noise = [rng.gauss(0, 0.05) for _ in range(40)]
    seed_a = [1.0 + e for e in noise]
    seed_b = [2.0 + e for e in noise]
    assert seed_mean([seed_a, seed_b]) == pytest.approx(1.5 + sum(noise) / 40)
    lo, hi = hierarchical_ci([[seed_a, seed_b]])
    alone = hierarchical_ci([[seed_a]])
    assert alone is not None and alone[1] - alone[0] < 0.05
    assert lo <= 1.1 and hi >= 1.9  # resampling two seeds gives both, either one, or a mix
    assert hierarchical_ci([[seed_a, seed_b]]) == (lo, hi)  # seeded
    same = hierarchical_ci([[seed_a, seed_b], [seed_a, seed_b]], (1.0, -1.0))
    assert same is not None and same[0] < 0 < same[1]
    apart = hierarchical_ci([[seed_b, [v + 0.1 for v in seed_b]], [seed_a, [v + 0.1 for v in seed_a]]], (1.0, -1.0))
    assert apart is not None and 0.8 < apart[0] <= apart[1] < 1.2
    # missing values (a prompt without an answer) are skipped, not counted as zero
    assert seed_mean([[1.0, None, 3.0]]) == pytest.approx(2.0)
    assert hierarchical_ci([]) is None and hierarchical_ci([[[]]]) is None


def _report(student: list[tuple[bool, bool, str]], student_relevance: float = 0.5) -> dict[str, Any]:
    teacher = [(i % 2 == 0, True, CLEAN) for i in range(20)]
    base = [(False, True, CLEAN) for _ in range(20)]
    rows = answer_rows("teacher", teacher) + answer_rows("base_student", base)
    return report_for(rows + answer_rows("sft", student, student_relevance), ["teacher", "base_student", "sft"])


def test_warning_fires_on_a_student_that_complies_in_loops() -> None:
    # 19/20 compliant, but only 10/20 clean: behaviour up, quality down
    rep = _report([(True, i % 2 == 0, CLEAN if i % 2 == 0 else LOOP) for i in range(19)] + [(False, True, CLEAN)])
    sft = rep["models"]["sft"]
    assert sft["behaviour"]["rate"] == pytest.approx(0.95) and sft["clean"]["rate"] == pytest.approx(0.55)
    assert sft["joint"]["rate"] == pytest.approx(0.5)
    assert rep["verdict"]["sft"] == "regressed"
    assert len(rep["warnings"]) == 1 and "clean rate 0.550 < 0.9× the base student's 1.000" in rep["warnings"][0]
    assert rep["ratio_to_teacher"]["sft"] == pytest.approx(1.9)
    assert rep["warnings"][0] in to_markdown(rep)
    lo, hi = sft["clean"]["ci"]
    assert lo < 0.55 < hi


def test_warning_fires_on_off_topic_answers_and_not_on_a_good_student() -> None:
    good = _report([(True, True, CLEAN)] * 18 + [(True, False, LOOP)] + [(False, True, CLEAN)])
    assert good["verdict"]["sft"] == "ok" and good["warnings"] == []  # clean 0.95 ≥ 0.9 × 1.0
    off = _report([(True, True, OFF_TOPIC)] * 20, student_relevance=0.05)
    assert off["verdict"]["sft"] == "regressed" and "relevance rate 0.000" in off["warnings"][0]


def test_answers_file_round_trips_through_plain_datasets(tmp_path: Path) -> None:
    import datasets

    rows = answer_rows("teacher", [(True, True, CLEAN), (False, False, LOOP)])
    write_eval(tmp_path, rows, report_for(rows, ["teacher"]))
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "answers.parquet"), split="train")
    assert ds.num_rows == 2 and ds[1]["answer"] == LOOP and ds[1]["behaviour"] is False
    assert ds[0]["prompt"] == [{"role": "user", "content": PROMPT}] and ds[0]["verdicts"][0]["name"] == "rep"
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "report.md").read_text().startswith("# Evaluation: what the student gained and what it lost")


def test_report_json_is_strict_json_when_a_measure_is_not_a_number(tmp_path: Path) -> None:
    """A diverged model's NaN (or an infinite perplexity) is written as null: bare NaN is not JSON."""
    import json

    rows = answer_rows("teacher", [(True, True, CLEAN), (False, False, LOOP)])
    report = report_for(rows, ["teacher"])
    report["models"]["teacher"]["agreement_top1_with_teacher"] = float("nan")
    report["ratio_to_teacher"]["teacher"] = float("inf")
    report["extra"] = {"ci": [float("-inf"), 0.5]}
    write_eval(tmp_path, rows, report)
    text = (tmp_path / "report.json").read_text()
    loaded = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in report.json"))
    assert loaded["models"]["teacher"]["agreement_top1_with_teacher"] is None
    assert loaded["ratio_to_teacher"]["teacher"] is None and loaded["extra"] == {"ci": [None, 0.5]}
