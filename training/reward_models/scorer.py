"""The batch scorer of the two reward models, used by the alignment loop, the baselines, the evaluation
and `cmaq score`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from cmaq.rewards import NORMALISATIONS, normalise_ctr
from training.reward_models.models import load_ctr_rm, load_expansion_rm


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
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"unknown CTR normalisation {normalisation!r}: use one of {NORMALISATIONS}")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.batch_size, self.normalisation = batch_size, normalisation
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
