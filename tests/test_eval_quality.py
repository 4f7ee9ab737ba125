"""Quality beside behaviour: degeneration and relevance on planted answers, intervals, the warnings,
what the eval refuses or leaves out of its inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sft.evaluation.quality import answer_measures, distinct_n, repeated_ngram_share
from sft.evaluation.report import headline_rows, to_markdown
from synth.errors import UserError
from synth.stats import bootstrap_ci, hierarchical_ci
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


def varied(text: str, i: int) -> str:
    """A planted answer made distinct per prompt: real models do not give one text to every prompt, and
    one that does is flagged as degenerate (tested below)."""
    return f"{text} Point {i}."


def _report(
    student: list[tuple[bool, bool, str]],
    student_relevance: float = 0.5,
    base_finish: str = "stop",
    student_finish: str = "stop",
) -> dict[str, Any]:
    teacher = [(i % 2 == 0, True, varied(CLEAN, i)) for i in range(20)]
    # fluent answers: clean whether or not they were cut at the budget (`finished` says which)
    base = [(False, True, varied(CLEAN, i)) for i in range(20)]
    rows = answer_rows("teacher", teacher) + answer_rows("base_student", base, finish_reason=base_finish)
    student_rows = answer_rows("sft", student, student_relevance, finish_reason=student_finish)
    return report_for(rows + student_rows, ["teacher", "base_student", "sft"])


def test_warning_fires_on_a_student_that_complies_in_loops() -> None:
    # 19/20 compliant, but only 10/20 clean (the other 10 loop): behaviour up, quality down
    rep = _report(
        [(True, i % 2 == 0, varied(CLEAN if i % 2 == 0 else LOOP, i)) for i in range(19)]
        + [(False, True, varied(CLEAN, 19))]
    )
    sft = rep["models"]["sft"]
    assert sft["behaviour"]["rate"] == pytest.approx(0.95) and sft["clean"]["rate"] == pytest.approx(0.55)
    assert sft["joint"]["rate"] == pytest.approx(0.5) and sft["loop_free"]["rate"] == pytest.approx(0.55)
    assert rep["verdict"]["sft"] == "regressed"
    assert len(rep["warnings"]) == 1 and "loop-free rate 0.550 < 0.9× the base student's 1.000" in rep["warnings"][0]
    assert rep["ratio_to_teacher"]["sft"] == pytest.approx(1.9)
    assert rep["warnings"][0] in to_markdown(rep)
    lo, hi = sft["clean"]["ci"]
    assert lo < 0.55 < hi


def test_warning_fires_on_off_topic_answers_and_not_on_a_good_student() -> None:
    good = _report(
        [(True, True, varied(CLEAN, i)) for i in range(18)] + [(True, False, LOOP), (False, True, varied(CLEAN, 19))]
    )
    assert good["verdict"]["sft"] == "ok" and good["warnings"] == []  # loop-free 0.95 ≥ 0.9 × 1.0
    off = _report([(True, True, varied(OFF_TOPIC, i)) for i in range(20)], student_relevance=0.05)
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


def test_an_empty_answer_is_empty_not_loop_free_nor_finished() -> None:
    for text in ("", "   \n", "... !"):
        m = answer_measures(text, "stop", None)
        assert m["empty"] is True and m["loop_free"] is None and m["finished"] is None, text
        assert m["repeated_3gram_share"] is None and m["distinct_2"] is None
    failed = answer_measures("", None, "engine failed")
    assert failed["empty"] is True and failed["loop_free"] is None
    loop = answer_measures(LOOP, "stop", None)
    assert loop["empty"] is False and loop["loop_free"] is False and loop["finished"] is True
    listed = answer_measures("\n".join(["- buy milk"] * 4 + ["- walk the dog"]), "stop", None)
    assert listed["loop_free"] is False  # short repeated lines are a loop too
    one_word = answer_measures("Yes.", "stop", None)
    assert one_word["loop_free"] is True and one_word["distinct_2"] is None  # no pair: not "perfectly diverse"


def test_an_empty_model_is_flagged_and_not_called_loop_free() -> None:
    """A student that says nothing scored 1.000 on "no loops" and distinct-2; now it has no loop-free,
    finished or distinct-2 value at all, an empty rate of 1, a warning naming it and a regression."""
    rep = _report([(False, False, "") for _ in range(20)])
    sft = rep["models"]["sft"]
    assert sft["empty"]["rate"] == 1.0 and sft["empty_answers"] == 20
    assert sft["loop_free"]["rate"] is None and sft["loop_free"]["n"] == 0
    assert sft["finished"]["rate"] is None and sft["stops"] is sft["finished"]
    assert sft["distinct_2"]["mean"] is None and sft["repeated_3gram_share"]["mean"] is None
    assert rep["warnings"][0] == "WARNING: sft is degenerate: 20 of 20 answers are empty (no word, or no answer)"
    assert "non-empty rate 0.000 < 0.9× the base student's 1.000" in rep["warnings"][1]
    assert rep["verdict"]["sft"] == "regressed"
    md = to_markdown(rep)
    assert rep["warnings"][0] in md
    row = next(r for r in headline_rows(rep) if r[0] == "sft")
    finished, loop_free, empty = row[6:9]
    assert (finished, loop_free) == ("n/a", "n/a") and empty.startswith("1.000")
    # a few empty answers: the rates are over the answers there are, the empty rate says how many are not
    some = _report([(False, True, "") for _ in range(5)] + [(False, True, varied(CLEAN, i)) for i in range(15)])
    s = some["models"]["sft"]
    assert s["loop_free"]["rate"] == 1.0 and s["loop_free"]["n"] == 15 and s["empty"]["rate"] == 0.25
    assert not s["degenerate"] and "non-empty rate 0.750" in some["warnings"][0]


def test_any_model_that_says_nothing_is_named_even_the_base() -> None:
    rows = answer_rows("teacher", [(True, True, varied(CLEAN, i)) for i in range(6)])
    rows += answer_rows("base_student", [(False, False, " ") for _ in range(4)] + [(False, True, CLEAN)] * 2)
    rep = report_for(rows, ["teacher", "base_student"])
    assert rep["warnings"] == ["WARNING: base_student is degenerate: 4 of 6 answers are empty (no word, or no answer)"]


def test_a_constant_model_is_flagged() -> None:
    """One fluent, finished, loop-free answer to every prompt: perfect on every text measure, and useless."""
    same = [(True, True, "  " + CLEAN.upper() if i % 2 else CLEAN) for i in range(20)]  # case and spaces aside
    rep = _report(same)
    assert rep["models"]["sft"]["loop_free"]["rate"] == 1.0
    assert rep["warnings"][0].startswith("WARNING: sft is degenerate: the same answer to 20 of 20 prompts ('Bees make")
    assert rep["verdict"]["sft"] == "regressed" and rep["warnings"][0] in to_markdown(rep)
    # a prompt's greedy and sampled answers may agree: sameness is counted across prompts, not answers
    rows = []
    for sample in range(3):
        rows += answer_rows("teacher", [(True, True, varied(CLEAN, i)) for i in range(3)])
        for r in rows[-3:]:
            r["sample_index"] = sample
    assert report_for(rows, ["teacher"])["warnings"] == []
    # and a text that answers half the prompts is not "most"
    half = answer_rows("teacher", [(True, True, CLEAN if i < 2 else varied(CLEAN, i)) for i in range(4)])
    assert report_for(half, ["teacher"])["warnings"] == []


def test_an_answer_cut_at_the_budget_is_unfinished_but_not_a_loop() -> None:
    """The base student writes long fluent answers, all cut at the token budget: with the truncated
    check in "clean" its clean rate was 0, which every student cleared. Unfinished is not unclean."""
    loops = [(True, False, varied(LOOP, i)) for i in range(20)]
    rep = _report(loops, base_finish="length", student_finish="length")
    base, sft = rep["models"]["base_student"], rep["models"]["sft"]
    assert base["clean"]["rate"] == 1.0 and base["finished"]["rate"] == 0.0  # every answer cut at the budget
    assert base["loop_free"]["rate"] == 1.0 and base["truncated"]["rate"] == 1.0  # and none of them a loop
    assert sft["loop_free"]["rate"] == 0.0 and rep["verdict"]["sft"] == "regressed"
    assert "loop-free rate 0.000 < 0.9× the base student's 1.000" in rep["warnings"][0]
    # a fluent student cut at the budget next to a base that finishes: unfinished, not regressed
    long = [(True, True, varied(CLEAN, i)) for i in range(20)]
    fluent = _report(long, student_finish="length")
    assert fluent["models"]["sft"]["finished"]["rate"] == 0.0 and fluent["models"]["sft"]["loop_free"]["rate"] == 1.0
    assert fluent["verdict"]["sft"] == "ok" and fluent["warnings"] == []


def test_one_prompt_has_no_interval(tmp_path: Path) -> None:
    """With one prompt and one seed every resample is the same: the interval is None in report.json and
    n/a in text, never [x, x]; a second seed (or prompt) gives something to resample."""
    import json

    assert bootstrap_ci([0.5]) is None and bootstrap_ci([1.0, 0.0], ["p0", "p0"]) is None
    assert hierarchical_ci([[[1.0]]]) is None and hierarchical_ci([[[1.0, None]]]) is None
    assert hierarchical_ci([[[1.0], [0.0]]]) is not None and hierarchical_ci([[[1.0, 0.0]]]) is not None
    rows = answer_rows("teacher", [(True, True, CLEAN)])
    rows += answer_rows("base_student", [(False, True, CLEAN)]) + answer_rows("sft", [(True, True, LOOP)])
    rep = report_for(rows, ["teacher", "base_student", "sft"])
    for m in rep["models"].values():
        for key in ("behaviour", "clean", "joint", "relevance", "finished", "loop_free", "empty"):
            assert m[key]["rate"] is not None and m[key]["ci"] is None, key
        assert m["distinct_2"]["ci"] is None
    assert rep["comparisons"] and all(c["ci"] is None for c in rep["comparisons"])
    write_eval(tmp_path, rows, rep)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["models"]["sft"]["behaviour"]["ci"] is None
    md = (tmp_path / "report.md").read_text()
    assert "1.000 [n/a]" in md and "[1.00, 1.00]" not in md and "[0.00, 0.00]" not in md
    two_seeds = answer_rows("sft", [(True, True, CLEAN)]) + answer_rows("sft", [(False, True, CLEAN)])
    for seed, r in enumerate(two_seeds):
        r["seed"] = seed
    assert report_for(two_seeds, ["sft"])["models"]["sft"]["behaviour"]["ci"] == [0.0, 1.0]


def _recipe(tmp_path: Path, prompts: list[str], **eval_fields: object) -> Any:
    import json

    from synth.recipe import load_recipe

    (tmp_path / "held.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    body = {"name": "t", "eval": {"prompts": "held.jsonl", "behaviour_check": "length", **eval_fields}}
    body["curate"] = {"checks": [{"type": "length", "min_chars": 1}]}
    (tmp_path / "r.yaml").write_text(json.dumps(body))
    return load_recipe(tmp_path / "r.yaml")


def test_duplicate_prompts_are_answered_once_and_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from sft.evaluation import run

    recipe = _recipe(tmp_path, ["Why is the sky blue?", "Name a fruit.", "Why is the sky blue?", " ", "Name a fruit."])
    items, notes = run.eval_prompts(recipe, tmp_path)
    assert [it.prompt[-1]["content"] for it in items] == ["Why is the sky blue?", "Name a fruit."]
    assert notes == [
        "eval.prompts: 2 exact duplicate prompt(s) dropped; each prompt is answered once",
        "eval.prompts: 1 empty prompt(s) left out",
    ]
    # run_eval prints them before any model loads, and the report carries them
    out = io.StringIO()

    def stop(*_: object) -> None:
        raise RuntimeError("stop before the models")

    monkeypatch.setattr(run, "_checks", stop)
    with pytest.raises(RuntimeError, match="stop before"):
        run.run_eval(recipe, tmp_path / "run", tmp_path, console=Console(file=out, width=200))
    assert "note: eval.prompts: 2 exact duplicate prompt(s) dropped" in out.getvalue()
    rows = answer_rows("teacher", [(True, True, CLEAN)] * 2)
    rep = report_for(rows, ["teacher"])
    assert rep["notes"] == [] and "Note:" not in to_markdown(rep)
    rep["notes"] = notes
    assert f"Note: {notes[0]}" in to_markdown(rep)
    with pytest.raises(UserError, match="no prompt to answer"):
        run.eval_prompts(_recipe(tmp_path, [" ", ""]), tmp_path)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"objectives": ["sft", "kd", "sft"]},
            r"eval\.objectives\[2\]: 'sft' is listed twice \(first at eval\.objectives\[0\]\)",
        ),
        (
            {"objectives": ["sft", "base_student"]},
            r"eval\.objectives\[1\]: 'base_student' is the name of the eval's own",
        ),
        ({"behaviour_check": ["length", "length"]}, r"eval\.behaviour_check\[1\]: 'length' is listed twice"),
        ({"benchmarks": ["arc_easy", "piqa", "arc_easy"]}, r"eval\.benchmarks\.tasks\[2\]: 'arc_easy' is listed twice"),
    ],
)
def test_repeated_arms_checks_and_tasks_are_refused(tmp_path: Path, fields: dict[str, Any], message: str) -> None:
    """An arm listed twice was answered, judged and pooled twice; a task listed twice ran twice and was
    kept once. Refused before anything loads (the run folder need not exist), naming the field."""
    from sft.evaluation.run import run_eval

    recipe = _recipe(tmp_path, ["Name a fruit.", "Name a colour."], **fields)
    with pytest.raises(UserError, match=message):
        run_eval(recipe, tmp_path / "no-run", tmp_path)


def test_clean_leaves_the_token_budget_to_finished(tmp_path: Path) -> None:
    """With the recipe's `truncated` check, an answer cut at the budget is unfinished, not unclean;
    every other check (here a refusal) still decides "clean"."""
    import json

    from sft.evaluation.run import _checks, _judge
    from synth.recipe import load_recipe
    from synth.records import assistant

    checks = [{"type": "truncated"}, {"type": "refusal"}, {"type": "regex", "pattern": "colour", "name": "topic"}]
    (tmp_path / "r.yaml").write_text(json.dumps({"name": "t", "curate": {"checks": checks, "score": "topic"}}))
    names, runners = _checks(load_recipe(tmp_path / "r.yaml"), tmp_path)
    answers = [
        ("Blue is a colour people like because it is calm and", "length"),
        ("I'm sorry, but I cannot help with that colour.", "stop"),
        ("Blue is a calm colour.", "stop"),
    ]
    rows = [
        {"id": str(i), "answer": a, "completion": assistant(a), "finish_reason": f, "error": None, "meta": "{}"}
        for i, (a, f) in enumerate(answers)
    ]
    _judge(rows, runners, names)
    assert [r["clean"] for r in rows] == [True, False, True]
    assert [r["finished"] for r in rows] == [False, True, True]


def test_the_eval_files_are_replaced_as_one_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while writing the new files leaves the last complete eval, not a new answers.parquet
    beside an old report.json; a complete write replaces all four and nothing else stays."""
    from sft.evaluation import report, run

    out = tmp_path / "eval"
    rows = answer_rows("teacher", [(True, True, varied(CLEAN, i)) for i in range(3)])
    run._write_as_one_set(out, report_for(rows, ["teacher"]), rows)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"answers.parquet", "report.json", "report.md"} <= set(before)

    def broken(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(report, "to_markdown", broken)
    newer = answer_rows("teacher", [(False, True, varied(CLEAN, i)) for i in range(4)])
    with pytest.raises(OSError):
        run._write_as_one_set(out, report_for(newer, ["teacher"]), newer)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]  # no staging folder left
    monkeypatch.undo()
    run._write_as_one_set(out, report_for(newer, ["teacher"]), newer)
    assert json.loads((out / "report.json").read_text())["prompts"] == 4


def test_eval_reads_the_prompt_column_of_the_recipes_prompts(tmp_path: Path) -> None:
    """A user's held-out file is shaped like their prompts: `prompts.prompt_column` applies to it too,
    unless `eval.prompt_column` says otherwise."""
    from sft.evaluation.run import eval_prompts
    from synth.recipe import load_recipe

    (tmp_path / "held.jsonl").write_text(json.dumps({"question": "Name a fruit."}) + "\n")
    body = {"name": "t", "prompts": {"prompt_column": "question"}, "eval": {"prompts": "held.jsonl"}}
    (tmp_path / "r.yaml").write_text(json.dumps(body))
    items, _ = eval_prompts(load_recipe(tmp_path / "r.yaml"), tmp_path)
    assert [it.prompt[-1]["content"] for it in items] == ["Name a fruit."]
    (tmp_path / "held.jsonl").write_text(json.dumps({"q": "Name a colour.", "question": "no"}) + "\n")
    items, _ = eval_prompts(load_recipe(tmp_path / "r.yaml", ["eval.prompt_column=q"]), tmp_path)
    assert [it.prompt[-1]["content"] for it in items] == ["Name a colour."]
    with pytest.raises(UserError) as err:  # the hint names the eval's own field, not the prompts'
        eval_prompts(load_recipe(tmp_path / "r.yaml", ["eval.prompt_column=nothing"]), tmp_path)
    assert "no column 'nothing'" in err.value.message and "eval.prompt_column=NAME" in err.value.hint
    # the shipped held-out file keeps its own column whatever the recipe's prompts use
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "heldout_prompts.jsonl").write_text(json.dumps({"prompt": "Say hi."}) + "\n")
    body["eval"] = {}
    (tmp_path / "r.yaml").write_text(json.dumps(body))
    items, _ = eval_prompts(load_recipe(tmp_path / "r.yaml"), tmp_path)
    assert [it.prompt[-1]["content"] for it in items] == ["Say hi."]


def test_a_fluent_student_that_fails_the_recipes_checks_regresses() -> None:
    """Fluent, finished, loop-free answers that the recipe's other checks reject (a refusal, an echo):
    "clean" still carries those checks, so the student is regressed, not fine."""
    rep = _report([(True, False, varied(CLEAN, i)) for i in range(20)])
    sft = rep["models"]["sft"]
    assert sft["loop_free"]["rate"] == 1.0 and sft["finished"]["rate"] == 1.0 and sft["clean"]["rate"] == 0.0
    assert rep["verdict"]["sft"] == "regressed" and "clean rate 0.000 < 0.9×" in rep["warnings"][0]


def test_a_student_that_gives_the_teachers_one_answer_learned_it() -> None:
    """A refusal (or yes/no) behaviour: the teacher gives one text to most prompts, and so does a student
    that learned it; the student is not degenerate for that (the teacher's warning stays, to read)."""
    refusal = "I can't help with that."
    rows = answer_rows("teacher", [(True, True, refusal) for _ in range(6)])
    rows += answer_rows("base_student", [(False, True, varied(CLEAN, i)) for i in range(6)])
    rows += answer_rows("sft", [(True, True, " " + refusal.upper()) for _ in range(6)])
    rows += answer_rows("other", [(True, True, "No.") for _ in range(6)])
    rep = report_for(rows, ["teacher", "base_student", "sft", "other"])
    assert rep["models"]["sft"]["degenerate"] is None and rep["verdict"]["sft"] == "ok"
    assert rep["models"]["other"]["degenerate"] and rep["verdict"]["other"] == "regressed"
    assert rep["warnings"][0].startswith("WARNING: teacher is degenerate: the same answer to 6 of 6 prompts")
