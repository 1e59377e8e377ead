"""Small statistics for validation, in numpy: two-sample KS statistic, Kendall's tau-b, latency
percentiles and each step's least time over repeated runs."""

from __future__ import annotations

import numpy as np


def ks_statistic(a, b) -> float:
    """Largest distance between the two empirical CDFs (two-sample Kolmogorov-Smirnov D)."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def kendall_tau(x, y) -> float:
    """Kendall's tau-b (ties in either ranking handled); nan for fewer than two points."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    if n < 2:
        return float("nan")
    i, j = np.triu_indices(n, k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    concordant_minus_discordant = float(np.sum(dx * dy))
    n0 = len(i)
    tx, ty = float(np.sum(dx == 0)), float(np.sum(dy == 0))
    denom = np.sqrt((n0 - tx) * (n0 - ty))
    return concordant_minus_discordant / denom if denom > 0 else float("nan")


def latency_stats(values) -> dict:
    v = np.asarray(values, float)
    if len(v) == 0:
        return {"mean": None, "p50": None, "p95": None}
    return {"mean": float(v.mean()), "p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95))}


def fastest_steps(rounds: list[list[float]]) -> list[float] | None:
    """Each step's least latency over the rounds, or None if the rounds walked different steps.

    Every round of a setting replays the same trace with the same policies, so
    a step does the same work in each; a slow spell of a shared machine slows
    the steps it overlaps and only ever adds time. A spell lasts seconds and
    hits different steps in different rounds, so the least time of each step
    over the rounds filters it where a whole round's mean could not (on the
    shared 2-core CPU machine the same setting's round means differed by up to
    1.8x while its dense work, which no policy changes, stayed put in the
    steps of the faster one).
    """
    if not rounds or len({len(r) for r in rounds}) != 1:
        return None
    return np.min(np.asarray(rounds, dtype=np.float64), axis=0).tolist()
