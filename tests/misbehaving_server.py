"""A real HTTP server process that answers like an OpenAI-compatible server, and misbehaves on demand.

The first path segment picks the behaviour, so one process serves every case:
`http://127.0.0.1:PORT/<mode>/v1` is the base_url of a server that behaves as `<mode>` says for
prompts containing the word BAD, and answers normally for the others (so a shard mixes good and bad
rows). `/<mode>/v1/models` lists one model, `served-model`. Run: `python misbehaving_server.py PORT`.
`/grader/v1` is a judge whose grades are known in advance: "Score: 9" for a response that says Paris,
"Score: 2" otherwise, and "no idea" (unparsable) for a response that says UNSURE.
Normal answers carry log-probabilities when the request asks for them (`logprobs`, `top_logprobs`);
`/logprobs-in-prompt/v1` answers a BAD prompt with the choice fields its text carries as JSON after
`PAYLOAD:` (`logprobs`, left out when the payload has none, and `content`), so a test can send any shape.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "served-model"


def good(text: str, n: int, top_logprobs: int = 0) -> dict[str, Any]:
    """A well-formed chat completion with `n` choices answering `text`, with `top_logprobs`
    alternatives per token when the request asked for log-probabilities."""
    answer = {
        "object": "chat.completion",
        "model": MODEL,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": f"Answer {i}: {text[:40]}"},
                "finish_reason": "stop",
            }
            for i in range(n)
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 5 * n, "total_tokens": 7 + 5 * n},
    }
    if top_logprobs:
        for c in answer["choices"]:
            c["logprobs"] = {"content": word_logprobs(c["message"]["content"], top_logprobs)}
    return answer


def word_logprobs(answer: str, k: int) -> list[dict[str, Any]]:
    """One log-prob entry per word of `answer` with k alternatives and their ids, as llama.cpp's server
    gives them: the word first (log-prob -0.5), then `alt1`.. (-1.5, -2.5, ...), a distribution."""
    steps = []
    for word in answer.split(" "):
        top = [{"token": word if r == 0 else f"alt{r}", "id": 10 + r, "logprob": -0.5 - r} for r in range(k)]
        steps.append({**top[0], "top_logprobs": top})
    return steps


def requested_logprobs(body: dict[str, Any]) -> int:
    """How many alternatives per token the request asked for (0: none)."""
    return int(body.get("top_logprobs") or 1) if body.get("logprobs") else 0


def grade(text: str) -> str:
    """The scripted judge's answer to a grading prompt: reads only the response block."""
    response = text.split("<response", 1)[-1]
    if "UNSURE" in response:
        return "no idea"
    return "Score: 9" if "Paris" in response else "Score: 2"


def bad(mode: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, bytes, str]:
    """(status, body, content type) of the misbehaving answer for `mode`."""
    text = " ".join(m["content"] for m in body.get("messages", []))
    n = int(body.get("n") or 1)
    as_json = "application/json"
    if mode == "not-object":
        return 200, b"[1, 2, 3]", as_json
    if mode == "choices-not-objects":
        return 200, json.dumps({"choices": ["hello"] * n}).encode(), as_json
    if mode == "no-choices":
        return 200, json.dumps({"id": "x"}).encode(), as_json
    if mode == "content-not-string":
        ans = good(text, n)
        for c in ans["choices"]:
            c["message"]["content"] = {"text": 42}
        return 200, json.dumps(ans).encode(), as_json
    if mode == "usage-garbage":
        ans = good(text, n)
        ans["usage"] = {"prompt_tokens": "many", "completion_tokens": [1], "total_tokens": None}
        return 200, json.dumps(ans).encode(), as_json
    if mode == "html":
        return 200, b"<!doctype html><html><body>Welcome to nginx!</body></html>", "text/html"
    if mode == "logprobs-in-prompt":  # the prompt carries the choice's log-probs: PAYLOAD:{"logprobs": ...}
        payload = json.loads(text.split("PAYLOAD:", 1)[1])
        ans = good(text, n)
        for c in ans["choices"]:
            c["message"]["content"] = payload.get("content", c["message"]["content"])
            if "logprobs" in payload:
                c["logprobs"] = payload["logprobs"]
        return 200, json.dumps(ans).encode(), as_json
    if mode == "bad-logprobs":
        ans = good(text, n, requested_logprobs(body))
        for c in ans["choices"]:
            c["logprobs"] = {"content": [{"token": 5, "logprob": "high"}]}
        return 200, json.dumps(ans).encode(), as_json
    if mode == "eos-token":  # TGI's word for a normal stop, before it followed OpenAI
        ans = good(text, n, requested_logprobs(body))
        for c in ans["choices"]:
            c["finish_reason"] = "eos_token"
        return 200, json.dumps(ans).encode(), as_json
    if mode == "content-filter":
        ans = good(text, n, requested_logprobs(body))
        for c in ans["choices"]:
            c["finish_reason"] = "content_filter"
        return 200, json.dumps(ans).encode(), as_json
    if mode == "echo-auth":  # a proxy that echoes the request's headers in its error body
        key = headers.get("Authorization", "").split()[-1:]  # and the bare key, as some proxies log it
        echoed = {"error": {"message": f"bad request for key {''.join(key)}", "request_headers": headers}}
        return 400, json.dumps(echoed).encode(), as_json
    if mode == "long-echo":  # the key past the point where an excerpt of the body is cut
        key = headers.get("Authorization", "").split()[-1:]
        return 400, ("x" * 280 + f" key {''.join(key)} end").encode(), "text/plain"
    if mode == "deep-json":
        return 200, b"[" * 100_000 + b"]" * 100_000, as_json
    if mode == "multiline":
        return 400, b"line one\nline two\n\x1b[31mred\x1b[0m", "text/plain"
    if mode == "fail":
        return 400, json.dumps({"error": {"message": "nope"}}).encode(), as_json
    raise ValueError(mode)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _mode(self) -> tuple[str, str]:
        parts = self.path.split("/", 3)  # "", mode, "v1", rest
        if len(parts) < 4 or parts[2] != "v1":
            return "", ""
        return parts[1], parts[3]

    def do_GET(self) -> None:
        mode, rest = self._mode()
        if rest == "models" and mode != "no-models":  # no-models: a gateway without a model list
            self._send(200, json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode())
        else:
            self._send(404, b'{"error": "not found"}')

    def do_POST(self) -> None:
        mode, rest = self._mode()
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        if rest != "chat/completions":
            self._send(404, b'{"error": "not found"}')
            return
        body = json.loads(raw)
        if body.get("model") != MODEL:
            self._send(404, json.dumps({"error": {"message": f"model {body.get('model')} not found"}}).encode())
            return
        text = " ".join(m["content"] for m in body.get("messages", []))
        if mode == "grader":
            answer = good(text, int(body.get("n") or 1))
            for c in answer["choices"]:
                c["message"]["content"] = grade(text)
            self._send(200, json.dumps(answer).encode())
            return
        if mode in ("ok", "no-models") or ("BAD" not in text and mode != "fail-all"):
            self._send(200, json.dumps(good(text, int(body.get("n") or 1), requested_logprobs(body))).encode())
            return
        self._send(*bad("fail" if mode == "fail-all" else mode, body, dict(self.headers)))


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.serve_forever()
