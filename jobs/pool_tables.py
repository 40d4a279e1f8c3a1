"""A pool version's tables as Spark DataFrames: base tables plus the nearline deltas added to it.

Every reader of a version (the next nightly's carry-forward, nearline, the SQL views, purge, scoring)
goes through :func:`version_frames`, so they all agree on what the version holds.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

from pyspark.sql import functions as F

from cmaq.pool.sinks import encode_value
from cmaq.pool.versions import TABLES, committed_deltas
from jobs.arrow_spark import empty_frame, spark_schema
from jobs.contract import REASONS as CONTRACT_REASONS


def read_pool_table(spark, path: Path, schema):
    """One of a version's tables. The schema is given, not inferred: a table with no rows (a delta
    without quarantined items) may hold no Parquet file to infer it from."""
    if not path.exists():
        return empty_frame(spark, schema)
    return spark.read.schema(spark_schema(schema)).parquet(str(path)).select(*schema.names)


def named_keys(frames: dict, columns: tuple[str, ...] = ("content_id",)):
    """The distinct ``columns`` over a version's pool, dropped and quarantine tables: the items (or
    record keys) those tables name, whichever table a row is in."""
    out = None
    for df in frames.values():
        part = df.select(*columns)
        out = part if out is None else out.unionByName(part)
    return out.distinct()


def unaccounted(frames: dict, expected_ids) -> tuple[int, int]:
    """(missing, unexpected): expected content ids the tables do not name, and named ids not expected."""
    named = named_keys(frames)
    expected = expected_ids.select("content_id").distinct()
    return (expected.join(named, "content_id", "left_anti").count(),
            named.join(expected, "content_id", "left_anti").count())


def version_frames(spark, vdir: Path) -> dict:
    """The effective ``pool`` / ``dropped`` / ``quarantine`` DataFrames of a version directory."""
    frames = {name: read_pool_table(spark, vdir / name, schema) for name, schema in TABLES}
    for delta in committed_deltas(vdir):
        parts = {name: read_pool_table(spark, delta / name, schema) for name, schema in TABLES}
        named = named_keys(parts)
        frames = {name: frames[name].join(named, "content_id", "left_anti").unionByName(parts[name])
                  for name in frames}
    return frames


def generated_frames(frames: dict) -> dict:
    """A version's frames without the rows the input contract set aside (duplicate ids, rows without
    an id, ...): what the version made, as carry-forward and the nearline's classification read it."""
    return {**frames, "quarantine": frames["quarantine"].filter(~F.col("reason").isin(*CONTRACT_REASONS))}


def kv_items(pool, version: str) -> Iterator[tuple[str, bytes]]:
    """(content_id, encoded value) per item of a pool DataFrame, queries in rank order. Items stream
    through the driver one partition at a time, so memory stays bounded."""
    per_item = (pool.groupBy("content_id")
                .agg(F.sort_array(F.collect_list(F.struct("rank", "query", "logprob", "score_relevance"))).alias("q")))
    for row in per_item.toLocalIterator():
        queries = [{"rank": r["rank"], "query": r["query"], "logprob": r["logprob"], "relevance": r["score_relevance"]}
                   for r in row["q"]]
        yield row["content_id"], encode_value(row["content_id"], version, queries)


def write_tables(frames: dict, out_dir: Path) -> None:
    """pool (partitioned by category), dropped and quarantine under ``out_dir``, replacing a
    half-written directory left by a crash."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    frames["pool"].write.partitionBy("category").parquet(str(out_dir / "pool"))
    frames["dropped"].write.parquet(str(out_dir / "dropped"))
    frames["quarantine"].write.parquet(str(out_dir / "quarantine"))
