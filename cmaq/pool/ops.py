"""Operator actions on a published pool that need no regeneration: rollback (purge and nearline
refresh follow). Each takes the single-writer lease and records a manifest under runs/."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from pathlib import Path

from cmaq.config import CmaqConfig
from cmaq.pool import atomic_write


def rollback(cfg: CmaqConfig, to: str | None = None) -> dict:
    """Move the Parquet `current` pointer and the cache's pointer back together: to ``to``, or to
    the version the current one replaced. The target must still exist in both stores."""
    from cmaq.pool.kv import Lease, open_sink

    root = Path(cfg.pool.root)
    pointer = root / "current"
    if not pointer.exists():
        raise FileNotFoundError(f"{root}: nothing published yet, nothing to roll back")
    current = pointer.read_text().strip()
    manifest = json.loads((root / "versions" / current / "manifest.json").read_text())
    target = to or manifest.get("previous_version")
    if not target:
        raise ValueError(f"version {current} has no previous version; name one with --to")
    if target == current:
        raise ValueError(f"{target} is already the current version")
    if not (root / "versions" / target / "manifest.json").exists():
        raise FileNotFoundError(f"version {target} is not on disk any more (pool.keep_versions)")
    op_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-rb-" + uuid.uuid4().hex[:6]
    record = {"op": "rollback", "op_id": op_id, "from": current, "to": target}
    kv_url = cfg.pool.kv()
    if kv_url:
        sink = open_sink(kv_url, cfg.pool.kv_prefix)
        with Lease(sink, f"rollback {op_id}", cfg.pool.lease_ttl_s):
            if target not in sink.versions():
                raise FileNotFoundError(f"version {target} is not in the cache any more (pool.kv_keep)")
            sink.set_pointer(target)
            atomic_write(pointer, target + "\n")
    else:
        atomic_write(pointer, target + "\n")
    (root / "runs").mkdir(exist_ok=True)
    atomic_write(root / "runs" / f"{op_id}.json", json.dumps(record, indent=2))
    return record


def purge(cfg: CmaqConfig, spark, content_ids: list[str] = (), terms: list[str] = ()) -> dict:
    """Takedown without regeneration: remove whole items, or the queries matching newly blocked
    terms, from the current version — its Parquet tables rewritten in place and swapped in, and the
    affected cache keys replaced (or deleted when nothing is left) — under the writer lease."""
    import shutil

    from pyspark.sql import functions as F

    from cmaq.pool.kv import Lease, encode_value, open_sink
    from filters.terms import TermMatcher

    if not content_ids and not terms:
        raise ValueError("name --content-id or --term")
    root = Path(cfg.pool.root)
    pointer = root / "current"
    if not pointer.exists():
        raise FileNotFoundError(f"{root}: nothing published yet")
    version = pointer.read_text().strip()
    vdir = root / "versions" / version
    op_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-purge-" + uuid.uuid4().hex[:6]
    matcher = TermMatcher(terms, obfuscation=True, leetspeak=True) if terms else None
    ids = set(content_ids)

    def doomed(content_id: str, query: str) -> bool:
        return content_id in ids or (matcher is not None and matcher.find(query) is not None)

    kv_url = cfg.pool.kv()
    sink = open_sink(kv_url, cfg.pool.kv_prefix) if kv_url else None

    def run() -> dict:
        pool = spark.read.parquet(str(vdir / "pool"))
        flag = F.udf(doomed, "boolean")
        marked = pool.withColumn("_purge", flag("content_id", "query")).cache()
        removed = marked.filter("_purge")
        affected = sorted(r[0] for r in removed.select("content_id").distinct().collect())
        n_removed = removed.count()
        kept = marked.filter(~F.col("_purge")).drop("_purge")
        tmp = vdir / f".pool.{op_id}"
        kept.write.partitionBy("category").parquet(str(tmp))
        old = vdir / f".pool.old.{op_id}"
        (vdir / "pool").rename(old)
        tmp.rename(vdir / "pool")
        shutil.rmtree(old, ignore_errors=True)
        if sink is not None and affected:
            left = (spark.read.parquet(str(vdir / "pool")).filter(F.col("content_id").isin(affected))
                    .groupBy("content_id").agg(F.sort_array(F.collect_list(
                        F.struct("rank", "query", "logprob", "score_relevance"))).alias("q")).collect())
            values = [(r["content_id"], encode_value(r["content_id"], version, [
                {"rank": x["rank"], "query": x["query"], "logprob": x["logprob"], "relevance": x["score_relevance"]}
                for x in r["q"]])) for r in left]
            sink.write(version, values)  # each key replaced in one SET: readers see old or new
            sink.delete_items(version, sorted(set(affected) - {c for c, _ in values}))
        return {"queries_removed": n_removed, "items_affected": len(affected)}

    record = {"op": "purge", "op_id": op_id, "version": version, "content_ids": sorted(ids), "terms": list(terms)}
    if sink is not None:
        with Lease(sink, f"purge {op_id}", cfg.pool.lease_ttl_s):
            record.update(run())
    else:
        record.update(run())
    (root / "runs").mkdir(exist_ok=True)
    atomic_write(root / "runs" / f"{op_id}.json", json.dumps(record, indent=2))
    return record
