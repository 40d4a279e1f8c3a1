"""What an earlier recommender showed under a note by mistake.

A real platform's logs hold more than each note's own kind of query: the system that came before
showed queries that belonged to other notes, queries that are popular everywhere, and now and then
malformed text, and users mostly did not click them. Reward models trained on logs without such
rows never see a query under a note it does not belong to, and learn to score the query string
alone. This module draws those exposures for one chunk of items; the oracle then judges each one
*for the note it was shown under* (:mod:`cmaq.world.generate`).

Sources (:data:`SOURCES`, drawn with :data:`SOURCE_WEIGHT`):

* ``same_category``: a grammar query of another note of the same language and category;
* ``same_district``: a grammar query of another note of the same language and district;
* ``other_shop``: another note's shop name (same language, any category);
* ``popular``: a stand-alone phrase popular under every note (opening hours, coupons, weather ...);
* ``malformed``: a fragment of the note's shop-info line, a query cut short, a word repeated,
  letter soup, or digits and prices.

"Another note" is drawn from the same chunk, so a chunk is self-contained and the world's
determinism contract (same seed, size and chunk size -> the same files) holds. A candidate that
repeats one of the note's own grammar queries, or an earlier candidate of the note, is dropped.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from cmaq.world import lexicon as lx
from cmaq.world.content import Item

SOURCES = ("same_category", "same_district", "other_shop", "popular", "malformed")
SOURCE_WEIGHT = np.array([0.35, 0.2, 0.2, 0.15, 0.1])
assert len(SOURCES) == len(SOURCE_WEIGHT) and abs(SOURCE_WEIGHT.sum() - 1.0) < 1e-9

_POPULAR = {lang: tuple(p for table in (lx.ACTION, lx.EXPLORE, lx.COMMERCIAL, lx.GENERIC, lx.OFF_TOPIC)
                        for p in table[lang]) for lang in lx.LANGS}
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _other_in_group(nrng: np.random.Generator, keys: Sequence, slot_item: np.ndarray) -> np.ndarray:
    """For each slot, a uniformly drawn item with the same key as the slot's item but not that item;
    -1 where the item is alone in its group."""
    codes: dict = {}
    group = np.array([codes.setdefault(k, len(codes)) for k in keys], np.int64)
    order = np.argsort(group, kind="stable")
    sizes = np.bincount(group, minlength=len(codes))
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    rank = np.empty(len(keys), np.int64)
    rank[order] = np.arange(len(keys)) - starts[group[order]]
    g = group[slot_item]
    others = sizes[g] - 1
    pick = np.floor(nrng.random(len(slot_item)) * np.maximum(others, 1)).astype(np.int64)
    pick = pick + (pick >= rank[slot_item])       # skip the slot's own item
    return np.where(others > 0, order[starts[g] + np.minimum(pick, sizes[g] - 1)], -1)


def _malformed(item: Item, own: Sequence[str], u: np.ndarray, nrng: np.random.Generator) -> str:
    """One malformed string for ``item`` from five uniforms in [0, 1) (and, for letter soup, a few
    more draws from ``nrng``)."""
    kind = int(u[0] * 5)
    zh = item.lang == "zh"
    if kind == 0:   # the shop-info line's labelled fields (hours, price, rating, recommendations)
        fields = item.shop_info.split(" · ")[2:] or [item.shop_info]
        a = int(u[1] * len(fields))
        b = a + 1 + int(u[2] * (len(fields) - a))
        return " · ".join(fields[a:b])
    if kind == 1:   # a query cut short, mid-word
        q = own[int(u[1] * len(own))]
        return q[:max(2, int(len(q) * (0.3 + 0.4 * u[2])))].rstrip() or q
    if kind == 2:   # one word of the note repeated
        words = [e for e in item.entities if e] or [item.district]
        w = words[int(u[1] * len(words))]
        return (("" if zh else " ").join([w] * (3 + int(u[2] * 2))))
    if kind == 3:   # letter soup
        n = 4 + int(u[1] * 9)
        if zh:  # any CJK characters: a pair of them is rarely a word of the world
            return "".join(chr(0x4E00 + c) for c in nrng.integers(0, 20902, n // 2 + 2))
        return "".join(_LETTERS[c] for c in nrng.integers(0, 26, n))
    # digits, times and prices
    h = 7 + int(u[1] * 4)
    price = 10 + int(u[2] * 290)
    return f"{h:02d}:00-{h + 12}:00 ¥{price}" if zh else f"{h:02d}:00-{h + 12}:00 ${price}"


def mistaken_queries(nrng: np.random.Generator, items: Sequence[Item], owner: np.ndarray,
                     queries: Sequence[str], counts: np.ndarray) -> tuple[np.ndarray, list[str], list[str]]:
    """Up to ``counts[i]`` mistaken queries for each item ``i`` of the chunk.

    ``owner``/``queries``: the chunk's grammar rows (item position per row, rows of an item
    contiguous). Returns (item position, query, source) per kept candidate, items in order."""
    n_items = len(items)
    slot_item = np.repeat(np.arange(n_items, dtype=np.int64), counts)
    n = len(slot_item)
    source = nrng.choice(len(SOURCES), size=n, p=SOURCE_WEIGHT)
    u = nrng.random((n, 6))
    row_start = np.searchsorted(owner, np.arange(n_items))
    row_count = np.bincount(owner, minlength=n_items)
    others = {
        "same_category": _other_in_group(nrng, [(it.lang, it.category) for it in items], slot_item),
        "same_district": _other_in_group(nrng, [(it.lang, it.district) for it in items], slot_item),
        "other_shop": _other_in_group(nrng, [it.lang for it in items], slot_item),
    }
    out_item: list[int] = []
    out_query: list[str] = []
    out_source: list[str] = []
    seen: set[str] = set()
    current = -1
    for k in range(n):
        i = int(slot_item[k])
        it = items[i]
        own = queries[row_start[i]:row_start[i] + row_count[i]]
        if i != current:
            current, seen = i, {q.strip().lower() for q in own}
        name = SOURCES[source[k]]
        j = int(others[name][k]) if name in others else -1
        if name in others and j < 0:
            name = "popular"   # the note is alone in its group in this chunk
        if name == "other_shop":
            q = items[j].shop_name
        elif name in others:
            q = queries[row_start[j] + int(u[k, 0] * row_count[j])]
        elif name == "popular":
            pool = _POPULAR[it.lang]
            q = pool[int(u[k, 0] * len(pool))]
        else:
            q = _malformed(it, own, u[k, 1:], nrng)
        key = q.strip().lower()
        if key and key not in seen:
            seen.add(key)
            out_item.append(i)
            out_query.append(q)
            out_source.append(name)
    return np.asarray(out_item, np.int64), out_query, out_source
