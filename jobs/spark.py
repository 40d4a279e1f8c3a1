"""One place that builds a SparkSession: local mode by default, a cluster under spark-submit.

Arrow is on (mapInArrow / toPandas), the Python workers use this interpreter (a venv's, not the
system's), and shuffle partitions are sized for a laptop unless the caller says otherwise.
"""
from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession


def get_spark(app_name: str = "cmaq", master: str | None = None, shuffle_partitions: int | None = None,
              conf: dict | None = None):
    # Executors must run the same Python as the driver (the venv), not whatever `python3` is first on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if not os.environ.get("PYSPARK_GATEWAY_PORT"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # local mode: stay on loopback
    builder = SparkSession.builder.appName(app_name)
    # Under spark-submit the JVM started this driver (and set the gateway port): its master stands.
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ
    if master or not submitted:
        builder = builder.master(master or os.environ.get("CMAQ_SPARK_MASTER", "local[2]"))
    settings = {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.shuffle.partitions": str(shuffle_partitions or 8),
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": "false",
        "spark.python.worker.reuse": "true",
        "spark.driver.memory": "4g",
    }
    settings.update(conf or {})
    for k, v in settings.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    # A path glob (the catalog views read a version's deltas in one globbed scan) makes Spark look for
    # a streaming sink's metadata under the literal glob and log a stack trace at WARN when it is
    # not there, as it never is.
    jvm = spark.sparkContext._jvm
    jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(
        "org.apache.spark.sql.execution.streaming.sinks.FileStreamSink", jvm.org.apache.logging.log4j.Level.ERROR)
    return spark


def read_table(spark: SparkSession, path_or_table: str):
    """A Parquet path (file or directory) or a catalog table name, as it is now: a long-lived session
    (nearline after nightly, tests) must not be served an earlier read of the same path from its cache."""
    if "/" in path_or_table or path_or_table.endswith(".parquet"):
        spark.catalog.refreshByPath(path_or_table)
        return spark.read.parquet(path_or_table)
    spark.catalog.refreshTable(path_or_table)
    return spark.table(path_or_table)
