"""Reward math and the batch scorer of the two reward models.

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

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

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
    import pandas as pd

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


@dataclass
class Scores:
    """One entry per (content, query) scored, in input order."""

    r_exp: np.ndarray      # probability of "1", in [0, 1]
    r_ctr_raw: np.ndarray  # the CTR RM's scalar
    r_ctr: np.ndarray      # normalised into [0, 1]


class RewardScorer:
    """Both reward models, loaded once (base + adapter each), scoring batches without gradients:
    bf16 on a GPU, fp32 on CPU. Used by the alignment loop, the evaluation and `cmaq score`.

    >>> scorer = RewardScorer("runs/rm-exp", "runs/rm-ctr")          # doctest: +SKIP
    >>> scorer.score(items, queries).r_exp                            # doctest: +SKIP
    """

    def __init__(self, exp_dir: str | None, ctr_dir: str | None, device: str | None = None,
                 batch_size: int = 32, normalisation: str = "sigmoid"):
        import torch

        if normalisation not in NORMALISATIONS:
            raise ValueError(f"unknown CTR normalisation {normalisation!r}: use one of {NORMALISATIONS}")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.batch_size, self.normalisation = batch_size, normalisation
        from training.reward_models.models import load_ctr_rm, load_expansion_rm

        self.exp = load_expansion_rm(exp_dir, self.device, self.dtype) if exp_dir else None
        self.ctr = load_ctr_rm(ctr_dir, self.device, self.dtype) if ctr_dir else None

    def score(self, items: Sequence[dict], queries: Sequence[str]) -> Scores:
        """``items[i]`` is the content (lang, title, body, shop_name, shop_info) of ``queries[i]``."""
        if len(items) != len(queries):
            raise ValueError(f"{len(items)} items but {len(queries)} queries")
        n = len(queries)
        r_exp = self.exp.score(items, queries, self.batch_size) if self.exp else np.full(n, np.nan)
        raw = self.ctr.score(items, queries, self.batch_size) if self.ctr else np.full(n, np.nan)
        groups = [str(it.get("content_id", i)) for i, it in enumerate(items)]
        r_ctr = normalise_ctr(raw, self.normalisation, groups) if self.ctr else np.full(n, np.nan)
        return Scores(r_exp=r_exp, r_ctr_raw=raw, r_ctr=r_ctr)


def score_pool(scorer: RewardScorer, pool_root: str, content_path: str, out: str) -> dict:
    """The current pool version's served rows with r_exp, r_ctr_raw and r_ctr, written to ``out``."""
    import pandas as pd

    from cmaq.pool.versions import current_version, version_frames
    from cmaq.spark import get_spark

    version = current_version(pool_root)
    if version is None:
        raise FileNotFoundError(f"{pool_root}: no published pool version")
    spark = get_spark("cmaq-score")
    pool = version_frames(spark, Path(pool_root) / "versions" / version)["pool"].toPandas()
    content = pd.read_parquet(content_path)
    fields = [c for c in ("content_id", "lang", "title", "body", "shop_name", "shop_info") if c in content]
    items = pool[["content_id"]].merge(content[fields].drop_duplicates("content_id"), on="content_id", how="left")
    missing = items["title"].isna() & items["body"].isna()
    if missing.all() and len(items):
        raise ValueError(f"{content_path}: none of the pool's items are in this content table")
    scores = scorer.score(items.to_dict("records"), pool["query"].tolist())
    pool = pool.assign(r_exp=scores.r_exp, r_ctr_raw=scores.r_ctr_raw, r_ctr=scores.r_ctr)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    pool.to_parquet(out, index=False)
    return {"version": version, "rows": len(pool), "items_without_content": int(missing.sum()), "out": str(out),
            "mean_r_exp": round(float(np.nanmean(scores.r_exp)), 4) if len(pool) else None,
            "mean_r_ctr": round(float(np.nanmean(scores.r_ctr)), 4) if len(pool) else None}
