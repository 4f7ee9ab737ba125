"""Engines behind one interface; `build_engine` is the only place that knows which is which."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from synth.engines.base import Engine, SamplingParams
from synth.specs import TeacherSpec

if TYPE_CHECKING:  # the recipe's curate section imports the judge check, which runs an engine
    from synth.recipe import Recipe

__all__ = [
    "Engine",
    "SamplingParams",
    "build_engine",
    "build_engine_for",
    "runs_calls_together",
    "sampling_params",
    "teacher_provenance",
]

# engines whose `generate` may be called from several threads at once, the calls sharing the model: vLLM
# (every call's requests join one running batch) and a server (each call its own HTTP client). The
# transformers engine's decoding loop holds one batch; calls to it must come one at a time.
CONCURRENT_ENGINES = frozenset({"vllm", "openai"})


def runs_calls_together(engine: str) -> bool:
    """Whether a Ray worker with this teacher engine may run several shards at once (threads)."""
    return engine in CONCURRENT_ENGINES


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


def _source(spec: TeacherSpec, recipe: Recipe) -> tuple[str, str | None]:
    """(model path, revision) of a teacher or judge; `path: self` means the student's initial weights."""
    if spec.path == "self":
        return recipe.model.path, recipe.model.revision
    return spec.path, spec.revision


def teacher_provenance(recipe: Recipe) -> dict[str, Any]:
    """The `teacher` column the recipe's engine will write, known without loading any model.

    A run folder must not mix rows of two teachers or two sampling settings; comparing this with the
    rows already on disk catches that before any work, even when no prompt is left to generate.
    """
    path, revision = _source(recipe.teacher, recipe)
    if recipe.teacher.engine == "openai":
        model_id = recipe.teacher.openai.model or path
    else:
        from synth.models import resolve_model

        model_id = resolve_model(path)[1]
    params = sampling_params(recipe)
    out = {"model": model_id, "revision": revision, "engine": recipe.teacher.engine, "sampling": params.as_dict()}
    if recipe.teacher.engine == "transformers":
        from synth.runtime import check_device, dtype_name, pick_dtype

        out["dtype"] = dtype_name(pick_dtype(recipe.teacher.dtype, check_device(recipe.runtime.device)))
    return out


def build_engine(recipe: Recipe) -> Engine:
    """Build the teacher's engine from the recipe."""
    return build_engine_for(recipe.teacher, recipe, recipe.generate.batch_size, recipe.generate.seed)


def build_engine_for(t: TeacherSpec, recipe: Recipe, batch_size: int, seed: int = 0, field: str = "teacher") -> Engine:
    """Build an engine for a teacher or a judge spec (`engine`, `path`, `openai`, `vllm` fields).

    `field` is where `t` sits in the recipe (`teacher`, `curate.checks.2.model`), so that an
    engine's errors name the setting to change.
    """
    path, revision = _source(t, recipe)
    if t.engine == "openai":
        from synth.engines.openai import OpenAIEngine

        return OpenAIEngine(t.openai, model_id=path, revision=revision, field=f"{field}.openai")
    from synth.models import resolve_model

    load_path, model_id = resolve_model(path)
    if t.engine == "vllm":
        from synth.engines.vllm import VLLMEngine

        return VLLMEngine(load_path, model_id, revision, t.vllm, dtype=t.dtype, seed=seed, field=f"{field}.vllm")
    from synth.engines.hf import TransformersEngine

    return TransformersEngine(
        load_path,
        model_id,
        revision,
        dtype=t.dtype,
        device=recipe.runtime.device,
        batch_size=batch_size,
        field=f"{field}.path" if t.path != "self" else "model.path",
    )
