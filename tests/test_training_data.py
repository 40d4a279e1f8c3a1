"""Training-data builders on a real local SparkSession."""
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from statsmodels.stats.proportion import proportions_ztest

from cmaq.config import load_config
from cmaq.text import normalize
from jobs.data.builders import run
from jobs.data.stats import two_proportion_ztest
from world_truth import answer_key


def test_ztest_equals_statsmodels_on_1000_random_pairs():
    rng = np.random.default_rng(0)
    n1, n2 = rng.integers(101, 100_000, 1000), rng.integers(101, 100_000, 1000)
    c1, c2 = rng.binomial(n1, rng.uniform(0.01, 0.6, 1000)), rng.binomial(n2, rng.uniform(0.01, 0.6, 1000))
    z, p = two_proportion_ztest(c1, n1, c2, n2)
    for i in range(1000):
        ez, ep = proportions_ztest([c1[i], c2[i]], [n1[i], n2[i]])
        assert abs(z[i] - ez) < 1e-9 and abs(p[i] - ep) < 1e-9
    z0, p0 = two_proportion_ztest([0], [200], [0], [300])
    assert np.isnan(z0[0]) and np.isnan(p0[0])


@pytest.fixture(scope="module")
def built(spark, small_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    cfg = load_config(None, ["data.per_category_cap=30", "data.min_impressions=20"])
    summaries = {kind: run(kind, cfg, str(small_world), str(out), spark) for kind in ("sft", "ctr-pairs", "expansion")}
    return out, summaries, cfg


def test_sft_rows_steps_and_cap(built):
    out, summaries, cfg = built
    sft = pq.read_table(out / "sft").to_pandas()
    s = summaries["sft"]
    assert s["written"] == len(sft) > 0
    assert sft.groupby("category").size().max() <= cfg.data.per_category_cap
    assert (sft.impressions >= cfg.data.min_impressions).all() and (sft.ctr >= s["ctr_cutoff"]).all()
    for step in ("window", "min impressions", "filters (training chain)", "ctr percentile cutoff", "per-category cap"):
        assert step in s["removed"], step
    assert any(k.startswith("filter:") for k in s["removed"])
    assert s["removed"]["per-category cap"] > 0
    # commercial, shop-name copies and over-long queries are gone
    assert not sft["query"].str.contains("coupon|discount|优惠券|团购", case=False).any()
    assert not (sft["query"].str.lower() == sft["shop_name"].str.lower()).any()
    for col in ("lang", "category", "title", "body", "shop_name", "shop_info"):
        assert sft[col].notna().all()
    assert json.loads((out / "summary_sft.json").read_text())["written"] == len(sft)


def test_no_training_content_matches_a_test_content(built):
    out, _, _ = built
    sft = pq.read_table(out / "sft").to_pandas()
    test = pq.read_table(out / "test_contents").to_pandas()
    key = lambda df: set((df.title.fillna("") + " " + df.body.fillna("")).map(normalize))
    assert len(test) > 0 and not key(sft) & key(test)
    assert not set(sft.content_id) & set(test.content_id)


def test_ctr_pairs_order_like_the_truth(built, small_world):
    out, summaries, cfg = built
    pairs = pq.read_table(out / "ctr_pairs").to_pandas()
    truth = answer_key(small_world)[["content_id", "query", "true_ctr"]]
    m = (pairs.merge(truth.rename(columns={"query": "y_plus", "true_ctr": "t_plus"}), on=["content_id", "y_plus"])
         .merge(truth.rename(columns={"query": "y_minus", "true_ctr": "t_minus"}), on=["content_id", "y_minus"]))
    assert len(m) == len(pairs) > 200
    assert (m.t_plus > m.t_minus).mean() >= 0.95
    assert (pairs.p < cfg.data.pair_alpha).all() and (pairs.z > 0).all()
    assert (pairs.impressions_plus > cfg.data.pair_min_impressions).all()
    assert (pairs.clicks_plus / pairs.impressions_plus > pairs.clicks_minus / pairs.impressions_minus).all()
    assert pairs.groupby("content_id").size().max() <= cfg.data.max_pairs_per_content
    assert set(pairs.split) == {"train", "validation", "test"}
    assert pairs.groupby("content_id").split.nunique().max() == 1  # split by content


def test_expansion_labels_split_by_content(built):
    out, summaries, _ = built
    exp = pq.read_table(out / "expansion").to_pandas()
    assert set(exp.label) == {0, 1} and exp.groupby("content_id").split.nunique().max() == 1
    bal = summaries["expansion"]["label_balance"]
    assert set(bal) == {"train", "validation", "test"} and 0.2 < bal["train"]["positive_rate"] < 0.7


def test_same_seed_same_output(built, spark, small_world, tmp_path):
    out, _, cfg = built
    run("sft", cfg, str(small_world), str(tmp_path), spark)
    a = pq.read_table(out / "sft").to_pandas()
    b = pq.read_table(tmp_path / "sft").to_pandas()
    pd.testing.assert_frame_equal(a, b)


def test_bad_rows_are_set_aside_with_reasons(spark, small_world, tmp_path):
    logs = pq.read_table(small_world / "logs").to_pandas().head(2000)
    bad = pd.DataFrame([
        {"content_id": None, "query": "x", "month": logs.month[0], "impressions": 10, "clicks": 1},
        {"content_id": "c000000001", "query": "y", "month": logs.month[0], "impressions": -5, "clicks": 1},
        {"content_id": "c000000001", "query": "z", "month": logs.month[0], "impressions": 5, "clicks": 9},
        {"content_id": "no-such-item", "query": "w", "month": logs.month[0], "impressions": 500, "clicks": 9},
    ])
    mixed = pd.concat([logs, bad], ignore_index=True)
    mixed.impressions = mixed.impressions.astype("int64")
    mixed.clicks = mixed.clicks.astype("int64")
    path = tmp_path / "logs.parquet"
    mixed.to_parquet(path, index=False)
    cfg = load_config(None, ["data.min_impressions=1"])
    s = run("sft", cfg, str(small_world), str(tmp_path / "out"), spark, logs=str(path))
    assert s["bad_rows"] == {"null_content_id": 1, "negative_counts": 1, "clicks_exceed_impressions": 1,
                             "unknown_content": 1}
    rows = pq.read_table(tmp_path / "out" / "bad_rows_sft").to_pandas()
    assert len(rows) == 4 and rows.row.str.contains('"query"').all()


def test_content_without_a_district_builds_with_null_districts(spark, small_world, tmp_path):
    content = pq.read_table(small_world / "content").to_pandas().drop(columns=["district"])
    path = tmp_path / "content.parquet"
    content.to_parquet(path, index=False)
    s = run("sft", load_config(None, []), str(small_world), str(tmp_path / "out"), spark, content=str(path))
    assert s["written"] > 0
    held_out = pq.read_table(tmp_path / "out" / "test_contents").to_pandas()
    sft = pq.read_table(tmp_path / "out" / "sft").to_pandas()
    assert len(held_out) and held_out["district"].isna().all() and sft["district"].isna().all()
