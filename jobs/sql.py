"""Run an analyst's SQL file against the published pool: `cmaq sql run sql/FILE.sql --pool ROOT`.

Views registered: ``pool``, ``dropped``, ``quarantine`` (current version, nearline deltas and purges
included) and ``pool_previous`` (the version before it, empty when there is none).
"""
from __future__ import annotations

from pathlib import Path

from cmaq.pool.versions import current_version, read_manifest, version_arms
from cmaq.schema import POOL_SCHEMA
from jobs.arrow_spark import empty_frame
from jobs.pool_tables import version_frames


def register_views(spark, root: str | Path) -> dict:
    root = Path(root)
    run_id = current_version(root)
    if run_id is None:
        raise FileNotFoundError(f"{root}: no published pool version (no `current` pointer)")
    for name, df in version_frames(spark, root / "versions" / run_id).items():
        df.createOrReplaceTempView(name)
    prev = read_manifest(root, run_id).get("previous_version")
    prev_dir = root / "versions" / str(prev)
    (version_frames(spark, prev_dir)["pool"] if prev and (prev_dir / "manifest.json").exists()
     else empty_frame(spark, POOL_SCHEMA)).createOrReplaceTempView("pool_previous")
    return {"version": run_id, "previous_version": prev, "arms": sorted(version_arms(root / "versions" / run_id))}


NEEDS_ARMS = "-- needs: arms"  # a file's first line: it reads the `arm` column


def run_sql(spark, sql_file: str | Path, root: str | Path):
    text = Path(sql_file).read_text()
    views = register_views(spark, root)
    if text.lstrip().startswith(NEEDS_ARMS) and not views["arms"]:
        raise ValueError(f"{Path(sql_file).name} compares A/B arms; version {views['version']} serves none "
                         f"(configure [pool.arms])")
    statements = [s.strip() for s in text.split(";") if s.strip() and not all(
        line.strip().startswith("--") or not line.strip() for line in s.strip().splitlines())]
    if not statements:
        raise ValueError(f"{sql_file}: no SQL statement")
    result = None
    for stmt in statements:
        result = spark.sql(stmt)
    return result
