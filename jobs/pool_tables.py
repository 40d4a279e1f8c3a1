"""A pool version's tables as Spark DataFrames: base tables plus the nearline deltas added to it.

Every reader of a version (the next nightly's carry-forward, nearline, the SQL views, purge, scoring)
goes through :func:`version_frames`, so they all agree on what the version holds.

A version that serves A/B arms has an ``arm`` column in every table; one without arms has none.
Frames carry the column exactly when their version does, and :func:`item_columns` says what names
one served item: ``(arm, content_id)`` or ``content_id``. A delta (nearline, purge) always covers
every arm of the contents it names, so replacing by ``content_id`` is right for both.
"""
from __future__ import annotations

import shutil
from functools import reduce
from pathlib import Path
from typing import Iterator

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cmaq.pool.sinks import encode_value, item_id
from cmaq.pool.versions import committed_deltas, tables, version_arms
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


def is_armed(frames: dict) -> bool:
    return "arm" in frames["pool"].columns


def item_columns(df) -> tuple[str, ...]:
    """The columns that name one served item: ``("arm", "content_id")`` in a pool with arms."""
    return ("arm", "content_id") if "arm" in df.columns else ("content_id",)


def unaccounted(frames: dict, expected_items) -> tuple[int, int]:
    """(missing, unexpected): expected items (content ids, with their arm in a pool with arms) the
    tables do not name, and named items not expected."""
    key = list(item_columns(frames["pool"]))
    named = named_keys(frames, tuple(key)).withColumn("_named", F.lit(1))
    expected = expected_items.select(*key).distinct().withColumn("_expected", F.lit(1))
    # one outer join, one job: a nearline or stream batch pays this on its latency
    row = expected.join(named, key, "full_outer").agg(
        F.count(F.when(F.col("_named").isNull(), 1)).alias("missing"),
        F.count(F.when(F.col("_expected").isNull(), 1)).alias("extra")).first()
    return int(row["missing"]), int(row["extra"])


def read_version_tables(spark, vdir: Path, armed: bool) -> dict:
    """A version directory's (or a delta's) own three tables, without its deltas."""
    return {name: read_pool_table(spark, vdir / name, schema) for name, schema in tables(armed)}


def version_frames(spark, vdir: Path) -> dict:
    """The effective ``pool`` / ``dropped`` / ``quarantine`` DataFrames of a published version."""
    armed = bool(version_arms(vdir))
    frames = read_version_tables(spark, vdir, armed)
    latest = latest_delta_rows(spark, committed_deltas(vdir), armed)
    if latest is None:
        return frames
    named = named_keys(latest)
    return {name: frames[name].join(named, "content_id", "left_anti").unionByName(latest[name]) for name in frames}


DELTA_COLUMN = "_delta"
#: The delta id in a delta file's path (``.../deltas/<id>/<table>/...``), for a read of many deltas at once.
DELTA_ID_PATTERN = r"/deltas/([^/]+)/[^/]+/[^/]+$"  # anchored at the file: a parent folder may be "deltas"


def flat_deltas(deltas: list[Path]) -> tuple[list[Path], list[Path]]:
    """``deltas`` split into those written unpartitioned (every delta since the stream: they can be
    read together in one scan) and older ones whose ``pool`` is partitioned by category (each read on
    its own: Spark cannot infer partitions under several roots)."""
    flat, partitioned = [], []
    for d in deltas:
        pool = d / "pool"
        (partitioned if pool.exists() and any(c.name.startswith("category=") for c in pool.iterdir())
         else flat).append(d)
    return flat, partitioned


def latest_delta_rows(spark, deltas: list[Path], armed: bool) -> dict | None:
    """Each item's rows from the newest of ``deltas`` that names it, in any table: what the deltas add
    to a version. Each table of the deltas is read in one scan (its ``_delta`` taken from the file
    path) and an item's newest id wins, so reading 50 deltas costs about what reading one does. None
    without deltas. Delta ids sort by time."""
    if not deltas:
        return None
    flat, partitioned = flat_deltas(deltas)
    tagged = {}
    for name, schema in tables(armed):
        paths = [str(d / name) for d in flat if (d / name).exists()]
        layers = [read_pool_table(spark, d / name, schema).withColumn(DELTA_COLUMN, F.lit(d.name))
                  for d in partitioned if (d / name).exists()]
        if paths:
            layers.append(spark.read.schema(spark_schema(schema)).parquet(*paths).select(*schema.names)
                          .withColumn(DELTA_COLUMN, F.regexp_extract(F.input_file_name(), DELTA_ID_PATTERN, 1)))
        tagged[name] = (reduce(DataFrame.unionByName, layers) if layers
                        else empty_frame(spark, schema).withColumn(DELTA_COLUMN, F.lit(None).cast("string")))
    named = reduce(DataFrame.unionByName, (df.select("content_id", DELTA_COLUMN) for df in tagged.values()))
    newest = named.groupBy("content_id").agg(F.max(DELTA_COLUMN).alias("_newest"))
    return {name: df.join(newest, "content_id").filter(F.col(DELTA_COLUMN) == F.col("_newest"))
            .select(*dict(tables(armed))[name].names)
            for name, df in tagged.items()}


def generated_frames(frames: dict) -> dict:
    """A version's frames without the rows the input contract set aside (duplicate ids, rows without
    an id, ...): what the version made, as carry-forward and the nearline's classification read it."""
    return {**frames, "quarantine": frames["quarantine"].filter(~F.col("reason").isin(*CONTRACT_REASONS))}


def kv_items(pool, version: str) -> Iterator[tuple[str, bytes]]:
    """(cache item id, encoded value) per served item of a pool DataFrame, queries in rank order; the
    id is ``content_id``, or ``arm:content_id`` (:func:`cmaq.pool.sinks.item_id`) in a pool with arms.
    Items stream through the driver one partition at a time, so memory stays bounded."""
    key = item_columns(pool)
    fields = ("rank", "query", "logprob", "score_relevance")
    # Sorted structs, then one plain array per field: the driver unpickles four lists of values per
    # item instead of a Row object per query.
    per_item = (pool.groupBy(*key).agg(F.sort_array(F.collect_list(F.struct(*fields))).alias("q"))
                .select(*key, *(F.col(f"q.{f}").alias(f) for f in fields)))
    for row in per_item.toLocalIterator():
        queries = [{"rank": rank, "query": query, "logprob": logprob, "relevance": relevance}
                   for rank, query, logprob, relevance in zip(*(row[f] for f in fields))]
        arm = row["arm"] if "arm" in key else None
        yield item_id(row["content_id"], arm), encode_value(row["content_id"], version, queries)


def write_tables(frames: dict, out_dir: Path, partitioned: bool = True) -> None:
    """pool (partitioned by category unless ``partitioned`` is False: a delta's few rows gain nothing
    from it, and unpartitioned deltas read in one scan), dropped and quarantine under ``out_dir``, in
    their schemas (with ``arm`` when the frames have it), replacing a half-written directory left by a
    crash."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    schemas = dict(tables(is_armed(frames)))
    for name, df in frames.items():
        writer = df.select(*schemas[name].names).write
        (writer.partitionBy("category") if name == "pool" and partitioned else writer).parquet(str(out_dir / name))
