"""Progress that reads well in a terminal and in a log file (generate, curate, eval's answering).

On a terminal it is rich's live bar. Anywhere else (`make demo > log`, CI, nohup) a live display shows
nothing until the work ends: a 17-minute demo was 17 minutes of silence in its log. There, the same
object prints one plain line every `DISTILLERY_PROGRESS_SECONDS` (30 by default) with done/total,
rates and elapsed time, and a last line when the work ends, from a timer: a line appears on time even
while one long batch holds the counts still.

Both kinds have the part of `rich.progress.Progress` the stages use: `add_task(description, total,
**fields)`, `update(task, advance=, total=, **fields)` and `tasks[task]` (`.total`, `.completed`,
`.fields`). A `tokens` field is shown as tok/s, a `rows` field as rows/s.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from synth.errors import UserError

ENV = "DISTILLERY_PROGRESS_SECONDS"
DEFAULT_SECONDS = 30.0


def interval_seconds() -> float:
    """Seconds between plain progress lines: $DISTILLERY_PROGRESS_SECONDS, a positive number, or 30."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise UserError(
            f"{ENV}={raw!r} is not a number of seconds",
            "set it to the seconds between progress lines in a log (a positive number, e.g. 30), or unset it",
        )
    return value


def rates(unit: str, completed: float, elapsed: float, fields: dict[str, Any]) -> list[str]:
    """Per-second rates of the unit counted, and of the `rows` and `tokens` fields where a task has them."""
    counts = {unit: completed}
    if "rows" in fields:
        counts.setdefault("rows", fields["rows"])
    if "tokens" in fields:
        counts["tok"] = fields["tokens"]
    return [f"{n / elapsed:,.1f} {name}/s" if elapsed > 0 else f"- {name}/s" for name, n in counts.items()]


def clock_time(seconds: float) -> str:
    """Seconds as H:MM:SS, as rich's elapsed column shows them."""
    s = max(int(seconds), 0)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _count(n: float) -> str:
    return f"{int(n):,}" if float(n).is_integer() else f"{n:,.1f}"


class Rates(ProgressColumn):
    """The rates of `rates()` in the live bar."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        return Text(", ".join(rates(self.unit, task.completed, task.elapsed or 0, task.fields)), style="cyan")


@dataclass
class PlainTask:
    """One counted piece of work, with the attributes of rich's `Task` that the stages read."""

    description: str
    total: float | None
    started: float
    completed: float = 0
    fields: dict[str, Any] = field(default_factory=dict)


class PlainProgress:
    """Progress as plain lines: one per task every `interval` seconds, and a last one at the end."""

    def __init__(
        self, console: Console, unit: str, interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.console, self.unit, self.interval, self.clock = console, unit, interval, clock
        self.tasks: list[PlainTask] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None

    def __enter__(self) -> PlainProgress:
        self._timer = threading.Thread(target=self._every_interval, name="progress-lines", daemon=True)
        self._timer.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.join()
        self.report(final="stopped" if exc_type is not None else "done")

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        with self._lock:
            self.tasks.append(PlainTask(description, total, self.clock(), fields=dict(fields)))
            return len(self.tasks) - 1

    def update(
        self,
        task_id: int,
        *,
        advance: float | None = None,
        total: float | None = None,
        completed: float | None = None,
        **fields: Any,
    ) -> None:
        with self._lock:
            task = self.tasks[task_id]
            if total is not None:
                task.total = total
            if completed is not None:
                task.completed = completed
            if advance is not None:
                task.completed += advance
            task.fields.update(fields)

    def line(self, task: PlainTask, final: str | None = None) -> str:
        """One task's state: `generating: 40/400 rows (10%), 2.0 rows/s, 31.5 tok/s, elapsed 0:00:20, ETA 0:03:00`."""
        elapsed = self.clock() - task.started
        done = f"{_count(task.completed)}/{_count(task.total)}" if task.total is not None else _count(task.completed)
        share = f" ({100 * task.completed / task.total:.0f}%)" if task.total else ""
        parts = [f"{done} {self.unit}{share}", *rates(self.unit, task.completed, elapsed, task.fields)]
        if final:
            return f"{task.description}: {final}, " + ", ".join([*parts, f"in {clock_time(elapsed)}"])
        parts.append(f"elapsed {clock_time(elapsed)}")
        if task.total and 0 < task.completed < task.total:
            parts.append(f"ETA {clock_time(elapsed / task.completed * (task.total - task.completed))}")
        return f"{task.description}: " + ", ".join(parts)

    def report(self, final: str | None = None) -> None:
        """Print every task's line now (what the timer does each interval, and `__exit__` once)."""
        with self._lock:
            lines = [self.line(t, final) for t in self.tasks]
        for text in lines:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def _every_interval(self) -> None:
        while not self._stop.wait(self.interval):
            self.report()


def progress(console: Console, unit: str = "rows", eta: bool = True) -> Progress | PlainProgress:
    """Rich's live bar on a terminal (or in Jupyter), plain lines anywhere else; see the module docstring."""
    if console.is_terminal or console.is_jupyter:
        columns: list[str | ProgressColumn] = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn(f"{{task.completed}}/{{task.total}} {unit}"),
            Rates(unit),
            TimeElapsedColumn(),
        ]
        if eta:
            columns += [TextColumn("ETA"), TimeRemainingColumn()]
        return Progress(*columns, console=console, transient=False)
    return PlainProgress(console, unit, interval_seconds())
