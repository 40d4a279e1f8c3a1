"""Reward math: normalising the CTR reward and combining the two rewards (no models here; the scorer that
loads the reward models is ``training.reward_models.scorer``).

r_exp(x, y) = p("1") / (p("0") + p("1")) at the expansion RM's answer position: a probability.
r_ctr(x, y) is the CTR RM's scalar: trained with a pairwise loss, so only differences between queries
of the same content mean anything, and its offset per content is arbitrary. The consistency
criterion needs both in [0, 1], so r_ctr is normalised:

- ``sigmoid`` (default): σ(r_ctr). Comparable across contents and across iterations of the
  alignment loop, which is what fixed thresholds τ1/τ2 need; with the BPR loss, σ(r(y+) − r(y−)) is
  the modelled probability that y+ beats y−, so σ(r) is the query's chance against a query scored 0.
- ``minmax``: (r − min) / (max − min) over each content's candidates. Uses the whole [0, 1] range per
  content whatever the offset, but says nothing across contents, and a content whose candidates all
  score the same gets 0.5 for each.
- ``calibrated``: a non-decreasing map raw score → click probability (:class:`Calibration`, isotonic
  regression fitted on held-out logged CTR, weighted by impressions). An estimate of CTR itself, so
  comparable across contents; its expected calibration error is measured on the test split.

The combined reward is the geometric mean r = r_exp^α · r_ctr^(1−α) (CMAQ), or the arithmetic mean
α·r_exp + (1−α)·r_ctr (the w/o CDS ablation and MORL); larger α weighs expansion more.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

NORMALISATIONS = ("sigmoid", "minmax", "calibrated")


@dataclass(frozen=True)
class Calibration:
    """A non-decreasing piecewise-linear map from the CTR RM's raw score to a click probability:
    ``knots_x`` increasing, ``knots_y`` non-decreasing, flat beyond the ends."""

    knots_x: tuple[float, ...]
    knots_y: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.knots_x) != len(self.knots_y) or not self.knots_x:
            raise ValueError("a calibration needs as many knots_y as knots_x, and at least one")

    def apply(self, raw) -> np.ndarray:
        return np.interp(np.asarray(raw, dtype=np.float64), self.knots_x, self.knots_y)

    def to_dict(self) -> dict:
        return {"knots_x": list(self.knots_x), "knots_y": list(self.knots_y)}

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        return cls(tuple(float(x) for x in d["knots_x"]), tuple(float(y) for y in d["knots_y"]))


def fit_isotonic(scores, targets, weights) -> Calibration:
    """Weighted isotonic regression (pool adjacent violators) of ``targets`` on ``scores``: the
    non-decreasing map minimising the weighted squared error. Each pooled block becomes two knots
    (its lowest and highest score), so scores between blocks interpolate."""
    x, y, w = (np.asarray(a, dtype=np.float64) for a in (scores, targets, weights))
    if not (len(x) == len(y) == len(w)) or not len(x):
        raise ValueError(f"need as many scores, targets and weights, and at least one: {len(x)}, {len(y)}, {len(w)}")
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
    # Equal scores are one point (their weighted mean), so the fit does not depend on their order.
    xs, inverse = np.unique(x, return_inverse=True)
    ws = np.bincount(inverse, weights=w)
    ys = np.bincount(inverse, weights=w * y) / np.where(ws > 0, ws, 1.0)
    means, mass, lo, hi = [], [], [], []
    for xi, yi, wi in zip(xs, ys, ws):
        means.append(yi)
        mass.append(wi)
        lo.append(xi)
        hi.append(xi)
        while len(means) > 1 and means[-2] >= means[-1]:
            m2, w2, h2 = means.pop(), mass.pop(), hi.pop()
            lo.pop()
            total = mass[-1] + w2
            means[-1] = (means[-1] * mass[-1] + m2 * w2) / total if total > 0 else means[-1]
            mass[-1], hi[-1] = total, h2
    knots_x, knots_y = [], []
    for m, a, b in zip(means, lo, hi):
        for k in ((a,) if a == b else (a, b)):
            if knots_x and k <= knots_x[-1]:
                continue  # a block starting where the last ended: keep the first knot
            knots_x.append(float(k))
            knots_y.append(float(m))
    return Calibration(tuple(knots_x), tuple(knots_y))


def expected_calibration_error(predicted, clicks, impressions, bins: int = 10) -> float:
    """Impression-weighted expected calibration error of predicted click probabilities against logged
    clicks: rows sorted by prediction into ``bins`` bins of about equal impressions (rows with the same
    prediction always share a bin); the weighted mean over bins of |clicks / impressions − mean
    prediction|."""
    p, c, n = (np.asarray(a, dtype=np.float64) for a in (predicted, clicks, impressions))
    if not (len(p) == len(c) == len(n)) or not len(p) or n.sum() <= 0:
        raise ValueError("need as many predictions, clicks and impressions, with some impressions")
    p, inverse = np.unique(p, return_inverse=True)   # sorted; one row per distinct prediction
    c, n = np.bincount(inverse, weights=c), np.bincount(inverse, weights=n)
    edges = np.searchsorted(np.cumsum(n) / n.sum(), np.arange(1, bins) / bins, side="left")
    err = 0.0
    for part in np.split(np.arange(len(p)), np.unique(edges)):
        if not len(part) or n[part].sum() == 0:
            continue
        imp = n[part].sum()
        err += imp / n.sum() * abs(c[part].sum() / imp - np.average(p[part], weights=n[part]))
    return float(err)


def normalise_ctr(raw: Sequence[float], method: str = "sigmoid", groups: Sequence | None = None,
                  calibration: Calibration | None = None) -> np.ndarray:
    """r_ctr in [0, 1]. ``groups`` (one key per score, e.g. the content id) is needed for minmax,
    ``calibration`` for calibrated."""
    raw = np.asarray(raw, dtype=np.float64)
    if method == "sigmoid":
        return 1.0 / (1.0 + np.exp(-raw))
    if method == "calibrated":
        if calibration is None:
            raise ValueError("calibrated normalisation needs the CTR RM's calibration (train it with "
                             "rm_ctr.normalisation = \"calibrated\")")
        return np.clip(calibration.apply(raw), 0.0, 1.0)
    if method != "minmax":
        raise ValueError(f"unknown CTR normalisation {method!r}: use one of {NORMALISATIONS}")
    if groups is None:
        raise ValueError("minmax normalisation needs the content of every score (groups)")
    by_content = pd.Series(raw).groupby(np.asarray(groups))
    lo = by_content.transform("min").to_numpy()
    span = by_content.transform("max").to_numpy() - lo
    flat = span < 1e-12
    return np.where(flat, 0.5, (raw - lo) / np.where(flat, 1.0, span))


def combine(r_exp, r_ctr, alpha: float, mean: str = "geometric") -> np.ndarray:
    """The combined reward of two [0, 1] rewards; ``alpha`` weighs expansion."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    r_exp = np.clip(np.asarray(r_exp, dtype=np.float64), 0.0, 1.0)
    r_ctr = np.clip(np.asarray(r_ctr, dtype=np.float64), 0.0, 1.0)
    if mean == "geometric":
        return np.power(r_exp, alpha) * np.power(r_ctr, 1.0 - alpha)
    if mean == "arithmetic":
        return alpha * r_exp + (1.0 - alpha) * r_ctr
    raise ValueError(f"unknown mean {mean!r}: use 'geometric' or 'arithmetic'")
