"""The transformers engine on the real SmolLM2-135M-Instruct."""

from __future__ import annotations

from pathlib import Path

import pytest

from synth.engines.base import SamplingParams
from synth.engines.hf import TransformersEngine

pytestmark = pytest.mark.slow

PROMPTS = [
    [{"role": "user", "content": "Hi."}],
    [
        {"role": "system", "content": "Always answer in French."},
        {"role": "user", "content": "Describe, in a few words, the weather you like best on a long summer day."},
    ],
    [{"role": "user", "content": "Name a fruit."}],
]


@pytest.fixture(scope="module")
def engine(smollm2_dir: Path) -> TransformersEngine:
    return TransformersEngine(str(smollm2_dir), "smollm2", batch_size=4)


def test_n_samples_per_prompt_in_input_order(engine: TransformersEngine) -> None:
    params = SamplingParams(n=3, temperature=0.8, max_new_tokens=10, seed=1, logprobs=3)
    seen: list[tuple[int, int]] = []
    out = engine.generate(PROMPTS, params, on_progress=lambda r, t: seen.append((r, t)))
    assert [len(c) for c in out] == [3, 3, 3]
    assert sum(r for r, _ in seen) == 9  # progress reported every completion once
    # Batching reorders prompts by length; results must come back in input order: the prompt token
    # counts identify the prompts (the second prompt is by far the longest).
    lengths = [c[0].prompt_tokens for c in out]
    assert lengths[1] > lengths[0] and lengths[1] > lengths[2]
    for comps in out:
        for c in comps:
            assert c.finish_reason in {"stop", "length"} and c.error is None
            assert 0 < (c.completion_tokens or 0) <= 10
            assert c.finish_reason == "stop" or c.completion_tokens == 10
            # one entry per generated token, the stop token's included (a KD student learns to stop)
            assert c.logprobs is not None and len(c.logprobs) == c.completion_tokens + (c.finish_reason == "stop")
            text_ids = [t.token_id for t in c.logprobs[: c.completion_tokens]]
            assert engine.tokenizer.decode(text_ids, skip_special_tokens=True) == c.text
            if c.finish_reason == "stop":
                assert c.logprobs[-1].token_id in engine.eos_ids
            for t in c.logprobs:
                assert len(t.top_ids) == 3 and t.top_logprobs == sorted(t.top_logprobs, reverse=True)
                assert t.logprob <= t.top_logprobs[0] + 1e-5


def test_greedy_is_deterministic_and_seeded_sampling_repeats(engine: TransformersEngine) -> None:
    greedy = engine.generate(PROMPTS[:1], SamplingParams(n=2, temperature=0.0, max_new_tokens=8))
    assert greedy[0][0].text == greedy[0][1].text
    p = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=7)
    assert [c.text for c in engine.generate(PROMPTS, p)[1]] == [c.text for c in engine.generate(PROMPTS, p)[1]]


def test_too_long_prompt_is_reported_not_generated(engine: TransformersEngine) -> None:
    long = [{"role": "user", "content": "word " * 9000}]
    reason = engine.check_prompt(long, SamplingParams(max_new_tokens=16))
    assert reason is not None and reason.startswith("prompt too long") and "context 8192" in reason
    assert engine.check_prompt(PROMPTS[0], SamplingParams()) is None
