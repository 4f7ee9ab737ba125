"""What every local engine promises, written once and run against each real engine.

`tests/test_engine_transformers.py` runs these on the transformers engine; `tests/vllm/` runs the same
functions on the real vLLM (its CPU build, `make test-vllm`). Each takes the engine and the tokenizer
of the model it runs (SmolLM2-135M-Instruct).
"""

from __future__ import annotations

from typing import Any

from synth.engines.base import Engine, SamplingParams

PROMPTS = [
    [{"role": "user", "content": "Hi."}],
    [
        {"role": "system", "content": "Always answer in French."},
        {"role": "user", "content": "Describe, in a few words, the weather you like best on a long summer day."},
    ],
    [{"role": "user", "content": "Name a fruit."}],
]


def n_samples_in_input_order(engine: Engine, tokenizer: Any) -> None:
    """n completions per prompt, in input order; token counts, finish reasons and log-probabilities agree
    with the text: one entry per generated token plus the stop token's step, exactly k alternatives."""
    params = SamplingParams(n=3, temperature=0.8, max_new_tokens=10, seed=1, logprobs=3)
    seen: list[tuple[int, int]] = []
    out = engine.generate(PROMPTS, params, on_progress=lambda r, t: seen.append((r, t)))
    assert [len(c) for c in out] == [3, 3, 3]
    assert sum(r for r, _ in seen) == 9  # progress reported every completion once
    # the prompt token counts identify the prompts (the second is by far the longest)
    lengths = [c[0].prompt_tokens for c in out]
    assert lengths[1] > lengths[0] and lengths[1] > lengths[2]
    assert lengths[0] == len(
        tokenizer.apply_chat_template(PROMPTS[0], add_generation_prompt=True, tokenize=True, return_dict=False)
    )
    for comps in out:
        for c in comps:
            assert c.finish_reason in {"stop", "length"} and c.error is None
            assert 0 < (c.completion_tokens or 0) <= 10
            assert c.finish_reason == "stop" or c.completion_tokens == 10
            assert c.logprobs is not None and len(c.logprobs) == c.completion_tokens + (c.finish_reason == "stop")
            text_ids = [t.token_id for t in c.logprobs[: c.completion_tokens]]
            assert tokenizer.decode(text_ids, skip_special_tokens=True) == c.text
            if c.finish_reason == "stop":
                assert c.logprobs[-1].token_id == tokenizer.eos_token_id
            for t in c.logprobs:
                assert len(t.top_ids) == 3 and len(t.top_logprobs) == 3
                assert t.top_logprobs == sorted(t.top_logprobs, reverse=True)
                assert t.logprob <= t.top_logprobs[0] + 1e-4


def greedy_and_seeded_sampling_repeat(engine: Engine) -> None:
    """Greedy decoding with n > 1 gives n copies of one answer; the same seed samples the same texts."""
    greedy = engine.generate(PROMPTS[:1], SamplingParams(n=2, temperature=0.0, max_new_tokens=8))
    assert len(greedy[0]) == 2 and greedy[0][0].text == greedy[0][1].text
    p = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=7)
    assert [c.text for c in engine.generate(PROMPTS, p)[1]] == [c.text for c in engine.generate(PROMPTS, p)[1]]


def too_long_prompt_is_reported(engine: Engine, context: int) -> None:
    """A prompt that cannot fit the context is reported before generation, with the numbers."""
    long = [{"role": "user", "content": "word " * (context + 100)}]
    reason = engine.check_prompt(long, SamplingParams(max_new_tokens=16))
    assert reason is not None and reason.startswith("prompt too long") and f"context {context}" in reason
    assert engine.check_prompt(PROMPTS[0], SamplingParams()) is None
