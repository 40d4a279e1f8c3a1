"""Commercial intent: promotional phrases in English and Chinese.

>>> from cmaq.config import CommercialConfig
>>> f = CommercialFilter(CommercialConfig())
>>> [f.matcher.find(q) for q in ["hotpot coupon", "火锅团购", "hotpot broth"]]
['coupon', '团购', None]
"""
from __future__ import annotations

import numpy as np

from cmaq.config import CommercialConfig
from filters import base as b
from filters.terms import TermMatcher


class CommercialFilter:
    name = "commercial"

    def __init__(self, cfg: CommercialConfig):
        self.cfg = cfg
        self.matcher = TermMatcher([*cfg.terms_en, *cfg.terms_zh, *cfg.extra_terms])

    def apply(self, batch: b.FilterBatch, active: np.ndarray) -> b.Verdict:
        reasons: list[str | None] = [None] * batch.n
        score = np.full(batch.n, np.nan)
        idx = np.flatnonzero(active)
        hits = self.matcher.find_many([batch.key[i] for i in idx])
        for i, hit in zip(idx, hits):
            score[i] = 1.0 if hit else 0.0
            if hit:
                reasons[i] = b.COMMERCIAL
        return b.reasons_to_verdict(reasons, score)
