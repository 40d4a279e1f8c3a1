"""Takedown without regeneration (`cmaq pool purge`): whole items, or the queries that match newly
blocked terms, leave the current version as a delta, in Parquet and the cache together."""
from __future__ import annotations

from pathlib import Path

from pyspark.sql import functions as F

from cmaq.config import CmaqConfig
from cmaq.pool import new_op_id, write_record
from cmaq.pool.lease import writer_lease
from cmaq.pool.versions import current_version
from filters.terms import TermMatcher
from jobs.pool_tables import named_keys, version_frames
from jobs.publish import publish_delta

PURGED = "purged"


def purge(cfg: CmaqConfig, spark, content_ids: list[str] = (), terms: list[str] = ()) -> dict:
    """Takedown without regeneration: whole items, or the queries matching newly blocked terms, leave
    the current version. Their rows move to ``dropped`` with reason ``purged`` (so the takedown is on
    record and survives the next nightly's carry-forward); the change is published as a delta to
    Parquet and the cache under the writer lease."""
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
        # counted before publishing: publishing may compact the deltas these frames were read from
        record.update(queries_removed=n_removed, items_affected=affected.count())
        if n_removed:
            kept = marked.filter(~F.col("_purge")).drop("_purge")
            record["delta"] = publish_delta(spark, cfg, version, purge_delta(frames, affected, kept, removed),
                                            op_id, record)
    write_record(root, op_id, record)
    return record


def purge_delta(frames: dict, affected, kept_pool, removed_pool) -> dict:
    """The delta of a takedown: for each ``affected`` content id, its ``kept_pool`` rows stay served,
    its ``removed_pool`` rows move to ``dropped`` with reason ``purged`` beside its dropped rows, and
    its quarantine rows stay as they are."""
    return {
        "pool": kept_pool.join(affected, "content_id", "left_semi"),
        "dropped": frames["dropped"].join(affected, "content_id", "left_semi").unionByName(
            removed_pool.withColumn("reason", F.lit(PURGED)).select(*frames["dropped"].columns)),
        "quarantine": frames["quarantine"].join(affected, "content_id", "left_semi"),
    }


def item_takedown_delta(frames: dict, content_ids) -> dict:
    """The delta that takes whole items down (a DataFrame of ``content_id``s; those the version does
    not name are ignored)."""
    affected = named_keys(frames).join(content_ids.select("content_id").distinct(), "content_id", "left_semi")
    return purge_delta(frames, affected, frames["pool"].limit(0), frames["pool"].join(affected, "content_id",
                                                                                      "left_semi"))
