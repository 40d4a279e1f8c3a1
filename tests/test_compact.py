"""Delta compaction and the linear delta read, on a hand-made version: the base and three deltas
(a refresh, a second refresh, a takedown), each naming some items."""
import json
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from cmaq.config import PoolConfig
from cmaq.pool.versions import DELTA_MANIFEST, committed_deltas, tables
from jobs import compact
from jobs.arrow_spark import spark_schema
from jobs.catalog import view_sql
from jobs.pool_tables import version_frames, write_tables

T0 = datetime(2026, 12, 4, tzinfo=timezone.utc)
PROV = {"content_hash": "h", "category": "hotpot", "model_version": "m", "adapter_version": "a", "config_hash": "c",
        "generated_at": T0}


def _layer(spark, out: Path, pool=(), dropped=(), quarantine=(), manifest: dict | None = None) -> None:
    """One layer's three tables from (content_id, query-or-reason, run_id) triples."""
    rows = {
        "pool": [{**PROV, "content_id": c, "rank": i, "query": q, "logprob": -1.0, "run_id": r,
                  **{s: None for s in ("score_lexical", "score_harm", "score_commercial", "score_similarity",
                                       "score_relevance")}} for i, (c, q, r) in enumerate(pool)],
        "dropped": [{**PROV, "content_id": c, "rank": 0, "query": "x", "reason": q, "run_id": r}
                    for c, q, r in dropped],
        "quarantine": [{**PROV, "content_id": c, "reason": q, "detail": None, "run_id": r} for c, q, r in quarantine],
    }
    frames = {name: spark.createDataFrame(rows[name], spark_schema(schema)) for name, schema in tables(False)}
    write_tables(frames, out)
    if manifest is not None:
        (out / DELTA_MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture()
def version(spark, tmp_path):
    vdir = tmp_path / "versions" / "v1"
    _layer(spark, vdir, pool=[("a", "a base", "v1"), ("b", "b base", "v1"), ("c", "c base", "v1"),
                              ("d", "d base", "v1")], quarantine=[("e", "too_long", "v1")])
    (vdir / "manifest.json").write_text("{}")
    deltas = vdir / "deltas"
    _layer(spark, deltas / "20261204T100000-nearline-aaaaaa", pool=[("a", "a one", "d1"), ("f", "f one", "d1")],
           manifest={})
    _layer(spark, deltas / "20261204T100100-nearline-bbbbbb", pool=[("a", "a two", "d2")],
           dropped=[("b", "low_relevance", "d2")], manifest={})
    _layer(spark, deltas / "20261204T100200-purge-cccccc", dropped=[("c", "purged", "d3")], manifest={})
    _layer(spark, deltas / ".20261204T100300-nearline-dddddd.tmp", pool=[("d", "uncommitted", "d4")])
    return vdir


def _rows(frames: dict) -> dict:
    return {name: sorted((r["content_id"], r["query"] if name == "pool" else r["reason"], r["run_id"])
                         for r in df.collect()) for name, df in frames.items()}


# each item's rows from the newest layer that names it; the uncommitted delta counts for nothing
EXPECTED = {"pool": [("a", "a two", "d2"), ("d", "d base", "v1"), ("f", "f one", "d1")],
            "dropped": [("b", "low_relevance", "d2"), ("c", "purged", "d3")],
            "quarantine": [("e", "too_long", "v1")]}


def test_deltas_read_newest_first_and_compaction_keeps_every_row(spark, version):
    assert _rows(version_frames(spark, version)) == EXPECTED
    views = {t: spark.sql(view_sql(version, t)) for t, _ in tables(False)}
    assert _rows(views) == EXPECTED  # the analysts' views read the same

    done = compact.compact_deltas(spark, version)
    assert done["compacted"] == 3
    [only] = committed_deltas(version)
    assert only.name == "20261204T100200-purge-cccccc-c3" and done["into"] == only.name
    assert sorted(p.name for p in (version / "deltas").iterdir() if not p.name.startswith(".")) == [only.name]
    assert _rows(version_frames(spark, version)) == EXPECTED
    assert _rows({t: spark.sql(view_sql(version, t)) for t, _ in tables(False)}) == EXPECTED

    # a later delta sorts after the compacted one and wins for the items it names
    _layer(spark, version / "deltas" / "20261204T100400-nearline-eeeeee", pool=[("b", "b back", "d5")], manifest={})
    after = _rows(version_frames(spark, version))
    assert after["pool"] == sorted(EXPECTED["pool"] + [("b", "b back", "d5")]) and ("b", "low_relevance", "d2") \
        not in after["dropped"]
    assert compact.compact_deltas(spark, version)["compacted"] == 2
    assert _rows(version_frames(spark, version)) == after


def test_a_crash_after_the_commit_leaves_nothing_read_twice(spark, version):
    old = version / "deltas" / "20261204T100000-nearline-aaaaaa"
    keep = version.parent / "kept-copy"
    shutil.copytree(old, keep)
    compact.compact_deltas(spark, version)
    shutil.copytree(keep, old)  # as if the compaction died before removing what it covers
    assert [d.name for d in committed_deltas(version)] == ["20261204T100200-purge-cccccc-c3"]
    assert _rows(version_frames(spark, version)) == EXPECTED
    assert compact.remove_covered(version) == [old.name] and not old.exists()


def test_compaction_is_due_by_count_or_age(spark, version):
    many, old = PoolConfig(compact_every=3, compact_every_min=0), PoolConfig(compact_every=0, compact_every_min=30)
    assert compact.due(version, many) and not compact.due(version, PoolConfig(compact_every=4, compact_every_min=0))
    assert not compact.due(version, old) and compact.due(version, old, now=time.time() + 31 * 60)
    assert not compact.due(version, PoolConfig(compact_every=0, compact_every_min=0), now=time.time() + 10 ** 6)


def test_pool_compact_command(spark, version):
    from click.testing import CliRunner

    from cmaq.cli import main as cli
    from conftest import command_json

    root = version.parent.parent
    args = ["--set", f"pool.root={root}", "--set", "pool.kv_url=none", "--set", "pool.catalog=none"]
    missing = CliRunner().invoke(cli, [*args, "pool", "compact"])
    assert missing.exit_code == 2 and "nothing published" in missing.output
    (root / "current").write_text("v1\n")
    done = CliRunner().invoke(cli, [*args, "pool", "compact"])
    assert done.exit_code == 0, done.output
    record = command_json(done.output)
    assert record["compacted"] == 3 and record["version"] == "v1"
    assert json.loads((root / "runs" / f"{record['op_id']}.json").read_text())["into"] == record["into"]
    assert _rows(version_frames(spark, version)) == EXPECTED
