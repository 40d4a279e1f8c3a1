"""The catalog's views follow the published pool: a new Spark session on the same (embedded)
metastore sees cmaq_pool_current with the new version's rows, without the purged ones after a purge,
and the previous version's after a rollback. Every step is its own process: embedded Derby admits one
JVM at a time, as the README says."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import REPO, command_json, content_slice, pool_version

pytestmark = pytest.mark.usefixtures("importable_doubles")

DOUBLE = "engine.backend=tests.doubles.engines:PlantingEngine"
# What a Spark SQL client runs: a session of its own, on the pool's metastore, nothing of the job's.
CLIENT = """
import json, sys
from jobs.catalog import catalog_session
from cmaq.config import PoolConfig
spark = catalog_session("analyst", PoolConfig(root=sys.argv[1]))
rows = spark.sql("SELECT content_id, query, run_id FROM cmaq.cmaq_pool_current").collect()
dropped = spark.sql("SELECT count(*) FROM cmaq.cmaq_dropped_current WHERE reason = 'purged'").first()[0]
print(json.dumps({"rows": [list(r) for r in rows], "purged": dropped}))
"""


def _cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "cmaq.cli", *args], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ}, timeout=600)
    assert out.returncode == 0, (args, out.stdout[-2000:], out.stderr[-3000:])
    return out.stdout


def _client(root: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CLIENT, str(root)], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _served(root: Path) -> set[tuple[str, str]]:
    vdir, _ = pool_version(root)
    table = pq.read_table(vdir / "pool").to_pandas()
    return set(zip(table.content_id, table["query"]))


def test_the_views_follow_publish_purge_and_rollback(small_world, tmp_path):
    content = content_slice(small_world, tmp_path, 20)
    root = tmp_path / "pool"
    opts = ["--set", DOUBLE, "--set", f"pool.root={root}"]
    first = command_json(_cli(*opts, "pool", "build", "--content", str(content)))
    assert first["status"] == "published"

    # a second version from changed content: the views switch to it
    table = pq.read_table(content).to_pandas()
    table["shop_name"] = table["shop_name"].fillna("") + " Annex"
    table.to_parquet(content, index=False)
    second = command_json(_cli(*opts, "pool", "build", "--content", str(content)))
    assert second["status"] == "published" and second["counts"]["generated"] == 20
    seen = _client(root)
    assert {r for _, _, r in seen["rows"]} == {second["run_id"]}
    assert sorted((c, q) for c, q, _ in seen["rows"]) == sorted(_served(root))

    # a purge: the views show the version without the purged item, its queries dropped as purged
    victim = sorted(c for c, _ in _served(root))[0]
    purge = command_json(_cli(*opts, "pool", "purge", "--content-id", victim))
    assert purge["delta"]["catalog"]["registered"], purge
    seen = _client(root)
    assert victim not in {c for c, _, _ in seen["rows"]} and seen["purged"] == purge["queries_removed"] > 0
    assert len(seen["rows"]) == len(_served(root)) - purge["queries_removed"]

    # a rollback: the previous version's rows again
    back = command_json(_cli(*opts, "pool", "rollback"))
    assert back["to"] == first["run_id"] and back["catalog"]["registered"]
    seen = _client(root)
    assert {r for _, _, r in seen["rows"]} == {first["run_id"]}
    assert {(c, q) for c, q, _ in seen["rows"]} == _served(root)
    assert (root / "catalog" / "metastore_db").is_dir()
