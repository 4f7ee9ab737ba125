"""The one way a stage's end-of-run summary becomes a table on the terminal."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence

from rich.table import Table

SECTION = None
"""A row of None draws a line between sections (totals under per-check rows, say)."""


def summary_table(
    title: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[object] | None],
    caption: str | None = None,
    left: Collection[str] = (),
    style: Callable[[Sequence[object]], str | None] | None = None,
    no_wrap: bool = False,
) -> Table:
    """A rich table: the first column (names) and those in `left` left-aligned, numbers right-aligned.

    Cells are printed with `str`, so callers format numbers once, where they know the unit; `style`
    picks a row's style (e.g. red for a regressed model); `no_wrap` keeps intervals on one line.
    """
    t = Table(title=title, caption=caption)
    for i, name in enumerate(columns):
        t.add_column(name, justify="left" if i == 0 or name in left else "right", no_wrap=no_wrap)
    for row in rows:
        if row is SECTION:
            t.add_section()
        else:
            t.add_row(*(str(cell) for cell in row), style=style(row) if style else None)
    return t


def key_values(title: str, pairs: Iterable[tuple[str, object] | None], caption: str | None = None) -> Table:
    """A two-column what/value table, the shape most stages end with."""
    return summary_table(title, ("what", "value"), pairs, caption)
