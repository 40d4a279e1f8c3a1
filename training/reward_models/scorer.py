"""The batch scorer of the two reward models, used by the alignment loop, the baselines, the evaluation
and `cmaq score`."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cmaq.rewards import NORMALISATIONS, Calibration, normalise_ctr
from training.reward_models.models import load_ctr_rm, load_expansion_rm

CALIBRATION = "calibration.json"


@dataclass
class Scores:
    """One entry per (content, query) scored, in input order. With an ensemble, each value is the
    members' mean and ``*_std`` their standard deviation (0 with one member)."""

    r_exp: np.ndarray      # probability of "1", in [0, 1]
    r_ctr_raw: np.ndarray  # the CTR RM's scalar
    r_ctr: np.ndarray      # normalised into [0, 1]
    r_exp_std: np.ndarray | None = None
    r_ctr_raw_std: np.ndarray | None = None
    r_ctr_std: np.ndarray | None = None  # of the members' normalised scores

    def lower_bounds(self, kappa: float) -> tuple[np.ndarray, np.ndarray]:
        """(r_exp, r_ctr) lowered by ``kappa`` members' standard deviations, clipped into [0, 1]: what
        the ensemble is confident of (equal to the means with one member)."""
        def lcb(mean, std):
            return np.clip(mean - kappa * (np.zeros_like(mean) if std is None else std), 0.0, 1.0)
        return lcb(self.r_exp, self.r_exp_std), lcb(self.r_ctr, self.r_ctr_std)


def read_calibration(ctr_dir: str | Path) -> Calibration | None:
    path = Path(ctr_dir) / CALIBRATION
    return Calibration.from_dict(json.loads(path.read_text())) if path.exists() else None


class RewardScorer:
    """Both reward models, loaded once (base + adapter each, every member of an ensemble), scoring
    batches without gradients: bf16 on a GPU, fp32 on CPU. Used by the alignment loop, the evaluation
    and `cmaq score`.

    ``normalisation``: how r_ctr is mapped into [0, 1]; ``None`` takes the one the CTR RM was trained
    for (``rm_ctr.normalisation``, recorded in its ``cmaq_rm.json``).

    >>> scorer = RewardScorer("runs/rm-exp", "runs/rm-ctr")          # doctest: +SKIP
    >>> scorer.score(items, queries).r_exp                            # doctest: +SKIP
    """

    def __init__(self, exp_dir: str | None, ctr_dir: str | None, device: str | None = None,
                 batch_size: int = 32, normalisation: str | None = None):
        if normalisation is not None and normalisation not in NORMALISATIONS:
            raise ValueError(f"unknown CTR normalisation {normalisation!r}: use one of {NORMALISATIONS}")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.batch_size = batch_size
        self.exp = load_expansion_rm(exp_dir, self.device, self.dtype) if exp_dir else None
        self.ctr = load_ctr_rm(ctr_dir, self.device, self.dtype) if ctr_dir else None
        self.normalisation = normalisation or (self.ctr.meta.get("normalisation", "sigmoid") if self.ctr else "sigmoid")
        self.calibration = read_calibration(ctr_dir) if ctr_dir else None
        if self.ctr and self.normalisation == "calibrated" and self.calibration is None:
            raise ValueError(f"{ctr_dir}: no {CALIBRATION}; train the CTR RM with a validation split to "
                             f"use the calibrated normalisation")

    def score(self, items: Sequence[dict], queries: Sequence[str]) -> Scores:
        """``items[i]`` is the content (lang, title, body, shop_name, shop_info) of ``queries[i]``."""
        if len(items) != len(queries):
            raise ValueError(f"{len(items)} items but {len(queries)} queries")
        n = len(queries)
        missing = (np.full(n, np.nan), np.full(n, np.nan))
        r_exp, exp_std = self.exp.score_spread(items, queries, self.batch_size) if self.exp else missing
        if not self.ctr:
            return Scores(r_exp=r_exp, r_ctr_raw=missing[0], r_ctr=missing[1], r_exp_std=exp_std,
                          r_ctr_raw_std=missing[1], r_ctr_std=missing[1])
        groups = [str(it.get("content_id", i)) for i, it in enumerate(items)]
        members = self.ctr.member_scores(items, queries, self.batch_size)
        raw = members.mean(axis=0)
        normalised = [normalise_ctr(m, self.normalisation, groups, self.calibration) for m in members]
        return Scores(r_exp=r_exp, r_ctr_raw=raw, r_ctr=normalise_ctr(raw, self.normalisation, groups, self.calibration),
                      r_exp_std=exp_std, r_ctr_raw_std=members.std(axis=0), r_ctr_std=np.std(normalised, axis=0))
