"""The content table's input contract, shared by the nightly, the nearline refresh and the data builders.

Two checks, in the order the data moves:

1. **The schema** (:func:`conform`), on the driver before the writer lease is taken and before any
   staging: the required columns and every column the contract knows must have an accepted type.
   Anything else raises :class:`BadInput`, a one-line message naming the column, its type and the
   expected type (the jobs turn it into exit 2 and a ``bad_input`` run record, nothing else written).
   Accepted variants are coerced: integer ids become strings, ``updated_at`` given as an ISO-8601
   string or as epoch milliseconds becomes a UTC timestamp, a missing optional column is null.
2. **The rows** (:func:`check_rows`), in Spark: a row without an id, or with an ``updated_at`` string
   that is not a date, is set aside with a reason; of rows sharing a ``content_id`` the newest
   ``updated_at`` is kept and the others are set aside as ``duplicate_id``. Nothing is dropped silently.

A takedown row (``deleted = true``; its text may be null) is a valid form: the refresh purges the item,
the nightly leaves it out of the version, the builders leave it out of training data.
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.errors import AnalysisException

from jobs.spark import read_table

REQUIRED = ("content_id", "title", "body")
#: The conformed table's columns, in order (extra input columns are not carried: nothing reads them).
COLUMNS = ("content_id", "lang", "category", "shop_name", "district", "shop_info", "title", "body",
           "updated_at", "deleted")

# Why a row was set aside (stable codes: the pool's quarantine table and the builders' bad rows).
NULL_CONTENT_ID = "null_content_id"
BAD_UPDATED_AT = "bad_updated_at"
DUPLICATE_ID = "duplicate_id"
REASONS = (NULL_CONTENT_ID, BAD_UPDATED_AT, DUPLICATE_ID)

_INTEGRAL = (T.ByteType, T.ShortType, T.IntegerType, T.LongType)
_EXPECTED = {
    "content_id": "string (or an integer, cast to string)",
    "updated_at": "timestamp, date, ISO-8601 string or epoch milliseconds (integer)",
    "deleted": "boolean",
}


class BadInput(ValueError):
    """The content table breaks the contract; the message is one line."""


# --------------------------------------------------------------------------- 1. the schema


def read_content_table(spark: SparkSession, source: str) -> DataFrame:
    """:func:`jobs.spark.read_table`; a table that cannot be read is bad input."""
    try:
        return read_table(spark, source)
    except AnalysisException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(f"content {source}: cannot read it: {first}") from None


def conform(df: DataFrame) -> DataFrame:
    """The table in the contract's columns and types (see the module doc); raises :class:`BadInput`
    before any data is read."""
    fields = {f.name: f.dataType for f in df.schema.fields}
    missing = [c for c in REQUIRED if c not in fields]
    if missing:
        raise BadInput(f"content: required column {missing[0]!r} is missing (have: {', '.join(fields) or 'none'})")
    out = {name: _coerce(name, fields.get(name)) for name in COLUMNS}
    # The raw updated_at rides along so the row check can tell "no date" from "a date we cannot read".
    raw = F.col("updated_at").cast("string") if "updated_at" in fields else F.lit(None).cast("string")
    return df.select(*(col.alias(name) for name, col in out.items()), raw.alias("_updated_at_raw"))


def _coerce(name: str, dtype: T.DataType | None) -> Column:
    if dtype is None:  # an optional column the table lacks
        return F.lit(False) if name == "deleted" else F.lit(None).cast("timestamp" if name == "updated_at" else "string")
    col = F.col(name)
    if isinstance(dtype, T.NullType):  # a JSON-sourced column that was null throughout
        return col.cast("boolean" if name == "deleted" else "timestamp" if name == "updated_at" else "string")
    if name == "content_id":
        if isinstance(dtype, T.StringType):
            return col
        if isinstance(dtype, _INTEGRAL):
            return col.cast("string")
    elif name == "updated_at":
        if isinstance(dtype, T.TimestampType):
            return col
        if isinstance(dtype, (T.TimestampNTZType, T.DateType)):  # read as UTC (the session's time zone)
            return col.cast("timestamp")
        if isinstance(dtype, T.StringType):
            return F.try_to_timestamp(col)
        if isinstance(dtype, _INTEGRAL):
            return F.timestamp_millis(col.cast("long"))
    elif name == "deleted":
        if isinstance(dtype, T.BooleanType):
            return F.coalesce(col, F.lit(False))
    elif isinstance(dtype, T.StringType):
        return col
    expected = _EXPECTED.get(name, "string")
    raise BadInput(f"content.{name}: type {dtype.simpleString()}, expected {expected}")


# --------------------------------------------------------------------------- 2. the rows


def check_rows(conformed: DataFrame) -> DataFrame:
    """Every conformed row with ``reason`` and ``detail``: null for the row served per content_id (the
    newest, takedowns included), a reason code for a row set aside. A row without an id (null or
    blank) gets ``content_id`` "" so it can be counted and shown. Split it with :func:`valid_rows` and
    :func:`rejected_rows` (cache it first: both read it)."""
    bad_row = (F.when(F.col("content_id").isNull() | (F.trim("content_id") == ""), F.lit(NULL_CONTENT_ID))
               .when(F.col("_updated_at_raw").isNotNull() & F.col("updated_at").isNull(), F.lit(BAD_UPDATED_AT)))
    tagged = conformed.withColumn("reason", bad_row)
    # Newest first; among rows updated at the same moment the order is still fixed (a hash of the row).
    newest = Window.partitionBy("content_id", "reason").orderBy(F.col("updated_at").desc_nulls_last(),
                                                                F.xxhash64(*COLUMNS))
    ranked = (tagged.withColumn("_n", F.row_number().over(newest))
              .withColumn("_kept_at", F.first("updated_at").over(newest)))
    reason = F.when(F.col("reason").isNull() & (F.col("_n") > 1), F.lit(DUPLICATE_ID)).otherwise(F.col("reason"))
    detail = (F.when(F.col("reason") == NULL_CONTENT_ID, F.lit("the row has no content_id"))
              .when(F.col("reason") == BAD_UPDATED_AT,
                    F.concat(F.lit("updated_at "), F.col("_updated_at_raw"), F.lit(" is not a date")))
              .when(F.col("reason") == DUPLICATE_ID,
                    F.concat(F.lit("a newer row of this id is served (updated_at "),
                             F.coalesce(F.col("_kept_at").cast("string"), F.lit("null")), F.lit(")"))))
    return (ranked.withColumn("reason", reason).withColumn("detail", detail)
            .withColumn("content_id", F.when(F.col("reason") == NULL_CONTENT_ID, F.lit("")).otherwise(F.col("content_id")))
            .drop("_n", "_kept_at", "_updated_at_raw"))


def valid_rows(checked: DataFrame) -> DataFrame:
    """One row per content_id, in :data:`COLUMNS` (plus any column added after the check)."""
    return checked.filter(F.col("reason").isNull()).drop("reason", "detail")


def rejected_rows(checked: DataFrame) -> DataFrame:
    """The rows set aside, with ``reason`` and ``detail``."""
    return checked.filter(F.col("reason").isNotNull())


def live(rows: DataFrame) -> DataFrame:
    """The rows that are content (not takedowns)."""
    return rows.filter(~F.col("deleted"))


def takedowns(rows: DataFrame) -> DataFrame:
    return rows.filter(F.col("deleted"))
