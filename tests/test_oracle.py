import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from cmaq.config import WorldConfig
from cmaq.world.generate import generate_chunk, month_starts
from cmaq.world.oracle import ITEM_COLUMNS, Oracle

ORACLE = Oracle()


@pytest.fixture(scope="module")
def truth_and_content():
    cfg = WorldConfig(seed=11, items=1000)
    tables = generate_chunk(cfg, 0, cfg.items, ORACLE, month_starts(cfg.end_month, cfg.months), 0)
    return tables["truth/grammar"].to_pandas(), tables["content"]


def _share(per_item: pd.Series) -> float:
    return float(per_item.mean())


def test_oracle_properties_hold_on_95_percent_of_items(truth_and_content):
    truth, _ = truth_and_content
    med = truth.groupby("content_id")[["true_ctr", "true_exp"]].transform("median")
    t = truth.assign(mc=med["true_ctr"], me=med["true_exp"])
    by = t.groupby("content_id")

    copy_ok = by.apply(lambda g: bool(((g.kind == "shop_copy") & (g.true_ctr > g.mc) & (g.true_exp < 0.1)).any()))
    off = t[t.kind == "off_topic"]
    off_ok = (off.true_ctr < off.mc).groupby(off.content_id).all()
    exp_ok = by.apply(lambda g: bool((g.kind.str.startswith("expansion") & (g.true_ctr > g.mc)
                                      & (g.true_exp > g.me)).any()))
    assert len(copy_ok) == 1000 and len(off_ok) == 1000
    assert _share(copy_ok) >= 0.95, _share(copy_ok)
    assert _share(off_ok) >= 0.95, _share(off_ok)
    assert _share(exp_ok) >= 0.95, _share(exp_ok)


def test_objectives_conflict_by_kind(truth_and_content):
    truth, _ = truth_and_content
    means = truth.groupby("kind")[["true_ctr", "true_exp"]].mean()
    # copies: clicked, not expanding; far topics: expanding, not clicked
    assert means.loc["shop_copy", "true_ctr"] > 3 * means.loc["expansion_far", "true_ctr"]
    assert means.loc["expansion_far", "true_exp"] > 5 * means.loc["shop_copy", "true_exp"]
    assert means.loc["off_topic", "true_ctr"] == means["true_ctr"].min()
    assert means.loc["commercial", "true_exp"] < 0.2


def test_scores_are_in_range_and_independent_of_batch(truth_and_content):
    truth, content = truth_and_content
    assert truth.true_ctr.between(0, 1, inclusive="neither").all()
    assert truth.true_exp.between(0, 1).all()
    item = content.slice(0, 1).to_pylist()[0]
    queries = truth[truth.content_id == item["content_id"]]["query"].tolist()
    ctr, exp = ORACLE.score_queries(item, queries)
    expected = truth[truth.content_id == item["content_id"]]
    np.testing.assert_allclose(ctr, expected.true_ctr.to_numpy())
    np.testing.assert_allclose(exp, expected.true_exp.to_numpy())
    single = [ORACLE.score(item, q) for q in queries]
    np.testing.assert_allclose([s[0] for s in single], ctr)
    # the row-per-pair entry point agrees too
    rows = pa.table({**{c: [item[c]] * len(queries) for c in ITEM_COLUMNS}, "query": queries})
    ctr2, exp2 = ORACLE.score_table(rows)
    np.testing.assert_allclose(ctr2, ctr)
    np.testing.assert_allclose(exp2, exp)


def _item(**kw):
    base = {"content_id": "c1", "lang": "en", "category": "hotpot", "shop_name": "Jade Hotpot (Riverside)",
            "district": "Riverside", "shop_info": "Jade Hotpot · Riverside", "title": "Jade Hotpot is great",
            "body": "The beef tripe was amazing. Friendly staff."}
    base.update(kw)
    return base


ADVERSARIAL = ["", "   ", "!!!", "😋😋😋", "x" * 1_000_000, "parking parking parking parking", "\u200b\u200d",
               "\u202eabc", "a\x00b", "\ud800lone surrogate", None]


def test_any_string_gets_a_score():
    ctr, exp = ORACLE.score_queries(_item(), ADVERSARIAL)
    assert np.isfinite(ctr).all() and np.isfinite(exp).all()
    assert ((ctr > 0) & (ctr < 1)).all() and ((exp >= 0) & (exp <= 1)).all()
    good_ctr, good_exp = ORACLE.score(_item(), "beef tripe dipping sauce")
    for i, q in enumerate(ADVERSARIAL):
        if q is None or not str(q).strip() or q in ("!!!", "😋😋😋", "parking parking parking parking", "\u200b\u200d"):
            assert ctr[i] < good_ctr / 3 and exp[i] < good_exp / 3, repr(q)


def test_note_already_covering_a_topic_lowers_expansion():
    fresh = ORACLE.score(_item(), "hotpot dipping sauce")[1]
    covered = ORACLE.score(_item(body="We loved the dipping sauce station."), "hotpot dipping sauce")[1]
    assert covered < fresh - 0.3


def test_overlong_queries_lose_ctr():
    short = ORACLE.score(_item(), "beef tripe dipping sauce")[0]
    long = ORACLE.score(_item(), "beef tripe dipping sauce " + " ".join(["really"] * 14))[0]
    assert long < short / 2


def test_chinese_matching_and_word_boundaries():
    zh = _item(lang="zh", shop_name="海底捞火锅(白纸坊店)", district="白纸坊", title="海底捞火锅真实测评",
               body="毛肚很好吃。", shop_info="海底捞火锅(白纸坊店)")
    assert ORACLE.score(zh, "海底捞火锅(白纸坊店)")[1] < 0.1
    assert ORACLE.score(zh, "毛肚蘸料")[1] > 0.7
    # "menu" inside "menus" is no word match in English; in "menu" it is
    assert ORACLE.score(_item(), "jade hotpot menu")[1] > ORACLE.score(_item(), "jade hotpot menus")[1]


def test_unknown_language_or_category_is_scored_not_raised():
    ctr, exp = ORACLE.score_queries(_item(lang="fr", category="bistro"), ["bonjour", "Jade Hotpot (Riverside)"])
    assert np.isfinite(ctr).all() and exp[1] < 0.1


def test_missing_columns_are_reported():
    with pytest.raises(ValueError, match="lacks columns"):
        ORACLE.score_table(pa.table({"query": ["x"]}))
