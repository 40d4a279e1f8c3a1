"""The query-style check: is a top beam the note's own kind of query, and how many distinct ones."""
import pandas as pd
import pyarrow.parquet as pq

from training.evaluate.style import is_own_kind, style_summary


def test_own_kind_counts_grammar_queries_and_near_misses_but_not_copies(small_world):
    truth = pq.read_table(small_world / "truth/grammar").to_pandas()
    notes = sorted(truth.content_id.unique())[:40]
    per_note = truth[truth.content_id.isin(notes)].groupby("content_id")
    entity = per_note.apply(lambda g: g[g.kind == "entity"]["query"].iloc[0], include_groups=False)
    shop = per_note.apply(lambda g: g[g.kind == "shop_copy"]["query"].iloc[0], include_groups=False)
    other = list(entity.iloc[1:]) + [entity.iloc[0]]        # each note gets its neighbour's entity query
    rows = pd.concat([
        pd.DataFrame({"policy": "own", "content_id": entity.index, "query": list(entity)}),
        pd.DataFrame({"policy": "own-typo", "content_id": entity.index, "query": [q[:-1] for q in entity]}),
        pd.DataFrame({"policy": "copy", "content_id": shop.index, "query": list(shop)}),
        pd.DataFrame({"policy": "constant", "content_id": entity.index, "query": "opening hours"}),
        pd.DataFrame({"policy": "phrases", "content_id": entity.index,
                      "query": list(per_note.apply(lambda g: g[g.kind == "generic"]["query"].iloc[0],
                                                   include_groups=False))}),
        pd.DataFrame({"policy": "neighbour", "content_id": entity.index, "query": other}),
    ])
    summary = style_summary(rows, small_world).set_index("policy")
    assert summary.loc["own", "own_kind_share"] == 1.0 and summary.loc["own", "distinct_top1"] == 40
    assert summary.loc["own-typo", "own_kind_share"] >= 0.9
    assert summary.loc["copy", "own_kind_share"] == 0.0
    assert summary.loc["constant", "distinct_top1"] == 1
    assert summary.loc["phrases", "own_kind_share"] == 0.0  # the note's own generic phrase is no evidence
    assert summary.loc["neighbour", "own_kind_share"] < 0.3
    assert (summary["contents"] == 40).all()
    assert not is_own_kind("", ["anything"]) and is_own_kind("Jade Hotpot  BEEF tripe", ["jade hotpot beef tripe"])
    # a copy of the shop name is not the note's "shop + booking", however close the two strings are
    assert not is_own_kind("Jade Hotpot", ["jade hotpot deal"], ["jade hotpot"])
    assert is_own_kind("jade hotpot deals", ["jade hotpot deal"], ["jade hotpot"])
