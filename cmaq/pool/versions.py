"""Reading a published pool version: its base tables plus the nearline deltas added to it.

A version directory holds the nightly's tables (``pool``, ``dropped``, ``quarantine``) and, under
``deltas/<delta_id>/``, the tables of each nearline refresh since. A delta replaces every row of the
items it names, so the version a reader sees is: base rows of items no delta names, plus each item's
rows from the newest delta that names it. Every reader of a version (the next nightly's carry-forward,
the SQL views, purge) goes through :func:`version_frames` so they all agree.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator

from cmaq.schema import DROPPED_SCHEMA, POOL_SCHEMA, QUARANTINE_SCHEMA

TABLES = (("pool", POOL_SCHEMA), ("dropped", DROPPED_SCHEMA), ("quarantine", QUARANTINE_SCHEMA))
DELTA_MANIFEST = "manifest.json"  # written last: a delta without it is not part of the version


def current_version(root: str | Path) -> str | None:
    pointer = Path(root) / "current"
    return pointer.read_text().strip() if pointer.exists() else None


def read_manifest(root: str | Path, version: str) -> dict:
    return json.loads((Path(root) / "versions" / version / "manifest.json").read_text())


def committed_deltas(vdir: Path) -> list[Path]:
    """The version's published deltas, oldest first (delta ids sort by time)."""
    ddir = vdir / "deltas"
    if not ddir.exists():
        return []
    return sorted(p for p in ddir.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and (p / DELTA_MANIFEST).exists())


def read_pool_table(spark, path: Path, schema):
    """One of a version's tables. The schema is given, not inferred: a table with no rows (a delta
    without quarantined items) may hold no Parquet file to infer it from."""
    from cmaq.arrow_spark import empty_frame, spark_schema

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


def kv_items(pool, version: str) -> Iterator[tuple[str, bytes]]:
    """(content_id, encoded value) per item of a pool DataFrame, queries in rank order. Items stream
    through the driver one partition at a time, so memory stays bounded."""
    from pyspark.sql import functions as F

    from cmaq.pool.kv import encode_value

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
