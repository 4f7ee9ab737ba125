"""Progress when the output is a log, not a terminal: plain lines with counts, rates and elapsed time
every $DISTILLERY_PROGRESS_SECONDS and at the end (rich's live bar would print nothing until exit)."""

from __future__ import annotations

import io
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.progress import Progress

from synth.curate.stage import run_curate
from synth.engines.base import Engine, ProgressFn, SamplingParams
from synth.errors import UserError
from synth.generate import run_generate
from synth.progress import ENV, PlainProgress, progress
from synth.recipe import load_recipe
from synth.records import Completion, Messages
from tests.conftest import write_jsonl


class TimedLines(io.StringIO):
    """A log file (not a terminal) that records when each line was written."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []
        self.lock = threading.Lock()

    def write(self, s: str) -> int:
        with self.lock:
            self.times += [time.monotonic()] * s.count("\n")
            return super().write(s)

    def lines(self) -> list[str]:
        return self.getvalue().splitlines()


def log_console(file: io.StringIO | None = None) -> Console:
    console = Console(file=file or io.StringIO(), width=80)
    assert not console.is_terminal
    return console


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_carry_counts_rates_elapsed_and_eta() -> None:
    """The line's numbers, against a clock the test moves (interval long enough never to fire)."""
    clock, out = FakeClock(), io.StringIO()
    with PlainProgress(log_console(out), "rows", interval=3600, clock=clock) as bar:
        task = bar.add_task("generating", total=400, tokens=0)
        clock.now += 20
        bar.update(task, advance=40, tokens=600)
        bar.report()
        assert out.getvalue().splitlines()[-1] == (
            "generating: 40/400 rows (10%), 2.0 rows/s, 30.0 tok/s, elapsed 0:00:20, ETA 0:03:00"
        )
        clock.now += 80
        bar.update(task, advance=300, tokens=2400, total=340)  # rows rejected up front leave the total
    assert (
        out.getvalue().splitlines()[-1] == "generating: done, 340/340 rows (100%), 3.4 rows/s, 24.0 tok/s, in 0:01:40"
    )
    assert len(out.getvalue().splitlines()) == 2


def test_a_rows_field_is_a_rate_of_its_own_and_a_stop_says_so() -> None:
    clock, out = FakeClock(), io.StringIO()
    with pytest.raises(KeyboardInterrupt), PlainProgress(log_console(out), "shards", 3600, clock) as bar:
        task = bar.add_task("curating", total=10, rows=0)
        clock.now += 4
        bar.update(task, advance=2, rows=1000)
        raise KeyboardInterrupt
    assert out.getvalue().splitlines() == [
        "curating: stopped, 2/10 shards (20%), 0.5 shards/s, 250.0 rows/s, in 0:00:04"
    ]


def test_lines_come_at_the_interval_even_while_counts_stand_still(monkeypatch: pytest.MonkeyPatch) -> None:
    """A timer prints them: one long batch (no update for a while) still shows the run is alive."""
    monkeypatch.setenv(ENV, "0.2")
    out = TimedLines()
    bar = progress(log_console(out), unit="rows")
    assert isinstance(bar, PlainProgress)
    with bar:
        start = time.monotonic()
        task = bar.add_task("generating", total=8, tokens=0)
        bar.update(task, advance=2, tokens=30)
        time.sleep(1.1)  # no update in this time
        during = len(out.lines())
    assert 2 <= during <= 5, out.getvalue()  # about every 0.2 s, never more often (a loaded CPU: fewer)
    first, *rest = out.times[:during]
    assert first - start >= 0.19
    assert all(b - a >= 0.19 for a, b in zip(out.times, rest, strict=False))
    for line in out.lines()[:during]:
        assert re.fullmatch(
            r"generating: 2/8 rows \(25%\), [\d.,]+ rows/s, [\d.,]+ tok/s, elapsed 0:00:0\d, ETA .*", line
        )
    assert out.lines()[-1].startswith("generating: done, 2/8 rows (25%), ")
    assert len(out.lines()) == during + 1


def test_a_terminal_gets_the_live_bar() -> None:
    assert isinstance(progress(Console(file=io.StringIO(), force_terminal=True)), Progress)


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf", "30s"])
def test_a_bad_interval_is_a_user_error_naming_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(ENV, value)
    with pytest.raises(UserError) as err:
        progress(log_console())
    assert str(err.value.args[0]) == f"{ENV}={value!r} is not a number of seconds"


class SlowEngine(Engine):
    """Answers each prompt with its text, taking `seconds` per call (a batch the counts cannot see into)."""

    name = "slow"

    def __init__(self, seconds: float) -> None:
        super().__init__("slow-model")
        self.seconds = seconds

    def generate(
        self, prompts: list[Messages], params: SamplingParams, on_progress: ProgressFn | None = None
    ) -> list[list[Completion]]:
        time.sleep(self.seconds)
        out = [[Completion("an answer", "stop", 4, 3)] * params.n for _ in prompts]
        if on_progress:
            on_progress(len(prompts) * params.n, 3 * len(prompts) * params.n)
        return out


def _recipe(tmp_path: Path, prompts: int) -> Any:
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Question number {i}?"} for i in range(prompts)])
    body = {
        "name": "progress",
        "prompts": {"path": "p.jsonl"},
        "generate": {"n": 2, "prompts_per_shard": 2},
        "curate": {"checks": [{"type": "empty"}], "select": {"strategy": "all"}},
    }
    (tmp_path / "r.yaml").write_text(json.dumps(body), encoding="utf-8")
    return load_recipe(tmp_path / "r.yaml")


def test_generate_and_curate_write_progress_lines_to_a_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "0.15")
    recipe = _recipe(tmp_path, prompts=6)
    out = io.StringIO()
    run_generate(recipe, tmp_path / "run", tmp_path, console=log_console(out), engine=SlowEngine(0.4))
    lines = [ln for ln in out.getvalue().splitlines() if ln.startswith("generating: ")]
    assert len(lines) >= 3, out.getvalue()  # 3 shards of 0.4 s each, a line every 0.15 s
    assert re.fullmatch(
        r"generating: \d+/12 rows \(\d+%\), [\d.,]+ rows/s, [\d.,]+ tok/s, elapsed 0:00:0\d.*", lines[0]
    )
    assert re.fullmatch(r"generating: done, 12/12 rows \(100%\), [\d.,]+ rows/s, [\d.,]+ tok/s, in 0:00:0\d", lines[-1])
    out = io.StringIO()
    run_curate(recipe, tmp_path / "run", tmp_path, console=log_console(out))
    last = out.getvalue().splitlines()[-1]
    assert re.fullmatch(r"curating: done, 3/3 shards \(100%\), [\d.,]+ shards/s, [\d.,]+ rows/s, in 0:00:0\d", last)
