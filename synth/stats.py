"""Means and bootstrap intervals, for every rate Distillery reports (eval rates, review win rates).

Intervals are percentile bootstraps over groups (prompts, or review records): the samples of one
prompt are not independent, so they are resampled together. Seeded, so a report is reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

BOOTSTRAP_RESAMPLES = 2000
MIN_GROUPS = 2
"""An interval needs at least this many prompts (or training seeds) to resample; below it, None."""


def with_interval(value: float, ci: list[float] | tuple[float, float] | None) -> str:
    """`0.454 [0.36, 0.55]`: how every rate with its interval is shown (tables, report.md, cards).

    `0.454 [n/a]` without one: a bare number would read as exact, and the reader should see that
    there was nothing to resample (one prompt, one seed) rather than guess.
    """
    return f"{value:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{value:.3f} [n/a]"


def mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def bootstrap_ci(
    values: Sequence[float], groups: Sequence[str] | None = None, level: float = 0.95, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of `values`, resampling whole groups (prompts).

    Samples of one prompt are not independent: resampling prompts keeps the interval honest when
    `eval.samples` adds several answers per prompt. None when there is nothing to resample: no value,
    or one group only (resampling one prompt gives it back every time, a zero-width "interval" that
    says nothing about the next prompt).
    """
    if not values:
        return None
    by_group: dict[str, list[float]] = {}
    for i, v in enumerate(values):
        by_group.setdefault(groups[i] if groups is not None else str(i), []).append(float(v))
    clusters = list(by_group.values())
    if len(clusters) < MIN_GROUPS:
        return None
    sums = [sum(c) for c in clusters]
    sizes = [len(c) for c in clusters]
    rng = random.Random(seed)
    k = len(clusters)
    stats = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        picks = [rng.randrange(k) for _ in range(k)]
        stats.append(sum(sums[p] for p in picks) / sum(sizes[p] for p in picks))
    stats.sort()
    lo = stats[int((1 - level) / 2 * (len(stats) - 1))]
    hi = stats[int((1 + level) / 2 * (len(stats) - 1))]
    return lo, hi


Table = Sequence[Sequence[float | None]]
"""table[s][p]: one training seed's value on one prompt (None where that prompt has none)."""


def seed_mean(table: Table, prompts: Sequence[int] | None = None) -> float | None:
    """Mean over seeds of each seed's mean over `prompts` (all by default), skipping missing values."""
    means = []
    for row in table:
        picked = [row[p] for p in (range(len(row)) if prompts is None else prompts)]
        vals = [v for v in picked if v is not None]
        if vals:
            means.append(sum(vals) / len(vals))
    return mean(means)


def hierarchical_ci(
    tables: Sequence[Table], signs: Sequence[float] = (1.0,), level: float = 0.95, seed: int = 0
) -> tuple[float, float] | None:
    """Interval of Σ sign·seed_mean(table) resampling training seeds within each table, then prompts.

    One table is an arm's mean; two with signs (1, −1) are a paired difference of arms: prompts are
    resampled once for both (they answered the same prompts), seeds separately (they are separate
    training runs). With one seed per arm this is the usual bootstrap over prompts; with several, the
    interval also holds the run-to-run spread that one checkpoint per arm cannot show.
    """
    if not tables or any(not t for t in tables):
        return None
    if len(signs) != len(tables):
        raise ValueError(f"one sign per table: {len(signs)} signs for {len(tables)} tables")
    n_prompts = len(tables[0][0])
    if n_prompts == 0 or any(len(row) != n_prompts for t in tables for row in t):
        return None
    if not resamplable(tables):
        return None
    rng = random.Random(seed)
    stats = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        prompts = [rng.randrange(n_prompts) for _ in range(n_prompts)]
        total = 0.0
        for table, sign in zip(tables, signs, strict=True):
            seeds = [table[rng.randrange(len(table))] for _ in range(len(table))]
            value = seed_mean(seeds, prompts)
            if value is None:
                break
            total += sign * value
        else:
            stats.append(total)
    if len(stats) < 0.9 * BOOTSTRAP_RESAMPLES:  # too many draws with no value: the interval would lie
        return None
    stats.sort()
    return stats[int((1 - level) / 2 * (len(stats) - 1))], stats[int((1 + level) / 2 * (len(stats) - 1))]


def resamplable(tables: Sequence[Table]) -> bool:
    """Whether an interval over `tables` can say anything: at least MIN_GROUPS prompts with a value in
    every table, or a table with MIN_GROUPS training seeds. With one prompt and one seed every
    resample is the same number, and [x, x] would pass for certainty."""
    shared = sum(all(any(row[p] is not None for row in t) for t in tables) for p in range(len(tables[0][0])))
    return shared >= MIN_GROUPS or any(len(t) >= MIN_GROUPS for t in tables)
