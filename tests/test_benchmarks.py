"""`eval.benchmarks`: lm-evaluation-harness tasks, their per-example scores, summaries and paired differences.

The shipped task tests/data/benchmarks/facts.yaml is lm-eval's own format with local data, so nothing
here needs the Hub. `test_train.py::test_seeds_train_one_model_each_and_eval_compares_arms_over_seeds`
runs it inside a whole `sft eval`.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from sft.evaluation.benchmarks import TaskScores, check_tasks, run_benchmarks, summarise, task_configs
from sft.evaluation.report import benchmark_comparisons, to_markdown
from synth.errors import UserError
from synth.recipe import load_recipe
from synth.specs import BenchmarksSpec
from tests.conftest import ROOT, tiny_llama

FACTS = ROOT / "tests" / "data" / "benchmarks" / "facts.yaml"


def scores(values: list[float], doc_ids: list[int] | None = None, metric: str = "acc") -> TaskScores:
    return TaskScores(metric, doc_ids or list(range(len(values))), values, sum(values) / len(values))


def test_a_list_is_short_for_tasks_and_bad_settings_are_refused(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(json.dumps({"name": "t", "eval": {"benchmarks": ["arc_easy", "piqa"]}}))
    spec = load_recipe(tmp_path / "r.yaml").eval.benchmarks
    assert spec is not None and spec.tasks == ["arc_easy", "piqa"] and spec.limit is None
    (tmp_path / "r.yaml").write_text(json.dumps({"name": "t", "eval": {"benchmarks": {"tasks": [], "limit": 0}}}))
    with pytest.raises(UserError, match=r"eval\.benchmarks\.tasks"):
        load_recipe(tmp_path / "r.yaml")


def test_a_task_yaml_reads_its_data_next_to_it_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tasks = tmp_path / "recipe" / "tasks"
    tasks.mkdir(parents=True)
    for f in ("facts.yaml", "facts.jsonl"):
        shutil.copy(FACTS.parent / f, tasks / f)
    monkeypatch.chdir(tmp_path)  # neither the recipe's folder nor the task's
    spec = BenchmarksSpec(tasks=["tasks/facts.yaml", "arc_easy"])
    configs = task_configs(spec, tmp_path / "recipe")
    assert configs[1] == "arc_easy"  # a name is lm-eval's to resolve
    assert configs[0]["task"] == "distillery_facts"
    assert configs[0]["dataset_kwargs"]["data_files"] == {"test": str(tasks / "facts.jsonl")}
    built = check_tasks(BenchmarksSpec(tasks=["tasks/facts.yaml"]), tmp_path / "recipe")
    assert built[0]["task"] == "distillery_facts"


def test_wrong_tasks_fail_before_any_model_with_the_field_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"eval\.benchmarks\.tasks\[0\] 'no_such_task_xyz': lm-eval could not build"):
        check_tasks(BenchmarksSpec(tasks=["no_such_task_xyz"]), tmp_path)
    (tmp_path / "bad.yaml").write_text("task: [unclosed\n")
    with pytest.raises(UserError, match=r"eval\.benchmarks\.tasks\[0\] .*bad\.yaml: not a task YAML"):
        check_tasks(BenchmarksSpec(tasks=["bad.yaml"]), tmp_path)
    (tmp_path / "noname.yaml").write_text("dataset_path: json\n")
    with pytest.raises(UserError, match=r"no `task:` name"):
        check_tasks(BenchmarksSpec(tasks=["noname.yaml"]), tmp_path)
    with pytest.raises(UserError, match=r"eval\.benchmarks\.tasks\[0\] missing\.yaml not found"):
        check_tasks(BenchmarksSpec(tasks=["missing.yaml"]), tmp_path)


def test_summary_means_over_seeds_with_intervals_and_aggregates_without() -> None:
    per_arm = {
        "teacher": [(None, {"t": scores([1, 1, 0, 1])})],
        "kd": [(0, {"t": scores([1, 0, 0, 1])}), (1, {"t": scores([1, 1, 0, 0])})],
        "ppl": [(None, {"t": TaskScores("word_perplexity", [0, 1, 2, 3], [], 12.5)})],
    }
    out = summarise(per_arm)
    assert out["teacher"]["t"] == {
        "metric": "acc",
        "value": 0.75,
        "ci": out["teacher"]["t"]["ci"],
        "examples": 4,
        "seeds": [{"seed": None, "value": 0.75}],
    }
    lo, hi = out["teacher"]["t"]["ci"]
    assert 0 <= lo <= 0.75 <= hi <= 1
    assert out["kd"]["t"]["value"] == 0.5 and [s["value"] for s in out["kd"]["t"]["seeds"]] == [0.5, 0.5]
    # a metric that is not a mean over examples: lm-eval's aggregate, and no interval that would lie
    assert out["ppl"]["t"]["value"] == 12.5 and out["ppl"]["t"]["ci"] is None


def test_differences_are_paired_on_the_same_examples_only() -> None:
    per_arm = {
        "teacher": [(None, {"t": scores([1, 1, 1, 1, 0, 1])})],
        "base_student": [(None, {"t": scores([1, 0, 1, 0, 0, 1])})],
        "kd": [(0, {"t": scores([1, 1, 1, 0, 0, 1])}), (1, {"t": scores([1, 1, 0, 1, 0, 1])})],
        "sft": [(0, {"t": scores([1, 0, 1, 0, 0, 1])})],
        "other": [(None, {"t": scores([1, 1, 1, 1, 1, 1], doc_ids=[9, 8, 7, 6, 5, 4])})],  # other examples
    }
    rows = benchmark_comparisons(per_arm, ["kd", "sft", "other"], {"kd - sft": ["train.learning_rate: 1 vs 2"]})
    by = {(r["a"], r["b"]): r for r in rows}
    assert all(r["metric"] == "t/acc" for r in rows)
    assert set(by) == {("kd", "sft"), ("kd", "base_student"), ("sft", "base_student")} | {
        (a, "teacher") for a in ("kd", "sft", "base_student")
    }  # "other" answered other examples: never paired
    kd_sft = by[("kd", "sft")]
    assert kd_sft["diff"] == pytest.approx(4 / 6 - 3 / 6) and kd_sft["seeds"] == [2, 1] and kd_sft["prompts"] == 6
    assert kd_sft["differences"] == ["train.learning_rate: 1 vs 2"]
    assert kd_sft["ci"][0] <= kd_sft["diff"] <= kd_sft["ci"][1]
    assert by[("kd", "teacher")]["diff"] == pytest.approx(4 / 6 - 5 / 6)
    assert by[("kd", "teacher")]["differences"] is None
    # identical per-example scores: a paired difference of exactly zero, with no width
    same = benchmark_comparisons({"teacher": per_arm["sft"], "base_student": per_arm["sft"]}, [], {})
    assert same[0]["diff"] == 0 and same[0]["ci"] == [0.0, 0.0]


def test_report_markdown_shows_each_model_and_its_share_of_the_teacher() -> None:
    per_arm = {"teacher": [(None, {"t": scores([1, 1, 0, 1])})], "kd": [(0, {"t": scores([1, 0, 0, 1])})]}
    rep = {
        "prompts": 1,
        "samples_per_prompt": 1,
        "behaviour_checks": ["x"],
        "relevance_threshold": 0.3,
        "relevance_note": "",
        "warnings": [],
        "models": {},
        "benchmarks": summarise(per_arm),
        "benchmarks_note": "Not run on teacher: served.",
        "comparisons": benchmark_comparisons(per_arm, ["kd"], {}),
    }
    md = to_markdown(rep)
    assert "## Benchmarks (lm-evaluation-harness)" in md and "Not run on teacher: served." in md
    assert "| kd | t | acc | 0.500 [" in md and "| 0.67 |" in md  # 0.5 / 0.75
    assert "| kd − teacher | t/acc | -0.250 [" in md


def _loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """Σ log p(continuation | context) as lm-eval's hf model computes it: the pair encoded whole, the
    continuation's tokens being what follows the context's."""
    import torch

    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx) :]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    return float(sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(cont)))


@pytest.mark.slow
def test_every_example_is_scored_and_kept_in_order(smollm2_dir: Path) -> None:
    """Per-example accuracy as lm-eval reports it, checked against the log-likelihood of each choice
    computed here, example by example (a random tiny model on SmolLM2's tokenizer: its choices are
    arbitrary, so a shuffled or misattributed example shows)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = tiny_llama(len(tokenizer), seed=3)
    spec = BenchmarksSpec(tasks=[str(FACTS)], batch_size=5)
    found = run_benchmarks(model, tokenizer, check_tasks(spec, None), spec)["distillery_facts"]
    docs = [json.loads(line) for line in (FACTS.parent / "facts.jsonl").read_text().splitlines()]
    assert found.metric == "acc" and found.doc_ids == list(range(len(docs)))
    expected = []
    for d in docs:
        context = f"Question: {d['question']}\nAnswer:"
        ll = [_loglikelihood(model, tokenizer, context, " " + c) for c in d["choices"]]
        expected.append(float(max(range(len(ll)), key=ll.__getitem__) == d["answer"]))
    assert found.values == expected
    assert 0 < sum(expected) < len(expected)  # not all equal: the order is really checked
    assert math.isclose(found.aggregate, sum(expected) / len(expected))
