"""Fidelity to the teacher (sft/evaluation/fidelity.py) on tiny random models with SmolLM2's real tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sft.evaluation.fidelity import TeacherAnswers, measure, paired
from tests.conftest import tiny_llama

SYSTEM = {"role": "system", "content": "Answer in French."}


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def _data() -> TeacherAnswers:
    users = [[{"role": "user", "content": q}] for q in ("Name a colour.", "Say hello.", "Two plus two?")]
    # the first answer was finished by the teacher, the second cut at the token limit, the third empty
    return TeacherAnswers([[SYSTEM, *u] for u in users], users, ["Rouge.", "Bonjour !", ""], [True, False, False])


def _manual(
    model: Any, teacher: Any, tokenizer: Any, s_view: list, t_view: list, answer: str, stopped: bool
) -> tuple[float, float, float]:
    """KL(teacher ‖ model), NLL and the last token's NLL, written out the plain way for one prompt."""
    import torch

    a = tokenizer(answer, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if stopped else [])

    def logp(m: Any, view: list) -> torch.Tensor:
        p = list(tokenizer.apply_chat_template(view, add_generation_prompt=True, tokenize=True, return_dict=False))
        with torch.no_grad():
            out = m(input_ids=torch.tensor([p + a])).logits[0].float().log_softmax(-1)
        return out[len(p) - 1 : len(p) - 1 + len(a)]

    s, t = logp(model, s_view), logp(teacher, t_view)
    kl = sum(float((t[i].exp() * (t[i] - s[i])).sum()) for i in range(len(a))) / len(a)
    nll = -sum(float(s[i, tok]) for i, tok in enumerate(a)) / len(a)
    return kl, nll, -float(s[-1, a[-1]])


def test_kl_and_nll_match_the_plain_computation_per_prompt(tokenizer: Any) -> None:
    import torch

    teacher, student = tiny_llama(len(tokenizer), seed=0), tiny_llama(len(tokenizer), seed=1)
    with torch.no_grad():  # a peaked teacher: near-uniform random models make KL(t‖s) ≈ KL(s‖t)
        teacher.lm_head.weight.mul_(40)
    data = _data()
    got = measure(student, tokenizer, data, (teacher, tokenizer), is_teacher=False)
    for i in range(2):
        kl, nll, last = _manual(
            student,
            teacher,
            tokenizer,
            data.student_prompts[i],
            data.teacher_prompts[i],
            data.answers[i],
            data.stopped[i],
        )
        assert got["kl_per_prompt"][i] == pytest.approx(kl, rel=1e-4)
        assert got["nll_per_prompt"][i] == pytest.approx(nll, rel=1e-4)
        if data.stopped[i]:  # the finished answer is scored with its end-of-turn token, also alone
            assert got["stop_nll"] == pytest.approx(last, rel=1e-4)
            assert got["stop_nll_per_prompt"][i] == pytest.approx(last, rel=1e-4)
        else:
            assert got["stop_nll_per_prompt"][i] is None
    assert got["kl_per_prompt"][2] is None and got["nll_per_prompt"][2] is None  # an empty answer has no tokens
    assert got["kl"] == pytest.approx(sum(got["kl_per_prompt"][:2]) / 2) and got["kl"] > 0
    assert got["perplexity"] == pytest.approx(__import__("math").exp(got["nll"]))
    assert got["params"] == sum(p.numel() for p in student.parameters())


def test_the_teacher_is_at_zero_and_a_copy_seeing_the_teacher_view_is_too(tokenizer: Any) -> None:
    teacher = tiny_llama(len(tokenizer), seed=0)
    data = _data()
    assert measure(teacher, tokenizer, data, (teacher, tokenizer), is_teacher=True)["kl"] == 0.0
    # the same weights reading the student's view (no system prompt) are NOT at zero: the view matters
    assert measure(teacher, tokenizer, data, (teacher, tokenizer), is_teacher=False)["kl"] > 1e-6
    same_view = TeacherAnswers(data.teacher_prompts, data.teacher_prompts, data.answers, data.stopped)
    assert measure(teacher, tokenizer, same_view, (teacher, tokenizer), is_teacher=False)["kl"] == pytest.approx(
        0.0, abs=1e-6
    )
    # without a local teacher (a server), only the NLL is measured
    assert measure(teacher, tokenizer, data, None, is_teacher=False)["kl"] is None


def test_the_teachers_stored_log_probs_give_the_kl_of_running_it_again(tokenizer: Any, tmp_path: Path) -> None:
    import torch

    from sft.evaluation import fidelity

    teacher, student = tiny_llama(len(tokenizer), seed=0), tiny_llama(len(tokenizer), seed=1)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(40)
    data = _data()
    store = fidelity.TeacherLogProbs(tmp_path)
    measure(teacher, tokenizer, data, (teacher, tokenizer), True, store)  # the teacher's own pass fills it
    assert (tmp_path / "teacher-logprobs.f32").is_file()
    calls = []
    original = fidelity._answer_log_probs

    def counted(model: Any, *args: Any) -> Any:
        calls.append(model is teacher)
        return original(model, *args)

    fidelity._answer_log_probs = counted  # type: ignore[assignment]
    try:
        stored = measure(student, tokenizer, data, (teacher, tokenizer), False, store)
        assert not any(calls), "the teacher ran again although its log-probs were stored"
        again = measure(student, tokenizer, data, (teacher, tokenizer), False)
    finally:
        fidelity._answer_log_probs = original  # type: ignore[assignment]
    assert stored["kl_per_prompt"] == again["kl_per_prompt"] and stored["kl"] > 0
    assert stored["nll_per_prompt"] == again["nll_per_prompt"]


def test_stored_teacher_log_probs_are_only_used_for_the_same_answer_ids(tmp_path: Path) -> None:
    import torch

    from sft.evaluation.fidelity import TeacherLogProbs

    store = TeacherLogProbs(tmp_path)
    assert store.allocate([[5, 6], [7]], vocab=10)
    store.put(0, torch.full((2, 10), -1.0))
    store.put(1, torch.full((1, 10), -2.0))
    assert torch.equal(store.get(1, [7]), torch.full((1, 10), -2.0))
    assert store.get(0, [5, 6, 2]) is None  # another template's end-of-turn token: run the teacher
    assert store.get(2, [5]) is None
    big = TeacherLogProbs(tmp_path / "big")
    (tmp_path / "big").mkdir()
    assert not big.allocate([[1] * 10**6], vocab=10**5)  # 400 GB: the teacher runs per model instead
    big.put(0, torch.zeros(1, 1))
    assert big.get(0, [1] * 10**6) is None


def test_paired_difference_skips_missing_prompts() -> None:
    d = paired([1.0, 2.0, None, 4.0, 3.0], [2.0, 2.5, 1.0, 5.0, 2.0])  # differences -1, -0.5, -1, +1
    assert d is not None and d["prompts"] == 4 and d["mean"] == pytest.approx(-1.5 / 4)
    assert -1 <= d["ci"][0] < d["mean"] < d["ci"][1] <= 1 and d["ci"][1] > 0  # one prompt the other way
    assert paired([None], [1.0]) is None


def test_a_student_that_does_not_stop_is_further_from_the_teacher(tokenizer: Any) -> None:
    """Stopping is part of the teacher's distribution: against a teacher that ends its turn after a full
    stop, the same weights without that habit score worse on an answer the teacher finished, and the
    same as the teacher on the answer's text alone (all that fidelity scored before)."""
    import torch

    class StopsAfterFullStop(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner
            self.full_stop = tokenizer.convert_tokens_to_ids(".")

        @property
        def device(self) -> torch.device:
            return self.inner.device

        def forward(self, input_ids: torch.Tensor) -> Any:
            out = self.inner(input_ids=input_ids)
            out.logits[input_ids == self.full_stop, tokenizer.eos_token_id] += 30.0
            return out

    base = tiny_llama(len(tokenizer), seed=0)
    teacher = StopsAfterFullStop(base)
    data = _data()
    view = data.teacher_prompts[:1]
    assert data.answers[0].endswith(".")
    finished = TeacherAnswers(view, view, data.answers[:1], [True])
    as_text = TeacherAnswers(view, view, data.answers[:1], [False])
    ref = (teacher, tokenizer)
    stops = measure(teacher, tokenizer, finished, ref, is_teacher=False)
    runs_on = measure(base, tokenizer, finished, ref, is_teacher=False)
    assert stops["kl"] == pytest.approx(0.0, abs=1e-6)
    assert runs_on["kl"] > 1.0 and runs_on["stop_nll"] > stops["stop_nll"] + 5
    assert measure(base, tokenizer, as_text, ref, is_teacher=False)["kl"] == pytest.approx(0.0, abs=1e-6)


def test_stop_nll_of_several_seeds_has_an_interval_over_seeds_and_prompts() -> None:
    """An arm with several seeds: stop NLL is the mean over seeds of each seed's mean over the prompts
    the teacher finished, with an interval (one seed's own interval would hide the others)."""
    from sft.evaluation.report import combine_seeds

    def entry(stop: list[float | None]) -> dict[str, Any]:
        return {
            "kl": 1.0,
            "nll": 2.0,
            "kl_per_prompt": [1.0] * 4,
            "nll_per_prompt": [2.0] * 4,
            "stop_nll": None,
            "stop_nll_ci": None,
            "stop_nll_per_prompt": stop,
            "params": 10,
        }

    arm = combine_seeds([(0, entry([1.0, None, 3.0, 2.0])), (1, entry([4.0, None, 6.0, 5.0]))])
    assert arm["stop_nll"] == pytest.approx((2.0 + 5.0) / 2)
    lo, hi = arm["stop_nll_ci"]
    assert lo < 3.5 < hi and hi - lo > 1  # the seeds' 3-point gap is in the interval
    assert arm["stop_nll_per_prompt"] == [2.5, None, 4.5, 3.5]
    assert [s["stop_nll_per_prompt"] for s in arm["seeds"]] == [[1.0, None, 3.0, 2.0], [4.0, None, 6.0, 5.0]]
