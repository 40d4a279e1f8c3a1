"""Commercial intent: promotional phrases in English and Chinese.

>>> from cmaq.config import CommercialConfig
>>> f = CommercialFilter(CommercialConfig())
>>> [f.matcher.find(q) for q in ["hotpot coupon", "火锅团购", "hotpot broth"]]
['coupon', '团购', None]
"""
from __future__ import annotations

from cmaq.config import CommercialConfig
from filters import base as b
from filters.terms import TermFilter, TermMatcher


class CommercialFilter(TermFilter):
    name = "commercial"
    reason = b.COMMERCIAL
    text_field = "key"

    def __init__(self, cfg: CommercialConfig):
        self.cfg = cfg
        self.matcher = TermMatcher([*cfg.terms_en, *cfg.terms_zh, *cfg.extra_terms])
