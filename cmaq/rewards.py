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

The combined reward is the geometric mean r = r_exp^α · r_ctr^(1−α) (CMAQ), or the arithmetic mean
α·r_exp + (1−α)·r_ctr (the w/o CDS ablation and MORL); larger α weighs expansion more.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

NORMALISATIONS = ("sigmoid", "minmax")


def normalise_ctr(raw: Sequence[float], method: str = "sigmoid", groups: Sequence | None = None) -> np.ndarray:
    """r_ctr in [0, 1]. ``groups`` (one key per score, e.g. the content id) is needed for minmax."""
    raw = np.asarray(raw, dtype=np.float64)
    if method == "sigmoid":
        return 1.0 / (1.0 + np.exp(-raw))
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
