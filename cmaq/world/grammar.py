"""The query grammar: every kind of related-search query a platform's history holds for a note.

Kinds (see :data:`KINDS`): copies of the shop name or title (redundant), near copies, entity
queries (dish + district, shop + dish), expansion queries from the category's related-topic graph
that the note does not already mention (near ring, and one far), action queries (reservation,
opening hours, directions), explore queries, commercial queries, generic and off-topic ones.
The grammar only writes strings; how good each one is, is the oracle's business.
"""
from __future__ import annotations

import random

from cmaq.world import lexicon as lx
from cmaq.text import shop_core
from cmaq.world.content import Item, pick

KINDS = ("shop_copy", "title_copy", "near_copy", "entity", "expansion", "expansion_far",
         "action", "explore", "commercial", "generic", "off_topic")
REDUNDANT_KINDS = ("shop_copy", "title_copy", "near_copy")
EXPANSION_KINDS = ("expansion", "expansion_far")


def _join(lang: str, *parts: str) -> str:
    """Join query parts, dropping a part another part already contains ("cafe" + "pet friendly cafe")."""
    kept = [p for p in parts if p and not any(p != o and p in o for o in parts)]
    return (" " if lang == "en" else "").join(kept)


def grammar_queries(item: Item, rng: random.Random) -> list[tuple[str, str]]:
    """The item's grammar queries as (query, kind), de-duplicated, in a fixed order per seed."""
    lang, cat = item.lang, lx.CATEGORY_BY_KEY[item.category]
    core, word = shop_core(item.shop_name), cat.word(lang)
    ents = item.entities
    fresh_near = [t for t in cat.near(lang) if t not in item.mentioned_topics]
    near = rng.sample(fresh_near, k=min(2, len(fresh_near)))
    action = pick(rng, lx.ACTION[lang])
    suffix = "restaurant" if cat.kind == "food" else "official"
    suffix = suffix if lang == "en" else ("店" if cat.kind == "food" else "官网")
    out = [
        (item.shop_name, "shop_copy"),
        (item.title, "title_copy") if rng.random() < 0.5 else (_join(lang, core, suffix), "near_copy"),
        (_join(lang, pick(rng, ents), item.district), "entity"),
        (_join(lang, core, pick(rng, ents)), "entity"),
        (_join(lang, word, near[0]), "expansion"),
        (_join(lang, pick(rng, ents), near[-1]), "expansion"),
        (pick(rng, cat.far(lang)), "expansion_far"),
        (_join(lang, core, action), "action"),
        (_join(lang, pick(rng, lx.EXPLORE[lang]), item.district) if lang == "en"
         else _join(lang, item.district, pick(rng, lx.EXPLORE[lang])), "explore"),
        (_join(lang, core if rng.random() < 0.5 else word, pick(rng, lx.COMMERCIAL[lang])), "commercial"),
        (pick(rng, lx.GENERIC[lang]), "generic"),
        (pick(rng, lx.OFF_TOPIC[lang]), "off_topic"),
    ]
    seen: set[str] = set()
    unique = []
    for q, kind in out:
        key = q.strip().lower()
        if key and key not in seen:
            seen.add(key)
            unique.append((q, kind))
    return unique
