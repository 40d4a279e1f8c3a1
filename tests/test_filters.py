"""Filters: every reason in both languages, adversarial input, obfuscation, pickling, determinism."""
import json
import pickle

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from filters.terms import TermMatcher

from cmaq.config import FiltersConfig, HarmConfig, LexicalConfig, load_config
from filters import REASONS, FilterChain, merge_counts
from filters.harm import HarmFilter

from conftest import SHARED_DATA

CFG = FiltersConfig()
ALL = FilterChain(["lexical", "harm", "commercial", "similarity", "relevance"], CFG)

EN_ITEM = {"content_id": "e1", "lang": "en", "shop_name": "Jade Hotpot (Riverside)", "title": "Jade Hotpot: the beef tripe is worth it",
           "body": "Finally tried Jade Hotpot in Riverside! The beef tripe really stood out, and the lamb slices were good too.",
           "district": "Riverside",
           "shop_info": "Jade Hotpot (Riverside) · Riverside · hours 10:00-22:00 · about $45 per person · rating 4.6"}
ZH_ITEM = {"content_id": "z1", "lang": "zh", "shop_name": "海底捞火锅(白纸坊店)", "title": "海底捞火锅｜毛肚太绝了",
           "body": "终于来了海底捞火锅！毛肚真的很惊艳，虾滑也不错。人均120元左右。", "district": "白纸坊",
           "shop_info": "海底捞火锅(白纸坊店) · 白纸坊 · 营业时间 10:00-22:00 · 人均120元 · 评分4.8"}


def run(item, queries, chain=ALL):
    # object-dtype pandas, not Arrow, so that rows can carry what Arrow refuses (lone surrogates)
    rows = pd.DataFrame({**{k: [v] * len(queries) for k, v in item.items()}, "query": queries}, dtype=object)
    out = chain.run(rows)
    out.table = pa.Table.from_pandas(out.table, preserve_index=False)
    return out


# (item, query, expected reason); None = kept
CASES = [
    (EN_ITEM, "beef tripe dipping sauce", None),
    (ZH_ITEM, "毛肚蘸料怎么调", None),
    (EN_ITEM, "", "empty"),
    (ZH_ITEM, "   ", "empty"),
    (EN_ITEM, "a", "too_short"),
    (EN_ITEM, " ".join(["hotpot"] + [f"word{i}" for i in range(15)]), "too_long"),
    (ZH_ITEM, "毛肚" * 4 + "火锅蘸料怎么调才好吃呢", "too_long"),
    (EN_ITEM, "!!! ???", "no_letters"),
    (ZH_ITEM, "😋🔥✨", "no_letters"),
    (EN_ITEM, "hotpot\u202eevil", "control_chars"),
    (ZH_ITEM, "火锅\x07蘸料", "control_chars"),
    (EN_ITEM, "hotpot www.jadehotpot.com", "url"),
    (ZH_ITEM, "毛肚 https://t.cn/abc", "url"),
    (EN_ITEM, "book via jade@hotpot.io", "email"),
    (EN_ITEM, "jade hotpot call 415-555-0134", "phone"),
    (ZH_ITEM, "海底捞电话13812345678", "phone"),
    (EN_ITEM, "<b>beef tripe</b>", "markup"),
    (ZH_ITEM, "毛肚&nbsp;蘸料", "markup"),
    (EN_ITEM, "parking parking parking", "repeated_tokens"),
    (ZH_ITEM, "停车停车停车", "repeated_tokens"),
    (EN_ITEM, "as a user I would search beef tripe", "instruction_echo"),
    (ZH_ITEM, "作为用户我想搜毛肚", "instruction_echo"),
    # machine junk, from what the models emitted (the demo's pool, QSA's samples)
    (EN_ITEM, "beef tripe\ufffd sauce", "decoding_debris"),
    (EN_ITEM, "cafÃ© hotpot", "decoding_debris"),
    (ZH_ITEM, "海洋\ufffd拉面表", "decoding_debris"),
    (ZH_ITEM, "<0xE6>毛肚", "decoding_debris"),
    (EN_ITEM, "00-22:00 · $45 · 4.6", "mostly_numbers"),
    (EN_ITEM, "00☕", "mostly_numbers"),
    (ZH_ITEM, "00:00-24:00 🔥", "mostly_numbers"),
    (ZH_ITEM, "120元 4.8分", "mostly_numbers"),
    (EN_ITEM, "about $45 per person", "shop_info_copy"),
    (EN_ITEM, "hotpot rating 4.6", "shop_info_copy"),
    (EN_ITEM, "beef tripe 22:00", "shop_info_copy"),
    (EN_ITEM, "about per person", "shop_info_copy"),
    (ZH_ITEM, "毛肚评分4.8", "shop_info_copy"),
    (ZH_ITEM, "营业时间 10:00", "shop_info_copy"),
    (EN_ITEM, "go", "filler_word"),
    (EN_ITEM, "Nice!", "filler_word"),
    (ZH_ITEM, "然后", "filler_word"),
    (ZH_ITEM, "真的！", "filler_word"),
    (EN_ITEM, "hotpot near", "truncated"),
    (EN_ITEM, "Jade Hotpot (Riverside", "truncated"),
    (EN_ITEM, "eef tripe really", "truncated"),
    (EN_ITEM, "beef tripe and lamb sli", "truncated"),
    (ZH_ITEM, "毛肚（白纸坊", "truncated"),
    (ZH_ITEM, "毛肚蘸料以及", "truncated"),
    (ZH_ITEM, "、虾滑", "truncated"),
    (ZH_ITEM, "20元左右毛肚", "truncated"),      # the body says 人均120元左右
    (ZH_ITEM, "00-21:00毛肚很惊艳", "truncated"),   # starts inside a number
    (EN_ITEM, "jade hotpot coupon", "commercial"),
    (ZH_ITEM, "海底捞团购", "commercial"),
    (EN_ITEM, "beef tripe fuck", "harm"),
    (ZH_ITEM, "毛肚傻逼", "harm"),
    (EN_ITEM, "Jade Hotpot", "shop_name_similar"),
    (ZH_ITEM, "海底捞火锅", "shop_name_similar"),
    (EN_ITEM, "the beef tripe is worth it", "title_copy"),
    (ZH_ITEM, "海底捞火锅|毛肚太绝了", "title_copy"),
    (EN_ITEM, "car insurance quote", "low_relevance"),
    (ZH_ITEM, "二手房价格", "low_relevance"),
]


@pytest.mark.parametrize("item, query, expected", CASES, ids=[f"{c[0]['lang']}-{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_reason_table(item, query, expected):
    out = run(item, [query]).table
    assert out["reason"][0].as_py() == expected, out.to_pylist()
    assert out["keep"][0].as_py() is (expected is None)


def test_every_reason_is_exercised_in_both_languages():
    covered = {(item["lang"], reason) for item, _, reason in CASES}
    lang_neutral = {"too_short", "email", "title_copy", "too_long"}
    for reason in REASONS:
        if reason == "duplicate":
            continue  # exercised below: it needs two rows
        assert ("en", reason) in covered or ("zh", reason) in covered, reason
        if reason not in lang_neutral - {"too_long", "title_copy"}:
            assert ("en", reason) in covered and ("zh", reason) in covered, reason


def test_duplicates_within_an_item_after_normalisation_in_both_languages():
    out = run(EN_ITEM, ["Beef tripe dipping sauce", "beef  tripe, dipping sauce!", "“beef tripe dipping sauce”"]).table
    assert out["reason"].to_pylist() == [None, "duplicate", "duplicate"]
    zh = run(ZH_ITEM, ["毛肚蘸料", "毛肚，蘸料"]).table
    assert zh["reason"].to_pylist() == [None, "duplicate"]
    # the same query for another item is no duplicate
    both = pa.concat_tables([run(EN_ITEM, ["beef tripe dipping sauce"]).table,
                             run({**EN_ITEM, "content_id": "e2"}, ["beef tripe dipping sauce"]).table])
    assert both["keep"].to_pylist() == [True, True]


def test_cleaning_strips_what_models_add():
    out = run(EN_ITEM, ['Answer: "beef tripe dipping sauce".', "Ｂｅｅｆ　ｔｒｉｐｅ  broth", "beef\u200b tripe\u200d sauces"]).table
    assert out["query_clean"].to_pylist() == ["beef tripe dipping sauce", "Beef tripe broth", "beef tripe sauces"]
    zh = run(ZH_ITEM, ["答案：「毛肚蘸料」。"]).table
    assert zh["query_clean"][0].as_py() == "毛肚蘸料" and zh["keep"][0].as_py()


ADVERSARIAL = [None, "", "x" * 1_000_000, "\ud800 lone surrogate", "beef\u200d\u200dtripe", "\u200f\u200ftripe",
               "😋" * 30, "\x00\x01", "‮reversed", "a" * 10_000 + " b"]


def test_adversarial_inputs_give_a_verdict_for_every_row():
    out = run(EN_ITEM, ADVERSARIAL).table
    assert out.num_rows == len(ADVERSARIAL)
    reasons = out["reason"].to_pylist()
    assert reasons[0] == "empty" and reasons[1] == "empty" and reasons[2] == "too_long"
    assert reasons[5] == "control_chars" and reasons[6] == "no_letters" and reasons[7] == "control_chars"
    assert all(r is not None for r in reasons[:4])  # the surrogate row: too short for a query but judged
    assert set(reasons) - {None} <= set(REASONS)


def test_adversarial_content_fields():
    item = {**EN_ITEM, "title": None, "body": "\ud800" + "x" * 1_000_000, "shop_name": None}
    out = run(item, ["beef tripe dipping sauce", "car insurance"]).table
    assert out.num_rows == 2 and out["reason"][1].as_py() == "low_relevance"


OBFUSCATED = ["f u c k", "f.u.c.k", "FUCK", "ｆｕｃｋ", "fu\u200bck", "sh1t", "$h!t", "a$$hole", "傻 逼", "傻.逼", "傻\u200b逼",
              "操你", "妈Ｂ"]
INNOCENT = ["Scunthorpe hotels", "classic glass", "assessment", "cockpit bar", "Essex", "奶茶", "乳鸽", "性价比", "牛奶", "鸡蛋",
            "老母鸡汤", "扇贝肉炒韭菜", "shiitake", "hello kitty cafe", "title", "bass fishing"]


def test_obfuscated_blocklist_terms_are_caught():
    f = HarmFilter(HarmConfig())
    missed = [t for t in OBFUSCATED if not f.matcher.find(t)]
    assert not missed


def test_innocent_words_pass_including_scunthorpe_and_single_characters():
    f = HarmFilter(HarmConfig())
    flagged = [(t, f.matcher.find(t)) for t in INNOCENT if f.matcher.find(t)]
    assert not flagged
    assert f.matcher.find("奶") and f.matcher.find("奶 好大")  # a single listed character standing alone


def test_user_lists_and_allowlist(tmp_path):
    terms = tmp_path / "extra.txt"
    terms.write_text("# our own list\nbadword\n黑名单词\n")
    f = HarmFilter(HarmConfig(extra_terms=["worseword"], extra_terms_files=[str(terms)], allow_terms=["好黑名单词汤"]))
    assert f.matcher.find("a badword here") and f.matcher.find("worseword") and f.matcher.find("这个黑名单词")
    assert f.matcher.find("好黑名单词汤") is None
    with pytest.raises(Exception, match="file not found"):
        load_config(None, ["filters.harm.extra_terms_files=['/no/such/list.txt']"])


def test_false_positive_rate_on_real_restaurant_names_and_dishes():
    src = SHARED_DATA / "crosswoz" / "restaurant_db.json"
    if src.exists():
        rows = json.loads(src.read_text("utf-8"))
        texts = [name for name, _ in rows] + [d for _, rec in rows for d in rec["推荐菜"]]
    else:  # the packaged reduction holds the same names and dishes
        from cmaq.world import lexicon as lx
        places = [p for ps in lx.beijing().restaurants.values() for p in ps]
        texts = [p.name for p in places] + [d for p in places for d in p.entities]
    f = HarmFilter(HarmConfig())
    flagged = [t for t in texts if f.matcher.find(t)]
    rate = len(flagged) / len(texts)
    assert len(texts) > 5000
    assert rate <= 0.005, (rate, flagged[:20])


def test_filters_pickle_and_results_are_deterministic():
    queries = [q for _, q, _ in CASES if isinstance(q, str)]
    first = run(EN_ITEM, queries).table
    clone = pickle.loads(pickle.dumps(ALL))
    second = run(EN_ITEM, queries, clone).table
    assert first.to_pandas().equals(second.to_pandas())
    for flt in ALL.filters:
        assert type(pickle.loads(pickle.dumps(flt))) is type(flt)


def test_pandas_in_pandas_out_and_counts():
    df = pd.DataFrame([{**EN_ITEM, "query": q} for q in ["beef tripe dipping sauce", "jade hotpot coupon", "", "Jade Hotpot"]])
    out = ALL.run(df)
    assert isinstance(out.table, pd.DataFrame) and len(out.table) == 4
    assert out.counts == {"input": 4, "kept": 1, "commercial": 1, "empty": 1, "shop_name_similar": 1}
    assert merge_counts(out.counts, out.counts)["kept"] == 2
    assert list(out.table.columns[-5:]) == ["score_lexical", "score_harm", "score_commercial", "score_similarity",
                                            "score_relevance"]
    # a filter that did not look at a row leaves NaN
    assert np.isnan(out.table.loc[2, "score_relevance"]) and not np.isnan(out.table.loc[0, "score_relevance"])


def test_missing_columns_and_bad_chain():
    with pytest.raises(ValueError, match="lacks columns"):
        ALL.run(pa.table({"query": ["x"], "content_id": ["c"]}))
    with pytest.raises(ValueError, match="unknown filter"):
        FilterChain(["lexical", "nope"])
    with pytest.raises(Exception, match="unknown filter"):
        load_config(None, ["filters.serving=['lexical','nope']"])


def test_default_chains_follow_the_method():
    cfg = FiltersConfig()
    assert FilterChain.serving(cfg).names == ["lexical", "harm", "commercial", "relevance"]
    assert "similarity" in FilterChain.training(cfg).names


def test_vectorised_prefilter_never_hides_a_match():
    from cmaq.world import lexicon as lx
    f = HarmFilter(HarmConfig())
    corpus = OBFUSCATED + INNOCENT + [q for _, q, _ in CASES] + list(lx.OFF_TOPIC["en"]) + ["奶", "a 奶 b", "🖕 you"]
    assert f.matcher.find_many(corpus) == [f.matcher.find(t) for t in corpus]
    assert sum(1 for t in corpus if f.matcher.find(t)) >= len(OBFUSCATED)
    # CJK terms as the CJK matcher keys them: other letters between or around the characters
    cjk = TermMatcher(["操你", "死ね"], obfuscation=True)
    tricky = ["操é你", "操ア你", "死", "你死了"]
    assert cjk.find_many(tricky) == [cjk.find(t) for t in tricky] == ["操你", "操你", "死ね", None]
    # and it does rule rows out: clean text never reaches the exact matcher
    may = f.matcher.candidates(INNOCENT + ["best hotpot near the river", None, ""])
    assert not may[-3:].any() and may.sum() < len(INNOCENT)


def test_embedding_relevance_scorer_runs_offline_from_the_packaged_model():
    from filters.relevance import EmbeddingScorer

    cfg = load_config(None, ["filters.relevance.scorer=embedding", "filters.relevance.min_score=0.2"]).filters
    chain = FilterChain(["relevance"], cfg)
    out = run(EN_ITEM, ["beef tripe dipping sauce", "lamb slices", "car insurance quote", "stock prices today"],
              chain).table
    scores = out["score_relevance"].to_pylist()
    assert min(scores[:2]) > max(scores[2:]) + 0.2
    assert out["reason"].to_pylist()[2:] == ["low_relevance", "low_relevance"]
    # one model per process: a second chain reuses it
    FilterChain(["relevance"], cfg).run(pa.table({**{k: [v] for k, v in EN_ITEM.items()}, "query": ["x y"]}))
    assert len(EmbeddingScorer._models) == 1
    with pytest.raises(Exception, match="embedding|scorer"):
        load_config(None, ["filters.relevance.scorer=bert"])


JUNK_REASONS = {"decoding_debris", "mostly_numbers", "shop_info_copy", "filler_word", "truncated"}
# Queries a reader would type that sit close to a junk rule: numbers, hours words, the district, a
# sentence ending on a preposition, prices inside dish names, pinyin glued to characters.
NEAR_MISSES = [(EN_ITEM, q) for q in ("24 hour hotpot", "opening hours", "how to book", "Riverside", "lamb slices",
                                      "beef tripe", "worth coming back for", "hotpot rating", "price per person",
                                      "hotpot near Riverside", "Jade Hotpot (Riverside)", "the lamb")] + \
              [(EN_ITEM, q) for q in ("vitamin a drinks", "disney+ hotpot night", "007 hotpot")] + \
              [(ZH_ITEM, q) for q in ("营业时间", "人均", "24小时火锅", "白纸坊附近", "13元刀削面", "杏仁er豆腐", "义盛和", "00后火锅",
                                      "评分高的火锅", "5+牛眼", "毛肚和虾滑", "海底捞火锅(白纸坊店)")]


@pytest.mark.parametrize("item, query", NEAR_MISSES, ids=[f"{i['lang']}-{q}" for i, q in NEAR_MISSES])
def test_near_misses_pass_the_lexical_filter(item, query):
    out = run(item, [query], FilterChain(["lexical"], CFG)).table
    assert out["reason"][0].as_py() is None, out["reason"][0]


def test_real_names_and_dishes_pass_the_junk_rules_under_their_own_shop_info():
    """Every packaged CrossWOZ restaurant (names, all its dishes as listed, with digits and Latin letters)
    under a note whose shop-info line carries its real area, hours, price and rating."""
    from importlib import resources

    raw = json.loads(resources.files("cmaq").joinpath("data/crosswoz_beijing.json").read_text("utf-8"))
    rows = []
    for i, r in enumerate(raw["restaurants"]):
        item = {"content_id": f"r{i}", "lang": "zh", "shop_name": r["name"], "district": r["area"],
                "title": f"{r['name']}｜{(r['dishes'] or [''])[0]}", "body": "、".join(r["dishes"]) + "。",
                "shop_info": f"{r['name']} · {r['area']} · 营业时间 {r['hours']} · 人均{r['price']}元 · 评分{r['rating']}"}
        rows += [{**item, "query": q} for q in [r["name"], *r["dishes"]]]
    out = FilterChain(["lexical"], CFG).run(pd.DataFrame(rows)).table
    dropped = out[out["reason"].isin(JUNK_REASONS)]
    assert len(out) > 10_000
    # what does drop is the dataset's own split debris: a dish list cut inside brackets ("素颜番茄鱼（金针菇")
    assert len(dropped) <= 0.0005 * len(out), dropped[["query", "reason"]].to_string()
    assert (dropped["reason"] == "truncated").all(), dropped[["query", "reason"]].to_string()
    assert dropped["query"].map(lambda q: q.count("（") + q.count("(") != q.count("）") + q.count(")")).all()


def test_junk_rules_settings_are_validated():
    with pytest.raises(Exception, match="max_number_share"):
        load_config(None, ["filters.lexical.max_number_share=0"])
    with pytest.raises(Exception, match="shop_info_similarity"):
        load_config(None, ["filters.lexical.shop_info_similarity=1.5"])
    relaxed = FiltersConfig(lexical=LexicalConfig(filler_words=[], max_number_share=1.0))
    out = run(EN_ITEM, ["go", "00-22:00 · $45 · 4.6"], FilterChain(["lexical"], relaxed)).table
    assert out["reason"].to_pylist() == [None, "shop_info_copy"]


def test_a_content_table_without_a_district_is_filtered_as_one_with_null_districts():
    rows = {"content_id": ["c1", "c1"], "lang": ["en", "en"], "shop_name": ["Jade Hotpot"] * 2,
            "title": ["Jade Hotpot review"] * 2, "body": ["Great beef tripe and broth."] * 2,
            "shop_info": ["Jade Hotpot · Riverside · hours 10:00-22:00"] * 2, "query": ["beef tripe dipping sauce", "10:00-22:00"]}
    chain = FilterChain.serving(FiltersConfig())
    without = chain.run(pa.table(rows)).table
    with_null = chain.run(pa.table({**rows, "district": pa.nulls(2, pa.string())})).table
    assert without["reason"].to_pylist() == with_null["reason"].to_pylist()
    assert without["reason"].to_pylist()[0] is None and without["reason"].to_pylist()[1] is not None
    with pytest.raises(ValueError, match="lacks columns"):
        chain.run(pa.table({k: v for k, v in rows.items() if k != "shop_info"}))
