"""Arrow schema <-> Spark schema helpers (the schemas in cmaq.schema are Arrow)."""
from __future__ import annotations

import pyarrow as pa


def spark_schema(schema: pa.Schema):
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def empty_frame(spark, schema: pa.Schema):
    return spark.createDataFrame([], spark_schema(schema))
