"""Publish: a complete version (the nightly) or a delta of the current one (nearline, purge), in the
cache and in Parquet, each step atomic, the pointers moved last.

    version: cache load + verify ─► cache pointer ─► versions/<id>/ renamed in ─► manifest.json ─► `current`
    delta:   per-item cache upserts / deletes ─► versions/<v>/deltas/<op_id>/ renamed in with its manifest
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from cmaq.config import CmaqConfig
from cmaq.pool import atomic_write
from cmaq.pool.loader import load_version
from cmaq.pool.sinks import open_sink
from cmaq.pool.versions import DELTA_MANIFEST, TABLES
from cmaq.schema import POOL_SCHEMA
from jobs.entry import EXIT_OK
from jobs.pool_tables import kv_items, named_keys, read_pool_table, write_tables


def publish_version(spark, cfg: CmaqConfig, root: Path, tmp: Path, report, timer) -> None:
    """Load the cache (its pointer moves when the load verifies), then the version directory and
    its manifest, then the Parquet pointer."""
    if cfg.pool.kv():
        with timer("kv_load"):
            report.kv = load_kv(spark, cfg, tmp / "pool", report.run_id)
    t0 = time.perf_counter()
    version_dir = root / "versions" / report.run_id
    tmp.rename(version_dir)
    report.status, report.exit_code, report.published_version = "published", EXIT_OK, report.run_id
    report.timings["publish"] = round(time.perf_counter() - t0, 2)
    # The manifest is the version's last file; the pointer moves only after it is in place.
    atomic_write(version_dir / "manifest.json", json.dumps(asdict(report), indent=2, default=str))
    atomic_write(root / "current", report.run_id + "\n")


def load_kv(spark, cfg: CmaqConfig, pool_dir: Path, version: str) -> dict:
    """Load every served item of a version into the cache, verify, then move the cache's pointer."""
    pool = read_pool_table(spark, pool_dir, POOL_SCHEMA)
    expected = pool.select("content_id").distinct().count()
    sample = [v for _, v in zip(range(20), kv_items(pool, version))]
    sink = open_sink(cfg.pool.kv(), cfg.pool.kv_prefix)
    return load_version(sink, version, kv_items(pool, version), expected, sample, keep=cfg.pool.kv_keep,
                        grace_s=cfg.pool.kv_grace_s)


def prune_versions(root: Path, keep: int) -> None:
    versions = sorted((p for p in (root / "versions").iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: p.name)
    current = (root / "current").read_text().strip()
    for old in versions[:-keep]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)


def publish_delta(spark, cfg: CmaqConfig, version: str, frames: dict, op_id: str, record: dict) -> dict:
    """Add ``frames`` (pool / dropped / quarantine rows of some items) to the current version as a
    delta that replaces those items, in the cache first and then in Parquet.

    Cache: each affected item's key is replaced by one SET (a reader sees its old or its new queries,
    never a mix); an item left without served queries is deleted. Parquet: the delta is written aside
    and renamed into ``deltas/`` with its manifest in one step. A crash between the two leaves the
    cache ahead; rerunning the same operation brings Parquet level."""
    vdir = Path(cfg.pool.root) / "versions" / version
    tmp = vdir / "deltas" / f".{op_id}.tmp"
    write_tables(frames, tmp)
    written = {name: read_pool_table(spark, tmp / name, schema) for name, schema in TABLES}
    named = named_keys(written)
    served = written["pool"].select("content_id").distinct()
    unserved = sorted(r[0] for r in named.join(served, "content_id", "left_anti").collect())
    counts = {"items": named.count(), "pool_rows": written["pool"].count(), "items_served": served.count(),
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
    return counts
