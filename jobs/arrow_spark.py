"""Arrow schema <-> Spark schema helpers (the schemas in cmaq.schema are Arrow)."""
from __future__ import annotations

import pyarrow as pa
from pyspark.sql.pandas.types import from_arrow_schema


def spark_schema(schema: pa.Schema):
    return from_arrow_schema(schema)


def empty_frame(spark, schema: pa.Schema):
    return spark.createDataFrame([], spark_schema(schema))
