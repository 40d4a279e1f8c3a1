"""Pareto fronts, hypervolume and bootstrap intervals: the numbers the reproduction report is built on.

Every objective is maximised. Points are ``(n, 2)`` arrays of (r_ctr, r_exp) or (true CTR, true
expansion); the reference point must be dominated by (below on both axes) every point that counts.
"""
from __future__ import annotations

import numpy as np


def pareto_front(points) -> np.ndarray:
    """The non-dominated points of ``points`` (shape ``(n, 2)``), sorted by the first objective.

    A point is dominated when another is at least as good on both objectives and better on one.
    Duplicates of a front point are kept once.
    """
    pts = np.unique(np.asarray(points, dtype=float).reshape(-1, 2), axis=0)
    if len(pts) == 0:
        return pts
    # Sort by x descending (then y descending): a point is on the front iff its y beats every y before it.
    order = np.lexsort((-pts[:, 1], -pts[:, 0]))
    front, best_y = [], -np.inf
    for x, y in pts[order]:
        if y > best_y:
            front.append((x, y))
            best_y = y
    return np.array(front[::-1])


def hypervolume_2d(points, reference) -> float:
    """Area dominated by ``points`` and bounded below by ``reference`` (a length-2 point).

    Points not strictly above the reference on both axes add nothing. Shapes: ``points`` (n, 2).
    """
    ref = np.asarray(reference, dtype=float)
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    pts = pts[(pts[:, 0] > ref[0]) & (pts[:, 1] > ref[1])]
    if len(pts) == 0:
        return 0.0
    front = pareto_front(pts)           # x ascending, y descending
    area, prev_x = 0.0, ref[0]
    for x, y in front:
        area += (x - prev_x) * (y - ref[1])
        prev_x = x
    return float(area)


def _resample_index(n: int, rounds: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(rounds, n))


def bootstrap_mean(values, rounds: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of ``values`` (shape (n,)), its bootstrap standard error and percentile interval."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        raise ValueError("bootstrap of an empty sample")
    means = v[_resample_index(len(v), rounds, seed)].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"mean": float(v.mean()), "se": float(means.std(ddof=1)), "lo": float(lo), "hi": float(hi)}


def bootstrap_relative_delta(treated, control, rounds: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """(mean(treated) − mean(control)) / mean(control) with a paired percentile interval.

    ``treated[i]`` and ``control[i]`` belong to the same unit (content), so units are resampled
    together — the simulated A/B compares two policies on the same traffic.
    """
    t, c = np.asarray(treated, dtype=float), np.asarray(control, dtype=float)
    if t.shape != c.shape or t.ndim != 1 or len(t) == 0:
        raise ValueError(f"paired samples must be equal-length vectors, got {t.shape} and {c.shape}")
    if c.mean() <= 0:
        raise ValueError("the control's mean must be positive for a relative change")
    idx = _resample_index(len(t), rounds, seed)
    ct = c[idx].mean(axis=1)
    deltas = (t[idx].mean(axis=1) - ct) / np.where(ct > 0, ct, np.nan)
    deltas = deltas[np.isfinite(deltas)]
    lo, hi = np.quantile(deltas, [(1 - level) / 2, (1 + level) / 2])
    return {"delta": float((t.mean() - c.mean()) / c.mean()), "se": float(deltas.std(ddof=1)),
            "lo": float(lo), "hi": float(hi)}
