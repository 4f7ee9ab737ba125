"""Test infrastructure: the server processes the tests talk to, and a fault-injecting proxy.

The OpenAI-compatible server is llama.cpp's own `llama-server` (built once by scripts/llama_server.sh,
then cached) serving the same SmolLM2 GGUF the project embeds. The proxy sits in front of it to
produce the failures real servers produce under load (429, 5xx, slow answers) on demand. The review
tests use a real argilla-server, the publish tests the test Hub (tests/hub_server.py). All listen on
127.0.0.1 only and share `ServerProcess`: started until healthy, stopped by PID.
"""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cached_tool(script: str, what: str, timeout: int) -> str:
    """Run a scripts/ builder that prints the path of a cached tool on its last line (building it once)."""
    out = subprocess.run(["bash", str(ROOT / "scripts" / script)], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]


def llama_server_binary() -> str:
    """Path of the cached llama-server, building it on first use (~9 min on 2 cores)."""
    return _cached_tool("llama_server.sh", "building llama-server", 3600)


# What a start-up log most often means, checked in this order; the first match is the likely cause.
LIKELY_CAUSES: list[tuple[str, str]] = [
    (
        r"address already in use|errno 98",
        "the port was taken between choosing it and binding it; rerun the test",
    ),
    (
        r"modulenotfounderror|importerror|attributeerror|no module named|has no attribute",
        "a package in the server's environment is not the version its code expects: a helper "
        "virtualenv built from loose pins, or a lock (locks/*.txt) changed without a rebuild; remove "
        "the cached environment under $DISTILLERY_CACHE and rerun (it is rebuilt from its lock)",
    ),
    (
        r"error while loading shared libraries|illegal instruction|exec format error",
        "the cached binary was built for another machine; remove it under $DISTILLERY_CACHE and rerun",
    ),
    (
        r"failed to load model|unable to load model|no such file or directory",
        "a file the server loads at start-up is missing or unreadable (see the log line above)",
    ),
    (r"memoryerror|out of memory|cannot allocate", "the machine ran out of memory; run heavy jobs one at a time"),
]


def startup_failure(name: str, log: Path, detail: str, returncode: int | None = None) -> str:
    """The one message for a test server that did not start: which one, its log's tail, the likely cause.

    A bare "exited with 1; see LOG" sent people into CI logs for what the server had already written.
    """
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    tail = [line for line in lines if line.strip()][-15:]
    text = "\n".join(lines).lower()
    cause = next((why for pattern, why in LIKELY_CAUSES if re.search(pattern, text)), None)
    if cause is None and returncode is not None and returncode < 0:
        cause = f"it was killed by signal {-returncode} (out of memory, or a timeout outside the test)"
    shown = "\n".join(f"    {line}" for line in tail) if tail else "    (the log is empty)"
    return (
        f"test server {name} {detail}; last lines of {log}:\n{shown}\n"
        f"  likely cause: {cause or 'not recognised from the log; read it whole'}"
    )


class ServerProcess:
    """A server subprocess on 127.0.0.1 with its log file: started until healthy, stopped by PID."""

    def _launch(self, cmd: list[str], log: Path, health_url: str, name: str, timeout_s: int, poll_s: float) -> None:
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout_s
        while True:
            if self.proc.poll() is not None:
                self.log.close()
                code = self.proc.returncode
                raise RuntimeError(startup_failure(name, log, f"exited with {code} at start-up", code))
            try:
                if httpx.get(health_url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(startup_failure(name, log, f"did not answer {health_url} within {timeout_s} s"))
            time.sleep(poll_s)

    def stop(self, timeout_s: float = 15) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class LlamaServer(ServerProcess):
    """A llama-server process on 127.0.0.1, stopped by PID."""

    def __init__(self, gguf: Path, log_dir: Path, slots: int = 2) -> None:
        self.port = free_port()
        log_dir.mkdir(parents=True, exist_ok=True)
        cmd = [llama_server_binary(), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["-c", str(2048 * slots), "-np", str(slots), "-t", "2", "--no-webui"]
        cmd += ["--alias", "smollm2"]  # the model name recipes send (model.path), listed by /v1/models
        self._launch(
            cmd,
            log_dir / f"llama-server-{self.port}.log",
            f"http://127.0.0.1:{self.port}/health",
            "llama-server",
            timeout_s=120,
            poll_s=0.3,
        )
        self.base_url = f"http://127.0.0.1:{self.port}/v1"


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 that fails POSTs as `plan(n)` says, else forwards them upstream.

    `plan(n)` gets the 1-based count of POSTs so far and returns None (forward), an HTTP status to
    answer with, or ("sleep", seconds) to answer late. Every request's headers are recorded.
    """

    def __init__(self, upstream: str, plan: Callable[[int], object]) -> None:
        self.upstream = upstream.rstrip("/")
        self.plan = plan
        self.posts = 0
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _forward(self, method: str, body: bytes | None) -> None:
                r = httpx.request(
                    method,
                    proxy.upstream + self.path.removeprefix("/v1"),
                    content=body,
                    headers={"content-type": "application/json"},
                    timeout=300,
                )
                self._send(r.status_code, r.content)

            def _send(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                proxy.headers.append(dict(self.headers))
                self._forward("GET", None)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with proxy.lock:
                    proxy.posts += 1
                    n = proxy.posts
                    proxy.headers.append(dict(self.headers))
                action = proxy.plan(n)
                if isinstance(action, tuple):
                    time.sleep(action[1])
                elif isinstance(action, int):
                    self._send(action, b'{"error": {"message": "injected failure"}}', {"Retry-After": "0"})
                    return
                try:
                    self._forward("POST", body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def argilla_server_python() -> str:
    """The python of the cached argilla-server virtualenv, creating it on first use (~1 min)."""
    return _cached_tool("argilla_server_venv.sh", "creating the argilla-server virtualenv", 1800)


class ArgillaServer(ServerProcess):
    """A real argilla-server 2.8 process on 127.0.0.1 (SQLite, the SQLite search plugin, fakeredis).

    Started by tests/argilla_server_main.py in the server's own virtualenv; stopped by PID.
    """

    def __init__(self, home: Path, api_key: str) -> None:
        self.port = free_port()
        self.api_key = api_key
        self.url = f"http://127.0.0.1:{self.port}"
        home.mkdir(parents=True, exist_ok=True)
        main = str(ROOT / "tests" / "argilla_server_main.py")
        cmd = [argilla_server_python(), main, "--home", str(home), "--port", str(self.port), "--api-key", api_key]
        self._launch(cmd, home / "argilla-server.log", f"{self.url}/api/v1/status", "argilla-server", 180, 0.5)


class HubServer(ServerProcess):
    """The test Hub (tests/hub_server.py) as a uvicorn process on 127.0.0.1, stopped by PID."""

    def __init__(self, log_dir: Path, token: str, user: str = "tester") -> None:
        import sys

        self.port = free_port()
        self.token, self.user = token, user
        self.url = f"http://127.0.0.1:{self.port}"
        log_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(ROOT / "tests" / "hub_server.py"), str(self.port), token, user]
        self._launch(cmd, log_dir / "hub-server.log", f"{self.url}/_test/log", "the test hub", 60, 0.2)


class MisbehavingServer(ServerProcess):
    """tests/misbehaving_server.py as a process: `url(mode)` is the base_url of one misbehaviour."""

    def __init__(self, log_dir: Path) -> None:
        import sys

        self.port = free_port()
        log_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(ROOT / "tests" / "misbehaving_server.py"), str(self.port)]
        health = f"http://127.0.0.1:{self.port}/ok/v1/models"
        self._launch(cmd, log_dir / "misbehaving-server.log", health, "the misbehaving server", 30, 0.1)

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/v1"
