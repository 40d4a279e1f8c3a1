import json
import random
from collections import Counter


from cmaq.world import lexicon as lx
from cmaq.text import shop_core
from cmaq.world.content import make_item
from cmaq.world.grammar import KINDS, grammar_queries

from conftest import SHARED_DATA


def _items(n, zh_fraction=0.4, seed=7):
    rng = random.Random()
    out = []
    for i in range(n):
        it = make_item(seed, i, zh_fraction, 0, rng)
        out.append((it, grammar_queries(it, rng)))
    return out


def test_at_least_twelve_local_lifestyle_categories():
    keys = {c.key for c in lx.CATEGORIES}
    assert len(keys) >= 12
    assert {"hotpot", "noodles", "cafe", "bakery", "bbq", "sushi", "hotel", "spa", "ktv", "kids", "scenic",
            "fitness"} <= keys
    for c in lx.CATEGORIES:
        for lang in lx.LANGS:
            assert c.entities(lang) and c.near(lang) and c.far(lang), (c.key, lang)
            assert not set(c.near(lang)) & set(c.far(lang))


def test_real_beijing_data_is_loaded_and_matches_the_shared_source():
    data = lx.beijing()
    names = {p.name for places in data.restaurants.values() for p in places}
    assert len(names) >= 900
    src = SHARED_DATA / "crosswoz" / "restaurant_db.json"
    if src.exists():  # the packaged copy must be a faithful reduction of the shared original
        original = {name for name, _ in json.loads(src.read_text("utf-8"))}
        assert names == original
    assert len(data.sights) > 100 and len(data.hotels) > 100
    assert "烤鸭" in lx.entity_lexicon("zh", "local")


def test_items_are_deterministic_per_index():
    a = make_item(7, 123, 0.4, 0)
    b = make_item(7, 123, 0.4, 0, random.Random(999))
    assert a == b
    assert make_item(8, 123, 0.4, 0) != a


def test_both_languages_and_real_zh_restaurants():
    rows = _items(600)
    langs = Counter(it.lang for it, _ in rows)
    assert langs["en"] > 200 and langs["zh"] > 150
    real = {p.name for places in lx.beijing().restaurants.values() for p in places}
    zh_food = [it for it, _ in rows if it.lang == "zh" and it.category in lx.FOOD_KEYS]
    assert zh_food and all(it.shop_name in real for it in zh_food)
    assert all(it.district in lx.beijing().areas for it, _ in rows if it.lang == "zh")


def test_notes_have_realistic_noise_and_lengths():
    rows = _items(800)
    bodies = [it.body for it, _ in rows]
    assert any(any(e in b for e in lx.EMOJI) for b in bodies)
    assert any("\n\n" in b for b in bodies)  # several paragraphs
    lengths = sorted(len(b) for b in bodies)
    assert lengths[0] < 60 and lengths[-1] > 600


def test_grammar_covers_every_kind_in_both_languages():
    rows = _items(400)
    seen = {(it.lang, kind) for it, g in rows for _, kind in g}
    for lang in lx.LANGS:
        for kind in KINDS:
            assert (lang, kind) in seen, (lang, kind)


def test_grammar_queries_are_unique_and_well_formed():
    for it, g in _items(300):
        queries = [q for q, _ in g]
        assert all(q and q == q.strip() for q in queries)
        assert len({q.lower() for q in queries}) == len(queries)
        assert dict((k, q) for q, k in g)["shop_copy"] == it.shop_name


def test_expansion_queries_name_topics_the_note_does_not_mention():
    for it, g in _items(300):
        cat = lx.CATEGORY_BY_KEY[it.category]
        for q, kind in g:
            if kind == "expansion":
                topics = [t for t in cat.near(it.lang) if t in q]
                assert topics, q
                assert any(t not in it.body for t in topics), (q, it.body)


def test_shop_core_strips_branches():
    assert shop_core("海底捞火锅(白纸坊店)") == "海底捞火锅"
    assert shop_core("护国寺小吃店（护国寺总店）") == "护国寺小吃店"
    assert shop_core("Jade Hotpot (Riverside)") == "Jade Hotpot"
    assert shop_core("(only branch)") == "(only branch)"
