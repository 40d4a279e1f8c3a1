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


def _seed_content_means(values: np.ndarray, seeds: np.ndarray, contents: np.ndarray) -> np.ndarray:
    """Per round, the mean of ``values[seeds[r]][:, contents[r]]`` (``values`` shape (S, n))."""
    return np.array([values[s][:, c].mean() for s, c in zip(seeds, contents)])


def _two_level_index(n_seeds: int, n: int, rounds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_seeds, size=(rounds, n_seeds)), rng.integers(0, n, size=(rounds, n))


def _as_matrix(values) -> np.ndarray:
    m = np.asarray(values, dtype=float)
    m = m.reshape(1, -1) if m.ndim == 1 else m
    if m.ndim != 2 or m.shape[1] == 0:
        raise ValueError(f"expected a (seeds, contents) matrix, got shape {m.shape}")
    return m


def bootstrap_seeds_contents_mean(values, rounds: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of ``values`` (shape (S, n): one row per training seed, one column per content) with an interval
    that resamples seeds and contents together: each round draws S seeds and n contents with replacement
    (the same contents for every seed: they are the same traffic)."""
    v = _as_matrix(values)
    seeds, contents = _two_level_index(v.shape[0], v.shape[1], rounds, seed)
    means = _seed_content_means(v, seeds, contents)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"mean": float(v.mean()), "se": float(means.std(ddof=1)), "lo": float(lo), "hi": float(hi),
            "seed_means": [float(x) for x in v.mean(axis=1)]}


def bootstrap_seeds_contents_delta(treated, control, rounds: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Relative change (mean(treated) − mean(control)) / mean(control) with the interval of
    :func:`bootstrap_seeds_contents_mean`. ``treated``: (S, n); ``control``: (n,) or (1, n) when every seed
    shares the control (QSA), else (S, n) paired seed by seed. Contents are paired in every round.
    ``seed_deltas``: each seed's own relative change; ``seed_sd`` their standard deviation."""
    t, c = _as_matrix(treated), _as_matrix(control)
    if c.shape[1] != t.shape[1] or c.shape[0] not in (1, t.shape[0]):
        raise ValueError(f"control of shape {c.shape} does not pair with treated of shape {t.shape}")
    if c.mean() <= 0:
        raise ValueError("the control's mean must be positive for a relative change")
    seeds, contents = _two_level_index(t.shape[0], t.shape[1], rounds, seed)
    tm = _seed_content_means(t, seeds, contents)
    cm = np.array([c[0, idx].mean() for idx in contents]) if c.shape[0] == 1 else _seed_content_means(c, seeds, contents)
    deltas = (tm - cm) / np.where(cm > 0, cm, np.nan)
    deltas = deltas[np.isfinite(deltas)]
    lo, hi = np.quantile(deltas, [(1 - level) / 2, (1 + level) / 2])
    control_of_seed = (c if c.shape[0] > 1 else np.repeat(c, t.shape[0], axis=0)).mean(axis=1)
    per_seed = (t.mean(axis=1) - control_of_seed) / control_of_seed
    return {"delta": float((t.mean() - c.mean()) / c.mean()), "se": float(deltas.std(ddof=1)), "lo": float(lo),
            "hi": float(hi), "seed_deltas": [float(x) for x in per_seed],
            "seed_sd": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0}
