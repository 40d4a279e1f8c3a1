"""Shared Spark transforms of the training-data builders: extract, validate, split, window, aggregate.

Transforms take and return DataFrames. Bad rows are never dropped silently: ``validate_*`` return
(good, bad) where bad carries ``source``, ``reason`` and the row as JSON (BAD_ROW_SCHEMA).
"""
from __future__ import annotations

from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import BooleanType, StringType, StructField, StructType

from cmaq.config import FiltersConfig
from cmaq.text import normalize_array
from filters.chain import shared_chain
from jobs import contract
from jobs.spark import read_table  # noqa: F401 - the builders read logs and annotations with it

PROMPT_COLUMNS = ("content_id", "lang", "category", "title", "body", "shop_name", "district", "shop_info")
SPLIT_SALT = "cmaq-content-split-v1"


# --------------------------------------------------------------------------- extract


def read_content(spark: SparkSession, path_or_table: str) -> DataFrame:
    """The content table conformed to the input contract; raises ``BadInput`` before reading data."""
    return contract.conform(contract.read_content_table(spark, path_or_table))


def _bad(df: DataFrame, source: str, reason: Column, exclude: tuple[str, ...] = ()) -> DataFrame:
    """The bad-row table: source, reason, and the row itself as JSON (minus helper columns)."""
    row_cols = [x for x in df.columns if x not in exclude]
    return df.select(F.lit(source).alias("source"), reason.alias("reason"),
                     F.to_json(F.struct(*row_cols)).alias("row"))


def _first_reason(checks: list[tuple[Column, str]]) -> Column:
    expr = F.lit(None).cast("string")
    for cond, reason in reversed(checks):
        expr = F.when(cond, F.lit(reason)).otherwise(expr)
    return expr


def split_valid(df: DataFrame, source: str, checks: list[tuple[Column, str]]) -> tuple[DataFrame, DataFrame]:
    """Rows failing any check go to the bad-row table with the first failing reason."""
    tagged = df.withColumn("_reason", _first_reason(checks))
    good = tagged.filter(F.col("_reason").isNull()).drop("_reason")
    bad = tagged.filter(F.col("_reason").isNotNull())
    return good, _bad(bad, source, F.col("_reason"), exclude=("_reason",))


def validate_logs(logs: DataFrame) -> tuple[DataFrame, DataFrame]:
    return split_valid(logs, "logs", [
        (F.col("content_id").isNull() | (F.trim("content_id") == ""), "null_content_id"),
        (F.col("query").isNull() | (F.trim("query") == ""), "null_query"),
        (F.col("month").isNull(), "null_month"),
        (F.col("impressions").isNull() | F.col("clicks").isNull(), "null_counts"),
        ((F.col("impressions") < 0) | (F.col("clicks") < 0), "negative_counts"),
        (F.col("clicks") > F.col("impressions"), "clicks_exceed_impressions"),
    ])


def validate_content(content: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(content, bad rows) of a table already conformed to the input contract (:mod:`jobs.contract`):
    one row per content_id (the newest), takedowns set aside as ``taken_down`` (no training on
    content that was taken down), every rejected row with the contract's reason."""
    checked = contract.check_rows(content)
    rows = contract.valid_rows(checked)
    return (contract.live(rows),
            _bad(contract.rejected_rows(checked).drop("detail"), "content", F.col("reason"), exclude=("reason",))
            .unionByName(_bad(contract.takedowns(rows), "content", F.lit("taken_down"))))


# --------------------------------------------------------------------------- split


def _content_keys(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for rb in batches:
        joined = pc.binary_join_element_wise(pc.fill_null(rb.column("title"), ""), pc.fill_null(rb.column("body"), ""), " ")
        yield pa.RecordBatch.from_arrays([rb.column("content_id"), normalize_array(joined)],
                                         names=["content_id", "content_key"])


SPLITS = ("train", "validation", "test")


def assign_split(content: DataFrame, test_fraction: float, validation_fraction: float = 0.0) -> DataFrame:
    """content_id -> split ('train' | 'validation' | 'test') by a hash of the normalised title + body,
    so two contents with the same text always fall on the same side (no held-out content leaks into
    training). Test takes the lowest buckets, validation the next ones, so changing the validation
    share never moves a content in or out of the test split."""
    keys = content.select("content_id", "title", "body").mapInArrow(_content_keys, "content_id string, content_key string")
    bucket = F.pmod(F.xxhash64(F.lit(SPLIT_SALT), F.col("content_key")), F.lit(1_000_000)) / 1_000_000.0
    split = (F.when(bucket < test_fraction, "test")
             .when(bucket < test_fraction + validation_fraction, "validation").otherwise("train"))
    return keys.select("content_id", "content_key", split.alias("split"))


# --------------------------------------------------------------------------- logs


def window(logs: DataFrame, months: int) -> DataFrame:
    """Keep the newest ``months`` months present in the logs."""
    newest = logs.agg(F.max("month")).first()[0]
    if newest is None:
        return logs.limit(0)
    first = F.add_months(F.lit(newest), -(months - 1))
    return logs.filter(F.col("month") >= first)


def aggregate(logs: DataFrame) -> DataFrame:
    return (logs.groupBy("content_id", "query")
            .agg(F.sum("impressions").alias("impressions"), F.sum("clicks").alias("clicks"))
            .withColumn("ctr", F.col("clicks") / F.col("impressions")))


def with_content(rows: DataFrame, content: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Attach the prompt fields; rows whose content is unknown are set aside."""
    # A table without the optional district reads it as null (it only sharpens the shop-info filter).
    cols = [F.col(x) if x in content.columns or x != "district" else F.lit(None).cast("string").alias(x)
            for x in PROMPT_COLUMNS]
    c = content.select(*cols).withColumn("_known", F.lit(True))
    joined = rows.join(c, "content_id", "left")
    bad = joined.filter(F.col("_known").isNull()).drop("_known", *PROMPT_COLUMNS[1:])
    return joined.filter(F.col("_known")).drop("_known"), _bad(bad, "logs", F.lit("unknown_content"))


# --------------------------------------------------------------------------- filters


def apply_filter_chain(df: DataFrame, filters_cfg: FiltersConfig, chain: str = "training") -> DataFrame:
    """Run the shared FilterChain on executors (one chain per Python worker); adds keep and reason."""
    cols = df.columns
    schema = StructType([*df.schema.fields, StructField("keep", BooleanType()), StructField("reason", StringType())])

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        fc = shared_chain(filters_cfg, chain)
        for rb in batches:
            out = fc.run(rb).table
            yield from out.select([*cols, "keep", "reason"]).to_batches()

    return df.mapInArrow(run, schema)


def with_fields(df: DataFrame, *fields: tuple[str, object]) -> StructType:
    """The DataFrame's schema plus new fields (a copy: StructType.add would change it in place)."""
    return StructType([*df.schema.fields, *(StructField(n, t) for n, t in fields)])


def counts_by(df: DataFrame, column: str) -> dict[str, int]:
    return {r[0]: int(r[1]) for r in df.groupBy(column).count().collect()}
