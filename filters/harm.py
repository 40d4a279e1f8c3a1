"""Harmful terms: the LDNOOBW English and Chinese lists (CC-BY-4.0, see NOTICE) plus the user's own.

Matching is linear in the text (Aho–Corasick) and robust to case, full-width forms, zero-width
characters, separators between letters and simple leetspeak; English matches whole words only (the
"Scunthorpe" problem) and single Chinese characters only when they stand alone (奶茶 is milk tea).
A packaged allowlist holds everyday food words that contain a listed term (老母鸡 is an old hen,
扇贝肉 is scallop meat); ``filters.harm.allow_terms`` adds to it.

>>> from cmaq.config import HarmConfig
>>> f = HarmFilter(HarmConfig())
>>> [bool(f.matcher.find(q)) for q in ["Scunthorpe hotels", "奶茶", "性价比", "sh1t food", "老母鸡汤"]]
[False, False, False, True, False]
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from cmaq.config import HarmConfig
from filters import base as b
from filters.terms import TermFilter, TermMatcher

PACKAGED_LISTS = ("ldnoobw_en.txt", "ldnoobw_zh.txt")
PACKAGED_ALLOW = "harm_allow.txt"


def read_terms(text: str) -> list[str]:
    """One term per line; blank lines and # comments ignored."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _packaged(name: str) -> str:
    return resources.files("filters").joinpath("data", name).read_text("utf-8")


class HarmFilter(TermFilter):
    name = "harm"
    reason = b.HARM
    text_field = "query"

    def __init__(self, cfg: HarmConfig):
        self.cfg = cfg
        terms = list(cfg.extra_terms)
        if cfg.use_ldnoobw:
            for name in PACKAGED_LISTS:
                terms += read_terms(_packaged(name))
        for path in cfg.extra_terms_files:
            terms += read_terms(Path(path).read_text("utf-8"))
        allow = read_terms(_packaged(PACKAGED_ALLOW)) + list(cfg.allow_terms)
        self.matcher = TermMatcher(terms, allow=allow, obfuscation=True, leetspeak=cfg.leetspeak)
