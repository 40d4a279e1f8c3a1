import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cmaq.config import WorldConfig
from cmaq.schema import ANNOTATION_SCHEMA, CONTENT_SCHEMA, GRAMMAR_TRUTH_SCHEMA, LOG_SCHEMA
from cmaq.world.generate import generate_world, month_starts


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_and_size_give_identical_files(small_world, small_world_config, tmp_path):
    again = tmp_path / "again"
    generate_world(small_world_config, again)
    first, second = _digests(small_world), _digests(again)
    assert len(first) >= 13  # 4 tables x 3 parts + world.json
    assert first == second
    other = tmp_path / "other"
    generate_world(WorldConfig(seed=8, items=600, chunk_items=128, items_per_file=256), other)
    assert _digests(other)["content/part-00000.parquet"] != first["content/part-00000.parquet"]


def test_tables_follow_their_schemas(small_world):
    for name, schema in (("content", CONTENT_SCHEMA), ("logs", LOG_SCHEMA), ("annotations", ANNOTATION_SCHEMA),
                         ("truth/grammar", GRAMMAR_TRUTH_SCHEMA)):
        parts = sorted((small_world / name).glob("part-*.parquet"))
        assert len(parts) == 3, name  # 600 items, 256 per file
        for part in parts:
            assert pq.read_schema(part).equals(schema, check_metadata=False), (name, part)


def test_manifest_counts_match_the_files(small_world):
    manifest = json.loads((small_world / "world.json").read_text())
    for name, key in (("content", "content"), ("logs", "logs"), ("annotations", "annotations"),
                      ("truth/grammar", "grammar_truth")):
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
    exposed = logs.groupby("content_id")["query"].nunique()
    assert exposed.min() >= 1 and exposed.max() <= small_world_config.exposed_max


def test_clicks_follow_true_ctr(small_world):
    logs = pq.read_table(small_world / "logs").to_pandas()
    truth = pq.read_table(small_world / "truth/grammar").to_pandas()
    agg = logs.groupby(["content_id", "query"])[["impressions", "clicks"]].sum().reset_index()
    merged = agg.merge(truth, on=["content_id", "query"], how="left")
    assert merged.true_ctr.notna().all()  # every exposed query comes from the grammar
    big = merged[merged.impressions >= 2000]
    observed = big.clicks / big.impressions
    assert np.corrcoef(observed, big.true_ctr)[0, 1] > 0.97


def test_annotations_have_the_configured_noise(tmp_path):
    out = tmp_path / "noise"
    cfg = WorldConfig(seed=5, items=3000, annotated_fraction=1.0)
    generate_world(cfg, out)
    ann = pq.read_table(out / "annotations").to_pandas()
    truth = pq.read_table(out / "truth/grammar").to_pandas()
    merged = ann.merge(truth, on=["content_id", "query"])
    assert len(merged) == len(ann) == 3000 * cfg.annotations_per_item
    clean = (merged.true_exp > 0.5).astype(int)
    agreement = (clean == merged.label).mean()
    assert abs(agreement - (1 - cfg.annotator_noise)) < 0.02
    assert 0.25 < merged.label.mean() < 0.6


def test_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError):
        generate_world(WorldConfig(items=10), tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "precious"
