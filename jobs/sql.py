"""Run an analyst's SQL file against the published pool: `cmaq sql run sql/FILE.sql --pool ROOT`.

Views registered: ``pool``, ``dropped``, ``quarantine`` (current version) and ``pool_previous`` (the
version before it, empty when there is none).
"""
from __future__ import annotations

import json
from pathlib import Path

from cmaq.schema import DROPPED_SCHEMA, POOL_SCHEMA, QUARANTINE_SCHEMA


def register_views(spark, root: str | Path) -> dict:
    from cmaq.arrow_spark import empty_frame

    root = Path(root)
    pointer = root / "current"
    if not pointer.exists():
        raise FileNotFoundError(f"{root}: no published pool version (no `current` pointer)")
    run_id = pointer.read_text().strip()
    vdir = root / "versions" / run_id
    manifest = json.loads((vdir / "manifest.json").read_text())
    for name, schema in (("pool", POOL_SCHEMA), ("dropped", DROPPED_SCHEMA), ("quarantine", QUARANTINE_SCHEMA)):
        path = vdir / name
        df = spark.read.parquet(str(path)) if path.exists() else empty_frame(spark, schema)
        df.createOrReplaceTempView(name)
    prev = manifest.get("previous_version")
    prev_dir = root / "versions" / str(prev) / "pool"
    (spark.read.parquet(str(prev_dir)) if prev and prev_dir.exists() else empty_frame(spark, POOL_SCHEMA)
     ).createOrReplaceTempView("pool_previous")
    return {"version": run_id, "previous_version": prev}


def run_sql(spark, sql_file: str | Path, root: str | Path):
    register_views(spark, root)
    text = Path(sql_file).read_text()
    statements = [s.strip() for s in text.split(";") if s.strip() and not all(
        line.strip().startswith("--") or not line.strip() for line in s.strip().splitlines())]
    if not statements:
        raise ValueError(f"{sql_file}: no SQL statement")
    result = None
    for stmt in statements:
        result = spark.sql(stmt)
    return result
