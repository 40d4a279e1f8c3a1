import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cmaq.config import WorldConfig
from cmaq.schema import ANNOTATION_SCHEMA, CONTENT_SCHEMA, GRAMMAR_TRUTH_SCHEMA, LOG_SCHEMA, MISTAKE_TRUTH_SCHEMA
from cmaq.world.mistakes import SOURCES
from cmaq.world.oracle import Oracle
from world_truth import answer_key
from cmaq.world.generate import default_workers, generate_world, month_starts



def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_and_size_give_identical_files(small_world, small_world_config, tmp_path):
    again = tmp_path / "again"
    generate_world(small_world_config, again)
    first, second = _digests(small_world), _digests(again)
    assert len(first) >= 16  # 5 tables x 3 parts + world.json
    assert first == second
    other = tmp_path / "other"
    generate_world(WorldConfig(seed=8, items=600, chunk_items=128, items_per_file=256), other)
    assert _digests(other)["content/part-00000.parquet"] != first["content/part-00000.parquet"]


def test_the_files_do_not_depend_on_the_number_of_processes(small_world, small_world_config, tmp_path):
    assert default_workers(small_world_config) == min(2, os.cpu_count() or 1)  # what the CLI would use
    two, three = tmp_path / "two", tmp_path / "three"
    generate_world(small_world_config, two, workers=2)
    generate_world(small_world_config, three, workers=3)
    assert _digests(two) == _digests(small_world) == _digests(three)  # the fixture's world: one process


def test_tables_follow_their_schemas(small_world):
    for name, schema in (("content", CONTENT_SCHEMA), ("logs", LOG_SCHEMA), ("annotations", ANNOTATION_SCHEMA),
                         ("truth/grammar", GRAMMAR_TRUTH_SCHEMA), ("truth/mistakes", MISTAKE_TRUTH_SCHEMA)):
        parts = sorted((small_world / name).glob("part-*.parquet"))
        assert len(parts) == 3, name  # 600 items, 256 per file
        for part in parts:
            assert pq.read_schema(part).equals(schema, check_metadata=False), (name, part)


def test_manifest_counts_match_the_files(small_world):
    manifest = json.loads((small_world / "world.json").read_text())
    for name, key in (("content", "content"), ("logs", "logs"), ("annotations", "annotations"),
                      ("truth/grammar", "grammar_truth"), ("truth/mistakes", "mistake_truth")):
        assert pq.read_table(small_world / name).num_rows == manifest["counts"][key]
    assert manifest["counts"]["content"] == 600
    assert set(manifest["langs"]) == {"en", "zh"}
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((small_world / rel).read_bytes()).hexdigest() == digest


def test_content_ids_are_unique_and_fields_filled(small_world):
    content = pq.read_table(small_world / "content").to_pandas()
    assert content.content_id.is_unique
    for col in ("shop_name", "district", "shop_info", "title", "body"):
        assert (content[col].str.len() > 0).all(), col


def test_logs_are_consistent_and_heavy_tailed(small_world, small_world_config):
    logs = pq.read_table(small_world / "logs").to_pandas()
    content_ids = set(pq.read_table(small_world / "content")["content_id"].to_pylist())
    assert set(logs.content_id) <= content_ids
    assert ((logs.clicks >= 0) & (logs.clicks <= logs.impressions) & (logs.impressions > 0)).all()
    months = set(month_starts(small_world_config.end_month, small_world_config.months))
    assert set(logs.month) == months  # all 12 months appear, none outside the window
    assert not logs.duplicated(["content_id", "query", "month"]).any()
    per_query = logs.groupby(["content_id", "query"]).impressions.sum()
    assert per_query.max() > 20 * per_query.median()  # heavy tail
    exposed = logs.merge(answer_key(small_world), on=["content_id", "query"], how="left")
    assert exposed.source.notna().all()  # every exposed query is in the answer key
    own = exposed[~exposed.mistaken.astype(bool)].groupby("content_id")["query"].nunique()
    assert own.min() >= 1 and own.max() <= small_world_config.exposed_max


def test_mistaken_exposures_are_a_share_of_the_logs_from_every_source(small_world, small_world_config):
    logs = pq.read_table(small_world / "logs").to_pandas()
    pairs = logs[["content_id", "query"]].drop_duplicates().merge(answer_key(small_world),
                                                                  on=["content_id", "query"])
    share = pairs.mistaken.mean()
    assert abs(share - small_world_config.mistaken_share) < 0.04, share
    assert set(pairs[pairs.mistaken].source) == set(SOURCES)
    # Another note's query is one of that note's grammar queries, shown under a note of the same
    # category (or district); never one of this note's own.
    truth = pq.read_table(small_world / "truth/grammar").to_pandas()
    content = pq.read_table(small_world / "content").to_pandas().set_index("content_id")
    owners = truth.merge(content[["category"]], left_on="content_id", right_index=True)
    same_cat = pairs[pairs.source == "same_category"].merge(content[["category"]], left_on="content_id",
                                                             right_index=True)
    found = same_cat.merge(owners, on=["query", "category"], suffixes=("", "_owner"))
    found = found[found.content_id != found.content_id_owner]
    assert found[["content_id", "query"]].drop_duplicates().shape[0] == len(same_cat) > 50
    own = truth.assign(key=truth["query"].str.strip().str.lower())[["content_id", "key"]]
    clash = pairs[pairs.mistaken].assign(key=lambda d: d["query"].str.strip().str.lower()).merge(own)
    assert clash.empty


def test_no_mistakes_when_their_share_is_zero(tmp_path):
    out = tmp_path / "clean"
    generate_world(WorldConfig(seed=3, items=300, mistaken_share=0.0, annotated_mistaken_share=0.0), out)
    logs = pq.read_table(out / "logs").to_pandas()
    mistakes = pq.read_table(out / "truth/mistakes").to_pandas()
    assert mistakes.empty
    assert logs.merge(answer_key(out), on=["content_id", "query"]).source.isin(
        pq.read_table(out / "truth/grammar")["kind"].to_pylist()).all()


def test_clicks_follow_true_ctr_for_the_note_shown_under(small_world):
    logs = pq.read_table(small_world / "logs").to_pandas()
    agg = logs.groupby(["content_id", "query"])[["impressions", "clicks"]].sum().reset_index()
    merged = agg.merge(answer_key(small_world), on=["content_id", "query"], how="left")
    assert merged.true_ctr.notna().all()
    big = merged[merged.impressions >= 2000]
    observed = big.clicks / big.impressions
    assert np.corrcoef(observed, big.true_ctr)[0, 1] > 0.97
    # The answer key of a mistaken exposure is the oracle's judgement under the note it was shown
    # under, not under the note the query came from.
    content = pq.read_table(small_world / "content").to_pandas()
    wrong = merged[merged.mistaken.astype(bool)].merge(content, on="content_id")
    rescored, _ = Oracle().score_table(wrong)
    assert np.allclose(rescored, wrong.true_ctr)
    big_wrong = wrong[wrong.impressions >= 1000]
    assert len(big_wrong) >= 20
    assert abs((big_wrong.clicks.sum() / big_wrong.impressions.sum())
               / np.average(big_wrong.true_ctr, weights=big_wrong.impressions) - 1) < 0.1


def test_annotations_have_the_configured_noise_and_mistaken_pairs(tmp_path):
    out = tmp_path / "noise"
    cfg = WorldConfig(seed=5, items=3000, annotated_fraction=1.0)
    generate_world(cfg, out)
    ann = pq.read_table(out / "annotations").to_pandas()
    merged = ann.merge(answer_key(out), on=["content_id", "query"])
    assert len(merged) == len(ann)
    # A note with too few distinct mistaken candidates gets fewer mistaken annotations.
    assert 0.97 * 3000 * cfg.annotations_per_item <= len(ann) <= 3000 * cfg.annotations_per_item
    assert abs(merged.mistaken.mean() - cfg.annotated_mistaken_share) < 0.03
    clean = (merged.true_exp > 0.5).astype(int)
    for part in (merged, merged[merged.mistaken], merged[~merged.mistaken]):
        agreement = (clean[part.index] == part.label).mean()
        assert abs(agreement - (1 - cfg.annotator_noise)) < 0.03
    assert 0.25 < merged.label.mean() < 0.6


def test_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError):
        generate_world(WorldConfig(items=10), tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "precious"
