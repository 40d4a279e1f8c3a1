"""The hidden ground truth: true CTR and true expansion of ANY query string for a note.

Only evaluation and tests may import this module. A real platform never sees true CTR, so the
serving job, the data builders, the reward models and the alignment loop must not reach it
(``tests/test_oracle_isolation.py`` checks ``sys.modules``).

How a query is judged (all matching on NFKC-lower-cased text):

* **redundancy** ``red`` = the highest normalised Indel similarity (rapidfuzz ``ratio``) of the
  query to the shop name, the shop name without its branch, and the title. Copies score ~1.
* lexicon hits: the item's category entities (dishes, rooms, facilities), its district, its shop
  name, near and far related topics *the note does not already mention*, action phrases
  (reservation, opening hours), explore phrases, commercial phrases, generic and off-topic phrases.
* garbage: empty, no letters, a token repeated three times or more, a fragment repeated three times,
  text dominated by digits, times, prices or punctuation, a fragment of the shop-info line, or no
  word (no CJK character pair) of the world's vocabulary; over-long queries are penalised.
* **foreign** names: a query naming a shop (or branch) other than this note's, or an entity (dish,
  sight, hotel, district) of the world that is neither in this note nor in its category's lexicon or
  related topics, is about some other note: its true CTR is capped at the off-topic level of this
  note and its true expansion at 0.1, whatever else it contains.
* **reference**: action, explore, commercial and generic phrases count only in a query that refers to
  this note (its shop, district, one of its category's entities or topics, its category word, or a
  copy of its name or title), or when the phrase stands alone ("opening hours"), which a reader takes
  to be about the note above it.

CTR rises with redundancy (users click the name of the shop they are reading about), entities,
actions, near topics and commercial terms; it falls for far topics, generic, off-topic and garbage.
Expansion follows the method's definition: information the note lacks that invites exploration
(new topics, booking and hours, exploring the area) raises it; redundancy and commercial intent
lower it. Copies therefore win CTR and lose expansion, far topics the reverse, and near topics
tied to the note's entities do well on both: that is the trade-off the method addresses.
"""
from __future__ import annotations

import hashlib
import operator
import re
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ahocorasick
from rapidfuzz import fuzz, process

from cmaq.text import normalize, normalize_array, shop_core
from cmaq.world import lexicon as lx

ITEM_COLUMNS = ("content_id", "lang", "category", "shop_name", "district", "shop_info", "title", "body")


@dataclass(frozen=True)
class OracleWeights:
    """Logit weights of the two true objectives (documented above; fixed before any training)."""

    ctr_bias: float = -3.2
    ctr_item_spread: float = 0.3   # per-item offset from a hash of content_id, in [-spread, spread]
    ctr_copy: float = 2.8          # times ((red - 0.5) / 0.5)^2 for red > 0.5
    ctr_shop: float = 0.6
    ctr_entity: float = 0.8
    ctr_district: float = 0.5
    ctr_category: float = 0.3
    ctr_near: float = 1.2
    ctr_far: float = -0.6
    ctr_action: float = 0.9
    ctr_explore: float = 0.4
    ctr_commercial: float = 1.0
    ctr_generic: float = -0.8
    ctr_off_topic: float = -2.5
    ctr_garbage: float = -3.0
    ctr_unknown: float = -1.0
    ctr_per_extra_token: float = -0.25
    exp_bias: float = -1.0
    exp_copy: float = -6.0         # times max(0, red - 0.6)
    exp_entity: float = 0.3
    exp_near: float = 2.6
    exp_far: float = 3.0
    exp_action: float = 1.8
    exp_explore: float = 1.8
    exp_commercial: float = -1.5
    exp_generic: float = -0.8
    exp_off_topic: float = 0.6
    exp_garbage: float = -4.0
    exp_unknown: float = -0.5
    foreign_max_exp: float = 0.1   # true expansion cap of a query about another note
    max_en_words: int = 10
    max_zh_chars: int = 15


#: Everything the truth depends on: the oracle, its lexicon, the normalisation it applies, the world
#: generator (notes, grammar, logs, annotations) and the world configuration's defaults.
TRUTH_SOURCES = ("world/oracle.py", "world/lexicon.py", "text.py", "world/content.py", "world/grammar.py",
                 "world/mistakes.py",
                 "world/generate.py", "config/world.py")


def oracle_code_hash() -> str:
    """sha256 of every source in :data:`TRUTH_SOURCES`: recorded in world.json and every report, so
    results name the truth they used."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for rel in TRUTH_SOURCES:
        h.update(rel.encode())
        h.update((root / rel).read_bytes())
    return h.hexdigest()[:16]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# Feature bits of a lexicon term; one term may carry several.
_FEATURES = ("entity", "category", "action", "explore", "commercial", "generic", "off_topic", "near", "far")
_BIT = {name: 1 << i for i, name in enumerate(_FEATURES)}
_TOPIC_BITS = _BIT["near"] | _BIT["far"]
_WORLD_ENTITY, _WORLD_SHOP = 1, 2  # a term some note of the world names: an entity, a shop
# A query refers to its note through one of these (or its shop, district, or a copy of its name or title) ...
_REFERRING_BITS = _BIT["entity"] | _BIT["category"] | _TOPIC_BITS
# ... and only then do these phrases count (or when one stands alone as the whole query).
_REFERENCE_NEEDED_BITS = _BIT["action"] | _BIT["explore"] | _BIT["commercial"] | _BIT["generic"]


@lru_cache(maxsize=None)
def _world_terms(lang: str) -> dict[str, int]:
    """Every shop name (full and without branch) and entity of the world, normalised -> WORLD_SHOP or
    WORLD_ENTITY: what a query may name that belongs to some other note."""
    terms: dict[str, int] = {}
    for name in lx.shop_names(lang):
        for t in (normalize(name), normalize(shop_core(name))):
            if len(t) >= 2:
                terms[t] = _WORLD_SHOP
    for e in lx.world_entities(lang):
        t = normalize(e)
        if len(t) >= 2:
            terms.setdefault(t, _WORLD_ENTITY)
    return terms


@lru_cache(maxsize=None)
def _matcher(lang: str, category: str) -> ahocorasick.Automaton:
    """One Aho–Corasick automaton per (lang, category): normalised term -> (term, feature bits of the
    category's lexicon, world kind). One pass over a query finds both what it says about this kind of
    note and which names of the whole world it contains."""
    cat = lx.CATEGORY_BY_KEY[category]
    groups = {
        "entity": lx.entity_lexicon(lang, category), "category": (cat.word(lang),),
        "action": lx.ACTION[lang], "explore": lx.EXPLORE[lang], "commercial": lx.COMMERCIAL[lang],
        "generic": lx.GENERIC[lang], "off_topic": lx.OFF_TOPIC[lang],
        "near": cat.near(lang), "far": cat.far(lang),
    }
    bits: dict[str, int] = {}
    for name, terms in groups.items():
        for term in terms:
            key = normalize(term)
            if key:
                bits[key] = bits.get(key, 0) | _BIT[name]
    world = _world_terms(lang)
    auto = ahocorasick.Automaton()
    for key in bits.keys() | world.keys():
        auto.add_word(key, (key, bits.get(key, 0), world.get(key, 0)))
    auto.make_automaton()
    return auto


@lru_cache(maxsize=None)
def _bare_phrases(lang: str) -> frozenset[str]:
    """Action, explore, commercial and generic phrases that may stand alone as a whole query."""
    return frozenset(normalize(p) for table in (lx.ACTION, lx.EXPLORE, lx.COMMERCIAL, lx.GENERIC)
                     for p in table.get(lang, ()))


def _on_word_boundaries(q: str, end: int, length: int) -> bool:
    start = end - length + 1
    return (start == 0 or not q[start - 1].isalnum()) and (end + 1 == len(q) or not q[end + 1].isalnum())


class Oracle:
    """Scores (item, query) pairs. Stateless apart from compiled patterns; safe to share.

    >>> o = Oracle()
    >>> item = {"content_id": "c1", "lang": "en", "category": "hotpot", "shop_name": "Jade Hotpot",
    ...         "district": "Riverside", "shop_info": "", "title": "Jade Hotpot", "body": "Nice."}
    >>> ctr, exp = o.score(item, "Jade Hotpot")
    >>> exp < 0.1
    True
    """

    def __init__(self, weights: OracleWeights | None = None):
        self.w = weights or OracleWeights()

    # ---------------------------------------------------------------- public API

    def score(self, item: Mapping, query: str) -> tuple[float, float]:
        ctr, exp = self.score_queries(item, [query])
        return float(ctr[0]), float(exp[0])

    def score_queries(self, item: Mapping, queries: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Score many queries against one item."""
        items = pa.table({c: pa.array([item.get(c)], pa.string()) for c in ITEM_COLUMNS})
        return self.score_pairs(items, np.zeros(len(queries), np.int64), list(queries))

    def score_table(self, table: pa.Table | Mapping, query_column: str = "query") -> tuple[np.ndarray, np.ndarray]:
        """One (item, query) pair per row; the item columns are ITEM_COLUMNS."""
        if not isinstance(table, pa.Table):
            table = pa.table(table)
        _check_columns(table, (*ITEM_COLUMNS, query_column))
        # Items repeat across rows; judge each item's note once.
        codes = pc.dictionary_encode(pc.fill_null(table["content_id"].cast(pa.string()), "")).combine_chunks()
        index = codes.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        _, first = np.unique(index, return_index=True)
        items = table.select(list(ITEM_COLUMNS)).take(pa.array(first))
        return self.score_pairs(items, index, table[query_column])

    def score_pairs(self, items: pa.Table, item_index: np.ndarray, queries) -> tuple[np.ndarray, np.ndarray]:
        """Score ``queries[j]`` against ``items[item_index[j]]``; returns (true_ctr, true_exp)."""
        _check_columns(items, ITEM_COLUMNS)
        items = pa.table({c: items[c].cast(pa.string()) for c in ITEM_COLUMNS})  # string or large_string in
        item_index = np.asarray(item_index, np.int64)
        if len(item_index) != len(queries):
            raise ValueError(f"{len(queries)} queries but {len(item_index)} item indices")
        f = self._features(items, item_index, queries)
        return self._combine(f)

    # ---------------------------------------------------------------- internals

    def _features(self, items: pa.Table, idx: np.ndarray, queries) -> dict[str, np.ndarray]:
        n = len(idx)
        q = normalize_array(queries).to_pylist()
        shop_i = normalize_array(items["shop_name"]).to_pylist()
        core_i = [normalize(shop_core(s)) for s in shop_i]
        title_i = normalize_array(items["title"]).to_pylist()
        district_i = normalize_array(items["district"]).to_pylist()
        # The note's own words: a topic it already covers adds nothing; a name it contains is its own.
        note_i = normalize_array(pc.binary_join_element_wise(
            *(pc.fill_null(items[c], "") for c in ("title", "body", "shop_info", "shop_name")), " ")).to_pylist()
        lang_i = pc.fill_null(items["lang"], "").to_pylist()
        cat_i = pc.fill_null(items["category"], "").to_pylist()
        cid_i = pc.fill_null(items["content_id"], "").to_pylist()
        offset_i = np.array([zlib.crc32(c.encode("utf-8")) / 0xFFFFFFFF * 2 - 1 for c in cid_i])
        ix = idx.tolist()

        kw = dict(scorer=fuzz.ratio, processor=None, dtype=np.float32, workers=1)
        red = np.maximum.reduce([process.cpdist(q, [s[i] for i in ix], **kw) for s in (shop_i, core_i, title_i)])
        red = np.where([bool(s) for s in q], red / 100.0, 0.0)

        masks, near, far, spans, names = _lexicon_hits(q, ix, lang_i, cat_i, note_i)
        shop = np.array([len(core_i[i]) >= 2 and core_i[i] in s for s, i in zip(q, ix)], bool)
        district = np.array([bool(district_i[i]) and district_i[i] in s for s, i in zip(q, ix)], bool)
        # Action, explore, commercial and generic credit needs the query to be about this note.
        refers = shop | district | (red >= 0.6) | ((masks & _REFERRING_BITS) > 0)
        bare = np.array([bool(s) and lang_i[i] in lx.LANGS and s in _bare_phrases(lang_i[i]) for s, i in zip(q, ix)],
                        bool)
        masks = np.where(refers | bare, masks, masks & ~_REFERENCE_NEEDED_BITS)
        f = {name: ((masks & bit) > 0).astype(np.float64) for name, bit in _BIT.items()}
        f["near"], f["far"] = near, far
        f["red"] = red.astype(np.float64)
        f["shop"], f["district"] = shop.astype(np.float64), district.astype(np.float64)
        f["foreign"] = np.array([bool(names[j]) and _names_other_note(s, i, spans[j], names[j], shop_i, core_i,
                                                                      district_i, note_i)
                                 for j, (s, i) in enumerate(zip(q, ix))], np.float64)
        f["garbage"] = np.array([_is_garbage(s) for s in q], np.float64)
        words = np.array([len(s.split()) for s in q])
        chars = np.array([len(s) for s in q])
        is_en = np.array([lang_i[i] != "zh" for i in ix], bool)
        extra = np.where(is_en, np.maximum(0, words - self.w.max_en_words),
                         np.maximum(0, chars - self.w.max_zh_chars) / 2.0)
        f["extra_tokens"] = extra.astype(np.float64)
        hits = (masks > 0) | shop | district
        f["unknown"] = (~hits & (f["red"] < 0.5)).astype(np.float64)
        f["item_offset"] = offset_i[idx] if n else np.zeros(0)
        return f

    def _combine(self, f: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        w = self.w
        copy_ctr = np.where(f["red"] > 0.5, ((f["red"] - 0.5) / 0.5) ** 2, 0.0)
        ctr_logit = (
            w.ctr_bias + w.ctr_item_spread * f["item_offset"] + w.ctr_copy * copy_ctr
            + w.ctr_shop * f["shop"] + w.ctr_entity * np.minimum(f["entity"], 1)
            + w.ctr_district * f["district"] + w.ctr_category * f["category"]
            + w.ctr_near * np.minimum(f["near"], 1) + w.ctr_far * np.minimum(f["far"], 1)
            + w.ctr_action * np.minimum(f["action"], 1) + w.ctr_explore * np.minimum(f["explore"], 1)
            + w.ctr_commercial * np.minimum(f["commercial"], 1) + w.ctr_generic * np.minimum(f["generic"], 1)
            + w.ctr_off_topic * np.minimum(f["off_topic"], 1) + w.ctr_garbage * f["garbage"]
            + w.ctr_unknown * f["unknown"] + w.ctr_per_extra_token * f["extra_tokens"]
        )
        # Novelty saturates: a second new topic helps less than the first.
        novelty = (w.exp_near * np.minimum(f["near"], 1) + 0.3 * w.exp_near * (f["near"] >= 2)
                   + w.exp_far * np.minimum(f["far"], 1) + w.exp_action * np.minimum(f["action"], 1)
                   + w.exp_explore * np.minimum(f["explore"], 1))
        exp_logit = (
            w.exp_bias + novelty + w.exp_copy * np.maximum(0.0, f["red"] - 0.6)
            + w.exp_entity * np.minimum(f["entity"], 1) + w.exp_commercial * np.minimum(f["commercial"], 1)
            + w.exp_generic * np.minimum(f["generic"], 1) + w.exp_off_topic * np.minimum(f["off_topic"], 1)
            + w.exp_garbage * f["garbage"] + w.exp_unknown * f["unknown"]
            + w.ctr_per_extra_token * f["extra_tokens"]
        )
        ctr = np.clip(_sigmoid(ctr_logit), 1e-4, 1 - 1e-4)
        exp = _sigmoid(exp_logit)
        # A query about some other note: at most what an off-topic query earns here, and little expansion.
        off_topic_level = np.clip(_sigmoid(w.ctr_bias + w.ctr_item_spread * f["item_offset"] + w.ctr_off_topic),
                                  1e-4, 1 - 1e-4)
        foreign = f["foreign"] > 0
        ctr = np.where(foreign, np.minimum(ctr, off_topic_level), ctr)
        exp = np.where(foreign, np.minimum(exp, w.foreign_max_exp), exp)
        # Text that is no query at all: the garbage floor, whatever words it happens to contain.
        garbage_level = np.clip(_sigmoid(w.ctr_bias + w.ctr_item_spread * f["item_offset"] + w.ctr_garbage),
                                1e-4, 1 - 1e-4)
        garbage = f["garbage"] > 0
        return np.where(garbage, garbage_level, ctr), np.where(garbage, 0.0, exp)


def _lexicon_hits(q: list[str], ix: list[int], lang_i: list[str], cat_i: list[str],
                  note_i: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list, list]:
    """Per query: OR of the feature bits of the lexicon terms it contains, how many near and far
    related topics it names that its note does not already mention (each capped at 2), the
    (start, end) spans of those terms (the query's words that belong to its note's category), and the
    (start, end, term, is_shop) of every name of the world it contains outside those spans."""
    known = [(lg in lx.LANGS and c in lx.CATEGORY_BY_KEY) for lg, c in zip(lang_i, cat_i)]
    near_bit, far_bit = _BIT["near"], _BIT["far"]
    masks, near, far = [0] * len(q), [0] * len(q), [0] * len(q)
    spans: list[tuple] = [()] * len(q)
    names: list[tuple] = [()] * len(q)
    for j, (s, i) in enumerate(zip(q, ix)):
        if not known[i] or not s:
            continue  # unknown language or category: no lexicon knowledge, judged as unknown
        masks[j], topics, spans[j], names[j] = _analyse(lang_i[i], cat_i[i], s)
        if topics:  # a related topic counts only when the note does not already cover it
            note = note_i[i]
            fresh = {(term, b) for term, b in topics if term not in note}
            near[j] = min(2, sum(1 for _, b in fresh if b & near_bit))
            far[j] = min(2, sum(1 for _, b in fresh if b & far_bit))
    return np.array(masks, np.int64), np.array(near, np.float64), np.array(far, np.float64), spans, names


@lru_cache(maxsize=1 << 17)  # a query string recurs under many notes of a category (names, phrases, topics)
def _analyse(lang: str, category: str, s: str) -> tuple[int, tuple, tuple, tuple]:
    """What the query says, whatever note it is shown under: (feature bits, related topics as
    (term, bits), spans of the category's terms, world names outside those spans as
    (start, end, term, is_shop))."""
    m, topics, spans, names = 0, [], [], []
    en = lang == "en"
    for end, (term, b, world) in _matcher(lang, category).iter(s):
        if en and not _on_word_boundaries(s, end, len(term)):
            continue
        start = end - len(term) + 1
        if world:
            names.append((start, end, term, world == _WORLD_SHOP))
        if not b:
            continue
        m |= b
        spans.append((start, end))
        if b & _TOPIC_BITS:
            topics.append((term, b))
    # A name inside one of the category's own terms ("beef" in "beef tripe") is that term's word.
    names = [h for h in names if not any(a <= h[0] and h[1] <= b for a, b in spans)]
    return m, tuple(topics), tuple(spans), tuple(names)


#: What may follow a shop's name and still name that shop ("<name> restaurant", "<name>店").
_SHOP_SUFFIXES = frozenset({"", "店", "restaurant", "官网", "official"})


def _is_own_shop(name: str, core: str) -> bool:
    """A world shop name that is this note's shop with a generic suffix (another chain's branch with
    the same brand and a suffix is still this brand's shop)."""
    return len(core) >= 2 and name.startswith(core) and name[len(core):].strip() in _SHOP_SUFFIXES


def _names_other_note(s: str, i: int, own_spans: list[tuple[int, int]], hits: list[tuple[int, int, str, bool]],
                      shop_i: list[str], core_i: list[str], district_i: list[str], note_i: list[str]) -> bool:
    """Whether query ``s`` names a shop, or an entity of the world, that is not item ``i``'s: not its
    shop (full or without branch), not its district, not a term of its category's lexicon (``own_spans``)
    and not anywhere in its note. ``hits``: the world's names in the query outside ``own_spans``."""
    shop, district, core = shop_i[i], district_i[i], core_i[i]
    own = list(own_spans)  # spans of this note's lexicon terms, its shop, district and words of its text
    rest = []
    for hit in hits:
        start, end, t, is_shop = hit
        if t in shop or t == district or (is_shop and _is_own_shop(t, core)):
            own.append((start, end))
            continue
        if t in note_i[i]:
            own.append((start, end))
        else:
            rest.append(hit)
    if not rest:
        return False
    # Foreign: a name with a character this note does not account for (a name that merely straddles
    # two of the note's own words, as zh text without spaces can, is not).
    covered = [False] * len(s)
    for a, b in own:
        covered[a:b + 1] = [True] * (b + 1 - a)
    return any(not all(covered[start:end + 1]) for start, end, _, _ in rest)


def _check_columns(table: pa.Table, needed) -> None:
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise ValueError(f"oracle input lacks columns {missing}")


_LETTER = re.compile(r"[^\W\d_]")
_NOT_LETTER = re.compile(r"[^\w\s]|[\d_]")
# Pieces of the shop-info line: its " · " separator and its labelled fields (hours, price per person,
# rating, recommendations). A title may say 人均77元吃到… ; only the bare price is the info line's.
_SHOP_INFO = re.compile(r"\s·\s|\bhours \d|\bper person\b|\brating \d|\babout \$\d|营业时间\s*\d|人均\s*\d+元$|"
                        r"评分\s*\d|推荐[:：]|周一至周日")
_REPEATED_FRAGMENT = re.compile(r"(\S{2,}?)\1{2,}")
_WORD = re.compile(r"[a-z]+")
_CJK_RUN = re.compile(r"[\u4e00-\u9fff]+")
_CJK_CHAR = re.compile(r"[\u4e00-\u9fff]")


def _may_repeat(compact: str) -> bool:
    """Cheap necessary condition of a fragment repeated three times: some character pair occurs
    three times or more (the regular expression itself backtracks over every start and length)."""
    pairs = list(map(operator.add, compact, compact[1:]))
    distinct = set(pairs)
    return len(pairs) - len(distinct) >= 2 and any(pairs.count(p) >= 3 for p in distinct)


@lru_cache(maxsize=1 << 18)  # many queries (phrases, topics) recur under thousands of notes
def _is_garbage(q: str) -> bool:
    """Not a plausible query: empty; no letters, or fewer letters than digits, times, prices and
    punctuation; a fragment of the shop-info line; a fragment repeated three times; no word (nor CJK
    character pair) of the world's vocabulary; or one token making up a third of three or more."""
    if not q or not _LETTER.search(q):
        return True
    compact = q.replace(" ", "")
    others = 0 if compact.isalpha() else len(_NOT_LETTER.findall(q))
    # More digits, times, prices and punctuation than letters (a CJK character weighs as a word's two
    # letters, so "1982餐厅" or "798艺术区" are names, "10:00-22:00 $25" is not).
    if others and others > len(compact) - others + len(_CJK_CHAR.findall(q)):
        return True
    if _SHOP_INFO.search(q) or (len(compact) >= 6 and _may_repeat(compact) and _REPEATED_FRAGMENT.search(compact)):
        return True
    words, bigrams = lx.vocabulary()
    if not any(w in words for w in _WORD.findall(q)) and not any(
            run[k:k + 2] in bigrams for run in _CJK_RUN.findall(q) for k in range(len(run) - 1)):
        return True
    tokens = q.split()
    if len(tokens) < 3:
        return False
    distinct = set(tokens)
    if len(distinct) == len(tokens):
        return False
    return len(distinct) <= len(tokens) / 3 or max(tokens.count(t) for t in distinct) >= 3
