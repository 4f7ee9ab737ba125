"""OpenAI-compatible engine: vllm serve, TGI, SGLang, llama.cpp's server, hosted APIs.

Requests run concurrently up to `concurrency`; 429, 5xx, timeouts and dropped connections are
retried with exponential backoff (honouring Retry-After); other errors are recorded on the rows.
`n` is honoured even where a server ignores it or caps it (llama.cpp's server answers 400 for n above
its slot count): missing samples are asked for again, one request per sample after a refusal, each
time with a different seed so the extra samples are not copies of the first.
The API key is read from the environment only and sent only in the Authorization header.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
from typing import Any

import httpx

from synth.engines.base import Engine, ProgressFn, SamplingParams
from synth.errors import UserError
from synth.recipe import OpenAISettings
from synth.records import Completion, Messages, TokenLogprob

RETRY_STATUS = {408, 409, 425, 429}


class RequestFailed(Exception):
    """A request that failed for good; its message lands in the rows' `error` column."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _rejects_n(exc: RequestFailed) -> bool:
    """Whether a 400 answer complains about the `n` field (llama.cpp caps n at its slot count)."""
    return exc.status == 400 and re.search(r"(field\s+'n'|\bn\b\s*(must|should|is)|'n')", str(exc)) is not None


class OpenAIEngine(Engine):
    """Chat completions over HTTP with bounded concurrency and retries."""

    name = "openai"

    def __init__(self, settings: OpenAISettings, model_id: str, revision: str | None = None) -> None:
        super().__init__(settings.model or model_id, revision)
        self.settings = settings
        self.base_url = settings.base_url.rstrip("/")
        key = os.environ.get(settings.api_key_env)
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._max_n: int | None = None  # set to 1 once the server refuses n > 1
        self._preflight()

    def _preflight(self) -> None:
        """Fail before any work when the server is unreachable or refuses the key."""
        try:
            r = httpx.get(f"{self.base_url}/models", headers=self._headers, timeout=10)
        except httpx.HTTPError as exc:
            raise UserError(
                f"cannot reach the OpenAI-compatible server at {self.base_url} ({type(exc).__name__})",
                "start the server, or set teacher.openai.base_url=http://HOST:PORT/v1",
            ) from None
        if r.status_code in (401, 403):
            raise UserError(
                f"the server at {self.base_url} refused the API key (HTTP {r.status_code})",
                f"put a valid key in the environment variable {self.settings.api_key_env}",
            )

    def generate(
        self, prompts: list[Messages], params: SamplingParams, on_progress: ProgressFn | None = None
    ) -> list[list[Completion]]:
        return asyncio.run(self._generate_all(prompts, params, on_progress))

    async def _generate_all(
        self, prompts: list[Messages], params: SamplingParams, on_progress: ProgressFn | None
    ) -> list[list[Completion]]:
        sem = asyncio.Semaphore(self.settings.concurrency)
        timeout = httpx.Timeout(self.settings.timeout_s)
        limits = httpx.Limits(max_connections=self.settings.concurrency)
        async with httpx.AsyncClient(headers=self._headers, timeout=timeout, limits=limits) as client:
            return list(await asyncio.gather(*(self._one_prompt(client, sem, m, params, on_progress) for m in prompts)))

    async def _one_prompt(
        self,
        client: httpx.AsyncClient,
        sem: asyncio.Semaphore,
        messages: Messages,
        params: SamplingParams,
        on_progress: ProgressFn | None,
    ) -> list[Completion]:
        comps: list[Completion] = []
        round_ = 0
        while len(comps) < params.n:
            want = min(params.n - len(comps), self._max_n or params.n)
            try:
                data = await self._post(client, sem, self._body(messages, params, want, round_))
                choices = data.get("choices") or []
                if not choices:
                    raise RequestFailed("the server answered with no choices")
            except RequestFailed as exc:
                if want > 1 and _rejects_n(exc):
                    self._max_n = 1  # ask for one sample per request from now on
                    continue
                comps += [Completion.failed(str(exc)) for _ in range(params.n - len(comps))]
                break
            usage = data.get("usage") or {}
            comps += [to_completion(ch, usage, len(choices)) for ch in choices[:want]]
            round_ += 1
        if on_progress:
            on_progress(len(comps), sum(c.completion_tokens or 0 for c in comps))
        return comps

    def _body(self, messages: Messages, params: SamplingParams, n: int, round_: int) -> dict[str, Any]:
        seed_src = repr((params.seed, messages, round_)).encode()
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": messages,
            "n": n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
            "seed": int.from_bytes(hashlib.sha256(seed_src).digest()[:4], "little"),
        }
        if params.top_k:
            body["top_k"] = params.top_k  # an extension most open servers accept
        if params.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = params.logprobs
        return body

    async def _post(self, client: httpx.AsyncClient, sem: asyncio.Semaphore, body: dict[str, Any]) -> dict[str, Any]:
        s = self.settings
        last = ""
        for attempt in range(s.max_retries + 1):
            delay: float | None = None
            async with sem:
                try:
                    r = await client.post(f"{self.base_url}/chat/completions", json=body)
                except httpx.TimeoutException:
                    last = f"timed out after {s.timeout_s:g} s"
                except httpx.TransportError as exc:
                    last = f"connection error ({type(exc).__name__})"
                else:
                    if r.status_code == 200:
                        try:
                            return r.json()
                        except ValueError:
                            last = "the server answered 200 with a body that is not JSON"
                    elif r.status_code in RETRY_STATUS or r.status_code >= 500:
                        last = f"HTTP {r.status_code}: {r.text[:200]}"
                        delay = _retry_after(r)
                    else:
                        raise RequestFailed(f"HTTP {r.status_code}: {r.text[:300]}", r.status_code)
            if attempt < s.max_retries:
                backoff = s.backoff_s * (2**attempt) * (0.5 + random.random())
                await asyncio.sleep(delay if delay is not None else backoff)
        raise RequestFailed(f"gave up after {s.max_retries + 1} tries: {last}")


def _retry_after(r: httpx.Response) -> float | None:
    value = r.headers.get("retry-after")
    try:
        return min(float(value), 60.0) if value else None
    except ValueError:
        return None


def to_completion(choice: dict[str, Any], usage: dict[str, Any], n_choices: int) -> Completion:
    """Map one OpenAI `choice` to a Completion (token counts only where they are knowable)."""
    message = choice.get("message") or {}
    lp = (choice.get("logprobs") or {}).get("content")
    logprobs = None
    if lp is not None:
        logprobs = [
            TokenLogprob(
                token=t.get("token", ""),
                logprob=float(t.get("logprob", 0.0)),
                top_tokens=[x.get("token", "") for x in t.get("top_logprobs") or []],
                top_logprobs=[float(x.get("logprob", 0.0)) for x in t.get("top_logprobs") or []],
            )
            for t in lp
        ]
    if logprobs is not None:
        completion_tokens = len(logprobs)
    elif n_choices == 1:
        completion_tokens = usage.get("completion_tokens")
    else:
        completion_tokens = None  # usage sums all choices; one choice's share is not knowable
    return Completion(
        text=message.get("content") or "",
        finish_reason=choice.get("finish_reason") or "stop",
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=completion_tokens,
        logprobs=logprobs,
    )
