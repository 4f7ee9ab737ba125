"""Means and bootstrap intervals, for every rate Distillery reports (eval rates, review win rates).

Intervals are percentile bootstraps over groups (prompts, or review records): the samples of one
prompt are not independent, so they are resampled together. Seeded, so a report is reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

BOOTSTRAP_RESAMPLES = 2000


def with_interval(value: float, ci: list[float] | tuple[float, float] | None) -> str:
    """`0.454 [0.36, 0.55]`: how every rate with its interval is shown (tables, report.md, cards)."""
    return f"{value:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{value:.3f}"


def mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def bootstrap_ci(
    values: Sequence[float], groups: Sequence[str] | None = None, level: float = 0.95, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of `values`, resampling whole groups (prompts).

    Samples of one prompt are not independent: resampling prompts keeps the interval honest when
    `eval.samples` adds several answers per prompt. None when there is nothing to resample.
    """
    if not values:
        return None
    by_group: dict[str, list[float]] = {}
    for i, v in enumerate(values):
        by_group.setdefault(groups[i] if groups is not None else str(i), []).append(float(v))
    clusters = list(by_group.values())
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
