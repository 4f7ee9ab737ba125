"""vLLM offline engine (GPU only): `LLM.chat` with `SamplingParams`.

Deliberately thin: vLLM cannot run on the CPU machines where the tests run, so all this adapter does
is translate our SamplingParams into vLLM's and vLLM's outputs into `Completion`s; rows are then
built by the same `records.make_rows` as for every other engine. vLLM is imported only when chosen.
"""

from __future__ import annotations

from typing import Any

from synth.engines.base import Engine, ProgressFn, SamplingParams
from synth.errors import UserError
from synth.records import Completion, Messages, TokenLogprob
from synth.specs import VLLMSettings


class VLLMEngine(Engine):
    """Offline batched generation with vLLM, tensor/data parallel as configured."""

    name = "vllm"

    def __init__(
        self,
        load_path: str,
        model_id: str,
        revision: str | None,
        settings: VLLMSettings,
        dtype: str = "auto",
        seed: int = 0,
    ) -> None:
        super().__init__(model_id, revision)
        try:
            import vllm
        except ImportError:
            raise UserError(
                "teacher.engine=vllm needs vLLM, which is not installed",
                "on a GPU machine: pip install 'distillery[vllm]'; on a CPU use engine transformers or openai",
            ) from None
        self._vllm = vllm
        args: dict[str, Any] = {
            "model": load_path,
            "revision": revision,
            "dtype": dtype,
            "seed": seed,
            "tensor_parallel_size": settings.tensor_parallel_size,
            "gpu_memory_utilization": settings.gpu_memory_utilization,
        }
        if settings.data_parallel_size > 1:
            args["data_parallel_size"] = settings.data_parallel_size
        if settings.max_model_len:
            args["max_model_len"] = settings.max_model_len
        self.llm = vllm.LLM(**args, **settings.engine_args)

    def generate(
        self, prompts: list[Messages], params: SamplingParams, on_progress: ProgressFn | None = None
    ) -> list[list[Completion]]:
        sp = self._vllm.SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k or -1,
            max_tokens=params.max_new_tokens,
            seed=params.seed,
            logprobs=params.logprobs,
        )
        outputs = self.llm.chat(prompts, sp, use_tqdm=False)
        results = [[_completion(out, o) for o in out.outputs] for out in outputs]
        if on_progress:
            done = [c for comps in results for c in comps]
            on_progress(len(done), sum(c.completion_tokens or 0 for c in done))
        return results


def _completion(out: Any, o: Any) -> Completion:
    """Map one vLLM CompletionOutput (with its RequestOutput) to a Completion."""
    logprobs = None
    if o.logprobs is not None:
        logprobs = []
        for tok, entries in zip(o.token_ids, o.logprobs, strict=False):
            ranked = sorted(entries.items(), key=lambda kv: kv[1].rank)
            chosen = entries.get(tok)
            logprobs.append(
                TokenLogprob(
                    token=(chosen.decoded_token if chosen else "") or "",
                    token_id=int(tok),
                    logprob=float(chosen.logprob) if chosen else float("nan"),
                    top_tokens=[e.decoded_token or "" for _, e in ranked],
                    top_ids=[int(i) for i, _ in ranked],
                    top_logprobs=[float(e.logprob) for _, e in ranked],
                )
            )
    return Completion(
        text=o.text,
        finish_reason=o.finish_reason or "stop",
        prompt_tokens=len(out.prompt_token_ids or []),
        completion_tokens=len(o.token_ids),
        logprobs=logprobs,
    )
