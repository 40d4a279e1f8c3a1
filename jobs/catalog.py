"""Catalog tables for analysts: the current pool version as views in the Spark catalog, so any Spark
SQL client on the same metastore reads what the cache serves.

    cmaq.cmaq_pool_current        served queries (base rows plus every nearline delta and purge)
    cmaq.cmaq_dropped_current     candidates the filters dropped, with reasons
    cmaq.cmaq_quarantine_current  items that could not be served

Each view is SQL over the version's own Parquet directories: the base table, minus the items a later
delta names, plus each delta's rows of the items no newer delta names (the rule of
:func:`jobs.pool_tables.version_frames`). Publishing a version, a nearline delta or a purge, and a
rollback, re-create the views in the same step, so they switch with the ``current`` pointer.

Metastore (``pool.catalog``): ``embedded`` (the default) keeps a Derby metastore under
``<pool root>/catalog``; embedded Derby admits one JVM at a time, so one session at a time — a
nightly, ``cmaq sql run`` or a ``spark-sql`` shell — may have it open. ``hive`` uses the Hive
metastore at ``pool.metastore_uri`` (many sessions at once). ``none`` registers nothing.
"""
from __future__ import annotations

import logging
from pathlib import Path

from cmaq.config import PoolConfig
from cmaq.pool.versions import committed_deltas, current_version, tables, version_arms
from jobs.pool_tables import DELTA_ID_PATTERN, flat_deltas
from jobs.spark import get_spark

log = logging.getLogger(__name__)

VIEW = "cmaq_{table}_current"


def catalog_conf(pool: PoolConfig) -> dict:
    """Session settings that open the pool's metastore (empty for ``pool.catalog = none``). They are
    static: they count only for a session created with them."""
    if pool.catalog == "none":
        return {}
    conf = {"spark.sql.catalogImplementation": "hive"}
    if pool.catalog == "hive":
        return {**conf, "spark.hadoop.hive.metastore.uris": pool.metastore_uri}
    home = Path(pool.root).resolve() / "catalog"
    return {**conf,
            "spark.sql.warehouse.dir": str(home / "warehouse"),
            "spark.hadoop.javax.jdo.option.ConnectionURL": f"jdbc:derby:;databaseName={home / 'metastore_db'};create=true"}


def catalog_session(app_name: str, pool: PoolConfig):
    """The job's SparkSession with the pool's metastore open (an existing session is returned as it
    is: its catalog cannot change any more). Derby boots at the first catalog access, after this:
    its log goes beside the metastore, not into whatever directory the job was started from."""
    spark = get_spark(app_name, conf=catalog_conf(pool))
    if pool.catalog == "embedded":
        # Derby creates the directory when it first boots, so a run refused before that leaves none
        home = Path(pool.root).resolve() / "catalog"
        spark.sparkContext._jvm.java.lang.System.setProperty("derby.system.home", str(home))
    return spark


def has_catalog(spark) -> bool:
    return spark.conf.get("spark.sql.catalogImplementation", "in-memory") == "hive"


_SQL_TYPES = {"string": "STRING", "int32": "INT", "int64": "BIGINT", "double": "DOUBLE"}


def _has_files(table_dir: Path) -> bool:
    """Spark writes no Parquet file for an empty partitioned table, and a path without one cannot be read."""
    return table_dir.exists() and any(table_dir.rglob("*.parquet"))


def _empty_select(schema) -> str:
    cols = [f"CAST(NULL AS {_SQL_TYPES.get(str(f.type), 'TIMESTAMP')}) AS `{f.name}`" for f in schema]
    return f"SELECT {', '.join(cols)} WHERE false"


def _quote(path: Path) -> str:
    return "parquet.`" + str(path.resolve()).replace("`", "``") + "`"


def view_sql(vdir: Path, table: str) -> str:
    """The SQL of one table of a version as readers see it: base plus deltas, newest delta winning.
    The deltas are read as :func:`jobs.pool_tables.latest_delta_rows` reads them: each table of the
    unpartitioned ones in one scan (a path glob naming them, ``_delta`` from the file path), older
    partitioned ones one by one; an item's newest id wins."""
    deltas = committed_deltas(vdir)
    schema = dict(tables(bool(version_arms(vdir))))[table]
    columns = ", ".join(f"t.`{c}`" for c in schema.names)
    base = f"SELECT {columns} FROM {_quote(vdir / table)} t" if _has_files(vdir / table) else None
    if not deltas:
        return base or _empty_select(schema)
    flat, partitioned = flat_deltas(deltas)

    def tagged(select: str, t: str) -> str:  # a select over the deltas' table t, with each row's delta id
        parts = [f"SELECT {select}, '{d.name}' AS _delta FROM {_quote(d / t)} t"
                 for d in partitioned if _has_files(d / t)]
        scanned = [d.name for d in flat if _has_files(d / t)]
        if scanned:
            glob = vdir.resolve() / "deltas" / ("{" + ",".join(scanned) + "}") / t
            parts.append(f"SELECT {select}, regexp_extract(input_file_name(), '{DELTA_ID_PATTERN}', 1) AS _delta "
                         f"FROM {_quote(glob)} t")
        return " UNION ALL ".join(parts)

    named = " UNION ALL ".join(filter(None, (tagged("t.content_id", t) for t, _ in tables(False))))
    if not named:  # deltas without a row in any table name no item
        return base or _empty_select(schema)
    rows = tagged(columns, table)
    newest = f"newest AS (SELECT content_id, max(_delta) AS _newest FROM ({named}) GROUP BY content_id)"
    parts = []
    if base:
        parts.append(f"{base} LEFT ANTI JOIN newest n ON t.content_id = n.content_id")
    if rows:
        parts.append(f"SELECT {columns} FROM ({rows}) t JOIN newest n ON t.content_id = n.content_id "
                     f"AND t._delta = n._newest")
    if not parts:
        return _empty_select(schema)
    return f"WITH {newest}\n" + "\nUNION ALL\n".join(parts)


def register_current(spark, pool: PoolConfig) -> dict:
    """(Re)create the ``*_current`` views over the current version; what was done, for the run record.
    A session without a metastore (``pool.catalog = none``, or a session created without the
    settings of :func:`catalog_conf`) registers nothing and says why."""
    if pool.catalog == "none":
        return {"registered": False, "reason": "pool.catalog is none"}
    if not has_catalog(spark):
        return {"registered": False, "reason": "this Spark session has no metastore (it was created without "
                                               "jobs.catalog.catalog_conf)"}
    root = Path(pool.root)
    version = current_version(root)
    if version is None:
        return {"registered": False, "reason": "nothing published"}
    vdir = root / "versions" / version
    spark.sql(f"CREATE DATABASE IF NOT EXISTS `{pool.catalog_db}`")
    views = []
    for table, _ in tables(False):
        name = f"`{pool.catalog_db}`.`{VIEW.format(table=table)}`"
        spark.sql(f"CREATE OR REPLACE VIEW {name} COMMENT 'cmaq pool version {version}' AS {view_sql(vdir, table)}")
        views.append(f"{pool.catalog_db}.{VIEW.format(table=table)}")
    log.info("catalog: %s now show version %s", ", ".join(views), version)
    return {"registered": True, "catalog": pool.catalog, "version": version, "views": views}
