"""Engines behind one interface; `build_engine` is the only place that knows which is which."""

from __future__ import annotations

from synth.engines.base import Engine, SamplingParams
from synth.recipe import Recipe

__all__ = ["Engine", "SamplingParams", "build_engine", "sampling_params"]


def sampling_params(recipe: Recipe) -> SamplingParams:
    """The recipe's `generate:` section as engine-neutral sampling parameters."""
    g = recipe.generate
    return SamplingParams(
        n=g.n,
        temperature=g.temperature,
        top_p=g.top_p,
        top_k=g.top_k,
        max_new_tokens=g.max_new_tokens,
        seed=g.seed,
        logprobs=g.logprobs,
    )


def build_engine(recipe: Recipe) -> Engine:
    """Build the teacher's engine; `teacher.path: self` means the student's own initial weights."""
    t = recipe.teacher
    path = recipe.model.path if t.path == "self" else t.path
    revision = recipe.model.revision if t.path == "self" else t.revision
    if t.engine == "openai":
        from synth.engines.openai import OpenAIEngine

        return OpenAIEngine(t.openai, model_id=path, revision=revision)
    from synth.models import resolve_model

    load_path, model_id = resolve_model(path)
    if t.engine == "vllm":
        from synth.engines.vllm import VLLMEngine

        return VLLMEngine(load_path, model_id, revision, t.vllm, dtype=t.dtype, seed=recipe.generate.seed)
    from synth.engines.hf import TransformersEngine

    return TransformersEngine(
        load_path,
        model_id,
        revision,
        dtype=t.dtype,
        device=recipe.runtime.device,
        batch_size=recipe.generate.batch_size,
    )
