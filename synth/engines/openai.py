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
import time
from typing import Any

import httpx

from synth.engines.base import Engine, ProgressFn, SamplingParams
from synth.errors import UserError
from synth.records import Completion, Messages, TokenLogprob
from synth.redact import excerpt, register_secret, scrub
from synth.specs import OpenAISettings

RETRY_STATUS = {408, 409, 425, 429}
# Finish reasons that mean the server did not finish the answer: stored as the row's error, so that
# `--retry-failed` sees it. Any other value (stop, length, TGI's eos_token, a provider's own word)
# is a finished answer and kept as the row's finish_reason.
NOT_FINISHED = {"content_filter", "error", "abort", "aborted", "cancelled", "canceled", "timeout"}


class RequestFailed(Exception):
    """A request that failed for good; its (scrubbed) message lands in the rows' `error` column."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(scrub(message))
        self.status = status


class MalformedAnswer(ValueError):
    """A 200 answer that does not have the shape of a chat completion; the row keeps what was wrong."""


def _rejects_n(exc: RequestFailed) -> bool:
    """Whether a 400 answer complains about the `n` field (llama.cpp caps n at its slot count)."""
    return exc.status == 400 and re.search(r"(field\s+'n'|\bn\b\s*(must|should|is)|'n')", str(exc)) is not None


class OpenAIEngine(Engine):
    """Chat completions over HTTP with bounded concurrency and retries."""

    name = "openai"

    def __init__(
        self, settings: OpenAISettings, model_id: str, revision: str | None = None, field: str = "teacher.openai"
    ) -> None:
        super().__init__(settings.model or model_id, revision)
        self.settings = settings
        self.field = field  # where these settings sit in the recipe, for error messages
        self.base_url = settings.base_url.rstrip("/")
        key = os.environ.get(settings.api_key_env)
        register_secret(key)
        if key and not key.isascii():  # an HTTP header carries ASCII only
            raise UserError(
                f"the API key in ${settings.api_key_env} holds characters that are not ASCII",
                f"copy the key again into {settings.api_key_env}; keys are plain ASCII",
            )
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._max_n: int | None = None  # set to 1 once the server refuses n > 1
        self._preflight()

    def _preflight(self) -> None:
        """Fail before any work when the server is unreachable, refuses the key, is not an
        OpenAI-compatible API at this URL, or does not serve the model.

        A server still loading its model (5xx, e.g. llama-server's 503) is waited for with the
        request retries and backoff. A 404 on `/models` alone is not proof: some gateways have no
        model list, so one tiny chat request decides.
        """
        r = self._get_models()
        if r.status_code in (401, 403):
            raise UserError(
                f"the server at {self.base_url} refused the API key (HTTP {r.status_code})",
                f"put a valid key in the environment variable {self.settings.api_key_env}",
            )
        if r.status_code == 404:
            if self._chat_probe_status() == 404:
                raise UserError(
                    f"{self.base_url} is not the root of an OpenAI-compatible API (404 on /models and "
                    "/chat/completions)",
                    f"{self.field}.base_url usually ends in /v1, e.g. http://127.0.0.1:8000/v1",
                )
            return  # a gateway without a model list: the real requests report their own errors
        try:
            data = r.json().get("data")
            listed = [m.get("id") for m in data if isinstance(m, dict)] if isinstance(data, list) else None
        except (ValueError, AttributeError, RecursionError):
            listed = None
        if r.status_code != 200 or listed is None:
            raise UserError(
                f"{self.base_url}/models answered HTTP {r.status_code} with "
                f"{'a body that is not a model list' if r.status_code == 200 else excerpt(r.text, 120)!r}: "
                "this is not an OpenAI-compatible server, or it is not ready",
                f"set {self.field}.base_url to the server's API root (vLLM, llama.cpp: http://HOST:PORT/v1)",
            )
        if listed and self.model_id not in listed:
            self._probe_model(listed)

    def _get_models(self) -> httpx.Response:
        """GET /models, waiting out 5xx answers (a server loading its model) with the retry settings."""
        s = self.settings
        for attempt in range(s.max_retries + 1):
            try:
                r = httpx.get(f"{self.base_url}/models", headers=self._headers, timeout=10)
            except httpx.HTTPError as exc:
                raise UserError(
                    f"cannot reach the OpenAI-compatible server at {self.base_url} ({type(exc).__name__})",
                    f"start the server, or set {self.field}.base_url=http://HOST:PORT/v1",
                ) from None
            if r.status_code < 500 or attempt == s.max_retries:
                return r
            time.sleep(min(s.backoff_s * (2**attempt), 30.0))
        raise AssertionError("unreachable")

    def _chat_probe_status(self) -> int | None:
        """Status of a 1-token chat request (None when it cannot be sent)."""
        body = {"model": self.model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        try:
            return httpx.post(
                f"{self.base_url}/chat/completions", json=body, headers=self._headers, timeout=60
            ).status_code
        except httpx.HTTPError:
            return None

    def _probe_model(self, listed: list[str]) -> None:
        """A model name the server does not list: one 1-token request tells a typo from a server that
        answers to any name (llama.cpp), before any real work."""
        status = self._chat_probe_status()
        if status in (400, 404, 422):
            raise UserError(
                f"the server at {self.base_url} does not serve the model {self.model_id!r} "
                f"(HTTP {status}); it lists: {', '.join(map(str, listed[:10]))}",
                f"set {self.field}.model to one of those names",
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
                choices = _choices(data)
            except RequestFailed as exc:
                if want > 1 and _rejects_n(exc):
                    self._max_n = 1  # ask for one sample per request from now on
                    continue
                comps += [Completion.failed(str(exc)) for _ in range(params.n - len(comps))]
                break
            except MalformedAnswer as exc:
                comps += [Completion.failed(f"malformed answer from {self.base_url}: {exc}") for _ in range(want)]
                round_ += 1
                continue
            usage = _usage(data.get("usage"))
            for ch in choices[:want]:
                try:
                    comps.append(to_completion(ch, usage, len(choices)))
                except MalformedAnswer as exc:
                    comps.append(Completion.failed(f"malformed answer from {self.base_url}: {exc}"))
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
                        except (ValueError, RecursionError):  # not JSON, or nested too deep to decode
                            last = "the server answered 200 with a body that is not JSON"
                    elif r.status_code in RETRY_STATUS or r.status_code >= 500:
                        last = f"HTTP {r.status_code}: {excerpt(r.text, 200)}"
                        delay = _retry_after(r)
                    else:
                        raise RequestFailed(f"HTTP {r.status_code}: {excerpt(r.text, 300)}", r.status_code)
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


def _choices(data: Any) -> list[Any]:
    """The `choices` of a chat completion body, or MalformedAnswer saying what is wrong with it."""
    if not isinstance(data, dict):
        raise MalformedAnswer(f"the body is a JSON {type(data).__name__}, not an object")
    choices = data.get("choices")
    if not isinstance(choices, list):
        raise MalformedAnswer("the body has no `choices` list")
    if not choices:
        raise MalformedAnswer("`choices` is empty")
    return choices


def _count(value: Any) -> int | None:
    """A token count from `usage`; anything that is not a non-negative whole number is unknown."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or value < 0:
        return None
    return int(value) if float(value).is_integer() and value < 2**31 else None


def _usage(usage: Any) -> dict[str, int | None]:
    """`usage` with garbage dropped: a broken usage block alone never costs a good answer."""
    usage = usage if isinstance(usage, dict) else {}
    return {k: _count(usage.get(k)) for k in ("prompt_tokens", "completion_tokens")}


def _number(value: Any, what: str) -> float:
    """A JSON number as a float; NaN and infinities pass (the log-prob contract names them later), an
    integer too large for a float (JSON allows any) is a malformed answer, not an OverflowError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedAnswer(f"{what} is {type(value).__name__} {str(value)[:40]!r}, not a number")
    try:
        return float(value)
    except OverflowError:
        raise MalformedAnswer(f"{what} is an integer too large for a number ({len(str(value))} digits)") from None


def _token_logprob(t: Any, i: int) -> TokenLogprob:
    """One entry of `logprobs.content`, checked: a token string, a logprob, top alternatives."""
    if not isinstance(t, dict) or not isinstance(t.get("token"), str):
        raise MalformedAnswer(f"logprobs.content[{i}] is not a {{token, logprob, top_logprobs}} object")
    top = t.get("top_logprobs") or []
    if not isinstance(top, list) or not all(isinstance(x, dict) and isinstance(x.get("token"), str) for x in top):
        raise MalformedAnswer(f"logprobs.content[{i}].top_logprobs is not a list of {{token, logprob}} objects")
    ids = [x.get("id") for x in top]
    known = all(isinstance(x, int) and not isinstance(x, bool) for x in ids) and isinstance(t.get("id"), int)
    return TokenLogprob(  # llama.cpp's server also gives token ids: exact, no mapping needed later
        token=t["token"],
        token_id=t["id"] if known else None,
        logprob=_number(t.get("logprob"), f"logprobs.content[{i}].logprob"),
        top_tokens=[x["token"] for x in top],
        top_ids=ids if known else None,  # type: ignore[arg-type]
        top_logprobs=[_number(x.get("logprob"), f"logprobs.content[{i}].top_logprobs.logprob") for x in top],
    )


def _is_text(value: str) -> bool:
    """Whether a decoded JSON string can be stored: a lone "\\ud800" escape decodes, but is no UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def to_completion(choice: Any, usage: dict[str, int | None], n_choices: int) -> Completion:
    """Map one OpenAI `choice` to a Completion (token counts only where they are knowable).

    Raises MalformedAnswer when the choice does not have a chat completion's shape, so that the
    row records what was wrong instead of the run crashing.
    """
    if not isinstance(choice, dict):
        raise MalformedAnswer(f"a choice is a JSON {type(choice).__name__}, not an object")
    message = choice.get("message")
    if not isinstance(message, dict):
        raise MalformedAnswer("a choice has no `message` object")
    text = message.get("content")
    if text is not None and not isinstance(text, str):
        raise MalformedAnswer(f"message.content is {type(text).__name__}, not a string")
    if text and not _is_text(text):
        raise MalformedAnswer("message.content holds half of a UTF-16 surrogate pair, which is not text")
    lp_block = choice.get("logprobs")
    lp = lp_block.get("content") if isinstance(lp_block, dict) else None
    if lp_block is not None and not isinstance(lp_block, dict):
        raise MalformedAnswer(f"logprobs is {type(lp_block).__name__}, not an object")
    if lp is not None and not isinstance(lp, list):
        raise MalformedAnswer(f"logprobs.content is {type(lp).__name__}, not a list")
    logprobs = None if lp is None else [_token_logprob(t, i) for i, t in enumerate(lp)]
    if logprobs is not None:
        completion_tokens = len(logprobs)
    elif n_choices == 1:
        completion_tokens = usage.get("completion_tokens")
    else:
        completion_tokens = None  # usage sums all choices; one choice's share is not knowable
    finish = choice.get("finish_reason") or "stop"
    finish = finish if isinstance(finish, str) else str(finish)
    error = f"the server ended the answer with finish_reason {finish!r}" if finish.lower() in NOT_FINISHED else None
    return Completion(
        text=text or "",
        finish_reason=finish,
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=completion_tokens,
        logprobs=logprobs,
        error=error,
    )
