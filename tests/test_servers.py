"""The test servers' start-up failures name the server, show its log's last lines and a likely cause."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.servers import ServerProcess, free_port

# The end of argilla-server's log on 2026-12-04, when a fresh install paired fakeredis 2.40 with redis 8.
FAKEREDIS_CRASH = """
print("INFO  [alembic.runtime.migration] Context impl SQLiteImpl.")
import sys
sys.stderr.write('''Traceback (most recent call last):
  File "argilla_server/jobs/queues.py", line 25, in <module>
    REDIS_CONNECTION = redis.from_url(settings.redis_url)
AttributeError: 'method_descriptor' object has no attribute '__closure__'
''')
sys.exit(1)
"""


class _Server(ServerProcess):
    def __init__(self, code: str, log_dir: Path, timeout_s: int = 30) -> None:
        port = free_port()
        cmd = [sys.executable, "-c", code]
        self._launch(cmd, log_dir / "server.log", f"http://127.0.0.1:{port}/health", "fake-argilla", timeout_s, 0.1)


def test_a_server_that_exits_at_start_up_says_which_its_log_tail_and_the_likely_cause(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as failure:
        _Server(FAKEREDIS_CRASH, tmp_path)
    message = str(failure.value)
    assert message.startswith("test server fake-argilla exited with 1 at start-up")
    assert "AttributeError: 'method_descriptor' object has no attribute '__closure__'" in message
    assert "Context impl SQLiteImpl" in message  # earlier lines of the tail too
    assert str(tmp_path / "server.log") in message
    assert "likely cause: a package in the server's environment is not the version" in message


def test_a_server_that_never_answers_is_stopped_and_says_so(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as failure:
        _Server("import time; print('listening nowhere', flush=True); time.sleep(60)", tmp_path, timeout_s=8)
    message = str(failure.value)
    assert "did not answer http://127.0.0.1:" in message and "within 8 s" in message
    assert "listening nowhere" in message
    assert "likely cause: not recognised from the log" in message


def test_a_server_killed_by_a_signal_says_so(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as failure:
        _Server("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", tmp_path)
    message = str(failure.value)
    assert "exited with -9" in message and "(the log is empty)" in message
    assert "likely cause: it was killed by signal 9" in message
