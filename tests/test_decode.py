"""The transformers engine's decoding loop (synth/engines/decode.py) against transformers' own
`generate` and logits warpers: the same greedy tokens and raw log-probabilities, the same set of tokens
to sample from, whatever the batch size and however prompts enter the batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from synth.engines.base import SamplingParams
from synth.engines.decode import decode, kept, supports
from synth.engines.hf import TransformersEngine
from tests.conftest import ROOT, tiny_llama


def _hf_kept(logits: torch.Tensor, temperature: float, top_p: float, top_k: int | None) -> torch.Tensor:
    """transformers' probabilities after its temperature, top-k and top-p warpers, as `generate` applies them."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers(torch.zeros(logits.shape[0], 1, dtype=torch.long), logits.clone()).softmax(-1)


def _ours(logits: torch.Tensor, temperature: float, top_p: float, top_k: int | None) -> torch.Tensor:
    out = torch.zeros_like(logits)
    for rows, probs, ids in kept(logits, temperature, top_p, top_k):
        out[rows] = out[rows].scatter(-1, ids, probs)
    return out / out.sum(-1, keepdim=True)


@pytest.mark.parametrize(
    ("temperature", "top_p", "top_k"),
    [(0.7, 0.95, None), (1.0, 0.5, None), (1.3, 0.9, 40), (0.7, 1.0, 20), (1.0, 1.0, None)],
)
def test_the_kept_distribution_is_transformers_warpers(temperature: float, top_p: float, top_k: int | None) -> None:
    torch.manual_seed(0)
    peaked = torch.randn(6, 5000) * 4  # nuclei of a few tokens
    flat = torch.randn(2, 5000) * 0.05  # nuclei wider than the candidates: the full-sort fallback
    logits = torch.cat([peaked, flat])
    ours, theirs = _ours(logits, temperature, top_p, top_k), _hf_kept(logits, temperature, top_p, top_k)
    assert torch.equal(ours > 0, theirs > 0)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_greedy_with_prompts_entering_as_rows_free_up_matches_one_batch() -> None:
    model = tiny_llama(vocab_size=300, layers=2, seed=3)
    gen = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(3, 300, (int(n),), generator=gen).tolist() for n in torch.randint(2, 12, (9,), generator=gen)
    ]
    args = {"n": 1, "max_new_tokens": 12, "eos_ids": {5, 7}, "pad_id": 0, "temperature": 0.0}
    with torch.inference_mode():
        whole = decode(model, prompts, max_rows=64, **args)
        trickled = decode(model, prompts, max_rows=2, **args)
    assert [[d.tokens for d in ds] for ds in whole] == [[d.tokens for d in ds] for ds in trickled]
    lengths = {len(ds[0].tokens) for ds in whole}
    assert len(lengths) > 1, "rows of different lengths: some leave the batch early"
    for ds in whole:
        d = ds[0]
        assert d.stopped == (d.tokens[-1] in {5, 7})
        assert d.stopped or len(d.tokens) == 12
        assert not any(t in {5, 7} for t in d.tokens[:-1])


def test_seeded_sampling_repeats_in_any_batch_and_gives_n_samples() -> None:
    model = tiny_llama(vocab_size=300, layers=2, seed=3)
    prompts = [[10, 11, 12], [20, 21], [30, 31, 32, 33]]
    args = {"n": 3, "max_new_tokens": 8, "eos_ids": {5}, "pad_id": 0, "temperature": 1.0, "top_p": 0.9, "max_rows": 4}
    with torch.inference_mode():
        a = decode(model, prompts, seeds=[1, 2, 3], logprobs=2, **args)
        b = decode(model, prompts, seeds=[1, 2, 3], logprobs=2, **args)
        # the last prompt alone, in a batch of its own: the same seed gives the same samples
        alone = decode(model, prompts[2:], seeds=[3], **args | {"max_rows": 64})
    assert [[d.tokens for d in ds] for ds in a] == [[d.tokens for d in ds] for ds in b]
    assert [d.tokens for d in alone[0]] == [d.tokens for d in a[2]]
    assert [len(ds) for ds in a] == [3, 3, 3]
    assert len({tuple(d.tokens) for ds in a for d in ds}) > 3
    for ds in a:
        for d in ds:
            assert d.logprobs is not None and len(d.logprobs) == len(d.tokens)
            for chosen, ids, lps in d.logprobs:
                assert len(ids) == 2 and lps[0] >= lps[1] and chosen <= lps[0] + 1e-6


def test_a_generation_config_with_a_processor_falls_back_to_generate() -> None:
    model = tiny_llama(vocab_size=300)
    assert supports(model) is None
    model.generation_config.repetition_penalty = 1.3
    assert "repetition_penalty" in (supports(model) or "")


@pytest.mark.slow
def test_smollm2_greedy_tokens_and_logprobs_are_generates(smollm2_dir: Path) -> None:
    # float32: this pins the loop's logic; in bf16 the padded batch and generate's single row round
    # differently (log-probs measured 0.05 apart), which says nothing about the loop
    engine = TransformersEngine(str(smollm2_dir), "smollm2", dtype="float32", batch_size=3)
    assert engine.decoder_problem is None
    lines = (ROOT / "data" / "heldout_prompts.jsonl").read_text().splitlines()[:6]
    prompts = [[{"role": "user", "content": json.loads(x)["prompt"]}] for x in lines]
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=24, logprobs=3)
    ours = engine.generate(prompts, params)
    pad = engine.tokenizer.pad_token_id
    for messages, (comp,) in zip(prompts, ours, strict=True):
        ids = torch.tensor([engine.encode(messages)])
        with torch.inference_mode():
            out = engine.model.generate(
                input_ids=ids, max_new_tokens=24, do_sample=False, pad_token_id=pad,
                return_dict_in_generate=True, output_logits=True,
            )  # fmt: skip
        new = out.sequences[0, ids.shape[1] :].tolist()
        assert comp.logprobs is not None
        assert [t.token_id for t in comp.logprobs] == new[: len(comp.logprobs)]
        assert len(comp.logprobs) == len(new)  # the stop token's step included, as generate's
        for step, t in enumerate(comp.logprobs):
            raw = torch.log_softmax(out.logits[step][0].float(), -1)
            assert t.logprob == pytest.approx(float(raw[t.token_id]), abs=1e-4)
            assert t.top_ids == raw.topk(3).indices.tolist()


def test_a_token_exactly_at_the_top_p_boundary_is_dropped_as_transformers_does() -> None:
    logits = torch.full((1, 400), -1e4)
    logits[0, :3] = torch.tensor([2.0, 1.0, 1.0]).log()  # probabilities 0.5, 0.25, 0.25
    ours, theirs = _ours(logits, 1.0, 0.75, None), _hf_kept(logits, 1.0, 0.75, None)
    assert torch.equal(ours > 0, theirs > 0)
    assert int((ours > 0).sum()) == 2


def test_a_model_without_a_stop_token_runs_to_the_token_limit() -> None:
    model = tiny_llama(vocab_size=300, layers=1)
    with torch.inference_mode():
        out = decode(model, [[3, 4, 5]], n=2, max_new_tokens=5, eos_ids={None}, pad_id=0, temperature=1.0)  # type: ignore[arg-type]
    assert [len(d.tokens) for d in out[0]] == [5, 5] and not any(d.stopped for d in out[0])
