"""Operator actions on a published pool: rollback, purge, and publishing a delta (shared by purge
and the nearline refresh). Each takes the single-writer lease and records a manifest under runs/."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from cmaq.config import CmaqConfig
from cmaq.pool import atomic_write, new_op_id, write_record


def rollback(cfg: CmaqConfig, to: str | None = None) -> dict:
    """Move the Parquet `current` pointer and the cache's pointer back together: to ``to``, or to
    the version the current one replaced. The target must still exist in both stores."""
    from cmaq.pool.kv import open_sink, writer_lease
    from cmaq.pool.versions import current_version, read_manifest

    root = Path(cfg.pool.root)
    current = current_version(root)
    if current is None:
        raise FileNotFoundError(f"{root}: nothing published yet, nothing to roll back")
    target = to or read_manifest(root, current).get("previous_version")
    if not target:
        raise ValueError(f"version {current} has no previous version; name one with --to")
    if target == current:
        raise ValueError(f"{target} is already the current version")
    if not (root / "versions" / target / "manifest.json").exists():
        raise FileNotFoundError(f"version {target} is not on disk any more (pool.keep_versions)")
    op_id = new_op_id("rb")
    record = {"op": "rollback", "op_id": op_id, "from": current, "to": target}
    with writer_lease(cfg.pool, f"rollback {op_id}"):
        kv_url = cfg.pool.kv()
        if kv_url:
            sink = open_sink(kv_url, cfg.pool.kv_prefix)
            if target not in sink.versions():
                raise FileNotFoundError(f"version {target} is not in the cache any more (pool.kv_keep)")
            sink.set_pointer(target)
        atomic_write(root / "current", target + "\n")
    write_record(root, op_id, record)
    return record


def publish_delta(spark, cfg: CmaqConfig, version: str, frames: dict, op_id: str, record: dict) -> dict:
    """Add ``frames`` (pool / dropped / quarantine rows of some items) to the current version as a
    delta that replaces those items, in the cache first and then in Parquet.

    Cache: each affected item's key is replaced by one SET (a reader sees its old or its new queries,
    never a mix); an item left without served queries is deleted. Parquet: the delta is written aside
    and renamed into ``deltas/`` with its manifest in one step. A crash between the two leaves the
    cache ahead; rerunning the same operation brings Parquet level."""
    from cmaq.pool.kv import open_sink
    from cmaq.pool.versions import DELTA_MANIFEST, TABLES, kv_items, named_keys, read_pool_table, write_tables

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


def purge(cfg: CmaqConfig, spark, content_ids: list[str] = (), terms: list[str] = ()) -> dict:
    """Takedown without regeneration: whole items, or the queries matching newly blocked terms, leave
    the current version. Their rows move to ``dropped`` with reason ``purged`` (so the takedown is on
    record and survives the next nightly's carry-forward); the change is published as a delta to
    Parquet and the cache under the writer lease."""
    from pyspark.sql import functions as F

    from cmaq.pool.kv import writer_lease
    from cmaq.pool.versions import current_version, version_frames
    from filters.terms import TermMatcher

    if not content_ids and not terms:
        raise ValueError("name --content-id or --term")
    root = Path(cfg.pool.root)
    version = current_version(root)
    if version is None:
        raise FileNotFoundError(f"{root}: nothing published yet")
    op_id = new_op_id("purge")
    matcher = TermMatcher(terms, obfuscation=True, leetspeak=True) if terms else None
    ids = set(content_ids)

    def doomed(content_id: str, query: str) -> bool:
        return content_id in ids or (matcher is not None and matcher.find(query) is not None)

    record = {"op": "purge", "op_id": op_id, "version": version, "content_ids": sorted(ids), "terms": list(terms)}
    with writer_lease(cfg.pool, f"purge {op_id}"):
        frames = version_frames(spark, root / "versions" / version)
        marked = frames["pool"].withColumn("_purge", F.udf(doomed, "boolean")("content_id", "query")).cache()
        affected = marked.filter("_purge").select("content_id").distinct().cache()
        removed = marked.filter("_purge").drop("_purge")
        n_removed = removed.count()
        if n_removed:
            delta = {
                "pool": marked.filter(~F.col("_purge")).drop("_purge").join(affected, "content_id", "left_semi"),
                "dropped": frames["dropped"].join(affected, "content_id", "left_semi").unionByName(
                    removed.withColumn("reason", F.lit("purged")).select(*frames["dropped"].columns)),
                "quarantine": frames["quarantine"].join(affected, "content_id", "left_semi"),
            }
            record["delta"] = publish_delta(spark, cfg, version, delta, op_id, record)
        record.update(queries_removed=n_removed, items_affected=affected.count())
    write_record(root, op_id, record)
    return record

