"""Redundancy: a query that repeats the shop name or the title adds nothing (the method's check).

>>> import numpy as np, pyarrow as pa
>>> from cmaq.config import SimilarityConfig
>>> from filters.base import FilterBatch
>>> t = pa.table({"shop_name": ["Jade Hotpot (Riverside)"] * 2, "title": ["Best hotpot in Riverside"] * 2})
>>> v = SimilarityFilter(SimilarityConfig()).apply(
...     FilterBatch(t, ["Jade Hotpot", "hotpot dipping sauce"], ["jade hotpot", "hotpot dipping sauce"]),
...     np.ones(2, bool))
>>> v.reason
['shop_name_similar', None]
"""
from __future__ import annotations

import numpy as np
from rapidfuzz import fuzz, process
from rapidfuzz.distance import Levenshtein

from cmaq.config import SimilarityConfig
from cmaq.text import normalize, shop_core
from filters import base as b


class SimilarityFilter:
    name = "similarity"
    required_columns = ("shop_name", "title")

    def __init__(self, cfg: SimilarityConfig):
        self.cfg = cfg

    def apply(self, batch: b.FilterBatch, active: np.ndarray) -> b.Verdict:
        idx = np.flatnonzero(active)
        score = np.full(batch.n, np.nan)
        reasons: list[str | None] = [None] * batch.n
        if len(idx) == 0:
            return b.reasons_to_verdict(reasons, score)
        keys = [batch.key[i] for i in idx]
        _, item_of = batch.item_rows()
        shop_i = batch.item_text("shop_name")
        core_i = [normalize(shop_core(s)) for s in shop_i]
        title_i = batch.item_text("title")
        items = item_of[idx].tolist()
        shop = [shop_i[j] for j in items]
        core = [core_i[j] for j in items]
        title = [title_i[j] for j in items]
        common = dict(processor=None, dtype=np.float32, workers=1)
        shop_sim = np.maximum(
            process.cpdist(keys, shop, scorer=Levenshtein.normalized_similarity, **common),
            process.cpdist(keys, core, scorer=Levenshtein.normalized_similarity, **common))
        partial = process.cpdist(keys, title, scorer=fuzz.partial_ratio, **common) / 100.0
        long_enough = np.array([len(k) >= self.cfg.min_title_fraction * len(t) > 0 for k, t in zip(keys, title)])
        title_sim = np.where(long_enough, partial, 0.0)
        score[idx] = np.maximum(shop_sim, title_sim)
        for j, i in enumerate(idx):
            if shop_sim[j] >= self.cfg.max_shop_similarity:
                reasons[i] = b.SHOP_NAME_SIMILAR
            elif title_sim[j] >= self.cfg.max_title_similarity:
                reasons[i] = b.TITLE_COPY
        return b.reasons_to_verdict(reasons, score)
