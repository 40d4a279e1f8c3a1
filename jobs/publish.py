"""Publish: a complete version (the nightly) or a delta of the current one (nearline, purge), in the
cache and in Parquet, each step atomic, the pointers moved last.

    version: cache load + verify ─► cache pointer ─► versions/<id>/ renamed in ─► manifest.json ─► `current`
    delta:   per-item cache upserts / deletes ─► versions/<v>/deltas/<op_id>/ renamed in with its manifest
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from pyspark.sql import functions as F

from cmaq.config import CmaqConfig
from cmaq.pool import atomic_write
from cmaq.pool.loader import load_version
from cmaq.pool.sinks import ARMS_ITEM, encode_arms, item_id, open_sink
from cmaq.pool.versions import DELTA_MANIFEST, tables
from jobs import compact
from jobs.catalog import register_current
from jobs.entry import EXIT_OK
from jobs.pool_tables import (is_armed, item_columns, kv_items, named_keys, read_pool_table, read_version_tables,
                              write_tables)

log = logging.getLogger(__name__)


def publish_version(spark, cfg: CmaqConfig, root: Path, tmp: Path, report, timer) -> None:
    """Load the cache (its pointer moves when the load verifies), then the version directory and
    its manifest, then the Parquet pointer."""
    if cfg.pool.kv():
        with timer("kv_load"):
            split = {a: v["weight"] for a, v in report.arms.items()} if report.arms else None
            report.kv = load_kv(spark, cfg, tmp / "pool", report.run_id, split, report.traffic_salt)
    t0 = time.perf_counter()
    version_dir = root / "versions" / report.run_id
    tmp.rename(version_dir)
    report.status, report.exit_code, report.published_version = "published", EXIT_OK, report.run_id
    report.timings["publish"] = round(time.perf_counter() - t0, 2)
    # The manifest is the version's last file; the pointer moves only after it is in place.
    atomic_write(version_dir / "manifest.json", json.dumps(asdict(report), indent=2, default=str))
    atomic_write(root / "current", report.run_id + "\n")
    with timer("catalog"):
        report.catalog = switch_views(spark, cfg)


def load_kv(spark, cfg: CmaqConfig, pool_dir: Path, version: str, weights: dict | None = None,
            salt: str = "") -> dict:
    """Load every served item of a version into the cache, verify, then move the cache's pointer.
    With arms (``weights``), one value per (arm, content) and the traffic split beside them."""
    pool = read_pool_table(spark, pool_dir, dict(tables(weights is not None))["pool"])
    expected = pool.select(*item_columns(pool)).distinct().count()
    sample: list[tuple[str, bytes]] = []  # the first items as they stream by, read back after the load

    def items():
        if weights is not None:
            yield ARMS_ITEM, encode_arms(weights, salt)
        for item in kv_items(pool, version):
            if len(sample) < 20:
                sample.append(item)
            yield item

    sink = open_sink(cfg.pool.kv(), cfg.pool.kv_prefix)
    return load_version(sink, version, items(), expected + (weights is not None), sample, keep=cfg.pool.kv_keep,
                        grace_s=cfg.pool.kv_grace_s)


def prune_versions(root: Path, keep: int) -> None:
    versions = sorted((p for p in (root / "versions").iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: p.name)
    current = (root / "current").read_text().strip()
    for old in versions[:-keep]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)


def publish_delta(spark, cfg: CmaqConfig, version: str, frames: dict, op_id: str, record: dict,
                  views: bool = True) -> dict:
    """Add ``frames`` (pool / dropped / quarantine rows of some items) to the current version as a
    delta that replaces those items, in the cache first and then in Parquet.

    Cache: each affected item's key is replaced by one SET (a reader sees its old or its new queries,
    never a mix); an item left without served queries is deleted. Parquet: the delta is written aside
    and renamed into ``deltas/`` with its manifest in one step. A crash between the two leaves the
    cache ahead; rerunning the same operation brings Parquet level. ``views``: re-create the catalog's
    views now (the stream does it on its own clock instead: a second or two per batch otherwise)."""
    vdir = Path(cfg.pool.root) / "versions" / version
    tmp = vdir / "deltas" / f".{op_id}.tmp"
    write_tables(frames, tmp, partitioned=False)
    written = read_version_tables(spark, tmp, is_armed(frames))
    key = item_columns(written["pool"])
    named = named_keys(written, key)
    served = written["pool"].select(*key).distinct().withColumn("_served", F.lit(True))
    # Every item the delta names, with whether it is served, cached: a count and the unserved ids read
    # it (a stream pays every Spark job on its latency).
    items = named.join(served, list(key), "left").cache()
    unserved = sorted(item_id(r["content_id"], r["arm"] if "arm" in key else None)
                      for r in items.filter(F.col("_served").isNull()).collect())
    n_items = items.count()
    items.unpersist()
    counts = {"items": n_items, "pool_rows": written["pool"].count(), "items_served": n_items - len(unserved),
              "items_unserved": len(unserved)}
    kv_url = cfg.pool.kv()
    if kv_url:
        sink = open_sink(kv_url, cfg.pool.kv_prefix)
        if version != sink.pointer():
            raise RuntimeError(f"the cache serves {sink.pointer()}, not {version}: roll back or rerun the "
                               f"nightly so both stores agree before changing the current version")
        counts["kv_upserted"] = sink.write(version, kv_items(written["pool"], version))
        sink.delete_items(version, unserved)
        counts["kv_deleted"] = len(unserved)
    manifest = {**record, "version": version, "counts": counts,
                "by_reason": {r[0]: int(r[1]) for r in written["dropped"].groupBy("reason").count().collect()},
                "published_at": datetime.now(timezone.utc).isoformat()}
    atomic_write(tmp / DELTA_MANIFEST, json.dumps(manifest, indent=2, default=str))
    tmp.rename(vdir / "deltas" / op_id)
    if compact.due(vdir, cfg.pool):
        counts["compaction"] = compact.compact_deltas(spark, vdir)
    if views:  # the stream switches them itself, at once after a compaction (its SQL names the folded deltas)
        counts["catalog"] = switch_views(spark, cfg)
    return counts


def switch_views(spark, cfg: CmaqConfig) -> dict:
    """Point the catalog's views at what is now current. The pool is published by then: a catalog
    that fails is logged and recorded (the views still show the previous state), not a failed run."""
    try:
        return register_current(spark, cfg.pool)
    except Exception as exc:  # noqa: BLE001 - recorded in the run record, and logged
        log.exception("catalog views not switched")
        return {"registered": False, "error": f"{type(exc).__name__}: {exc}"}
