"""The nightly on a real Spark standalone cluster (a master and two one-core workers on loopback,
started once for the module), submitted with ``spark-submit --master spark://...``: its pool equals
a local-mode run's (with an engine dying on an executor on the way), a worker-killing item is hunted
down across attempts on the executors, and a killed submission resumes from the partitions it
committed to the same pool."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from cmaq.config import load_config
from jobs.nightly import build_pool

from conftest import REPO, content_slice, pool_version
from processes import descendants, kill_tree, wait_gone
from spark_cluster import standalone_cluster

DOUBLE = "engine.backend=tests.doubles.engines:PlantingEngine"
ITEMS = 150


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with standalone_cluster(tmp_path_factory.mktemp("spark-cluster"), workers=2, cores=1, memory="1g") as c:
        yield c


@pytest.fixture(scope="module")
def content(small_world, tmp_path_factory) -> Path:
    return content_slice(small_world, tmp_path_factory.mktemp("cluster-content"), ITEMS)


def _submit(cluster, root: Path, content: Path, executor_env: dict, sets=(), driver_env=None) -> subprocess.Popen:
    """spark-submit of the nightly to the cluster. Executors see only the environment the job gives
    them (spark.executorEnv.*): the repository for the engine doubles, and the test's switches."""
    env_confs = [f"spark.executorEnv.{k}={v}" for k, v in {"PYTHONPATH": str(REPO), **executor_env}.items()]
    confs = ["spark.executor.cores=1", "spark.cores.max=2", "spark.executor.memory=1g",
             "spark.driver.host=127.0.0.1", f"spark.pyspark.python={sys.executable}", *env_confs]
    cmd = [cluster.spark_submit, "--master", cluster.master_url, *sum((["--conf", c] for c in confs), []),
           str(REPO / "jobs" / "nightly.py"), "--content", str(content),
           *sum((["--set", s] for s in [DOUBLE, f"pool.root={root}", *sets]), [])]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "PYTHONPATH": str(REPO), **(driver_env or {})}
    env.pop("PYSPARK_GATEWAY_PORT", None)
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finished(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]
    return out


_version = pool_version


def _rows(vdir: Path) -> pd.DataFrame:
    df = pq.read_table(vdir / "pool").to_pandas()
    df["category"] = df["category"].astype(str)
    return (df.sort_values(["content_id", "rank"]).reset_index(drop=True)
            [["content_id", "category", "rank", "query", "logprob", "model_version", "config_hash"]])


@pytest.fixture(scope="module")
def local_rows(spark, content, tmp_path_factory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("local-pool")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    report = build_pool(spark, load_config(None, [DOUBLE, f"pool.root={root}", "pool.items_per_partition=25"]),
                        str(content))
    assert report.exit_code == 0, (report.error, report.gates)
    return _rows(_version(root)[0])


def test_the_nightly_on_a_standalone_cluster_equals_local_mode(cluster, content, local_rows, tmp_path):
    root = tmp_path / "pool"
    # engine_dies_once is read by the driver and shipped with the job: an engine dies on an executor,
    # is rebuilt there, and the pool is still the local run's
    out = _finished(_submit(cluster, root, content, {}, ["pool.items_per_partition=25"],
                            driver_env={"CMAQ_FAULT_INJECTION": "engine_dies_once"}))
    vdir, manifest = _version(root)
    assert manifest["spark_app_id"].startswith("app-"), manifest["spark_app_id"]  # a cluster app, not local-*
    assert manifest["generation"]["partitions"] == 6 and manifest["counts"]["engine_restarts"] == 1
    pd.testing.assert_frame_equal(_rows(vdir), local_rows)
    assert '"status": "published"' in out


def test_a_worker_killing_item_is_hunted_down_on_the_cluster(cluster, content, tmp_path):
    killer = pq.read_table(content)["content_id"][77].as_py()
    root = tmp_path / "pool"
    _finished(_submit(cluster, root, content, {"CMAQ_TEST_KILLER_ID": killer},  # read by the executors
                      ["engine.backend=tests.doubles.engines:WorkerKillingEngine", "pool.items_per_partition=75",
                       "pool.engine_batch=32"]))
    vdir, manifest = _version(root)
    quarantine = pq.read_table(vdir / "quarantine").to_pandas()
    assert quarantine[["content_id", "reason"]].values.tolist() == [[killer, "engine_crash"]]
    assert manifest["generation"]["engine_crash"] == 1
    served = set(pq.read_table(vdir / "pool").to_pandas()["content_id"])
    dropped = set(pq.read_table(vdir / "dropped").to_pandas()["content_id"])
    assert set(pq.read_table(content)["content_id"].to_pylist()) - {killer} <= served | dropped


def test_a_killed_submission_resumes_on_the_cluster(cluster, content, local_rows, tmp_path):
    root = tmp_path / "pool"
    sets = ["pool.items_per_partition=25", "pool.engine_batch=10", "pool.lease_ttl_s=2"]
    proc = _submit(cluster, root, content, {"CMAQ_TEST_ENGINE_DELAY": "1.0"}, sets)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(root.glob("staging/*/p*/_COMMITTED")):
        time.sleep(0.2)
    kill_tree(proc)  # the driver, and with it the application
    # the master then stops the application's executors; one still running could commit after we count
    wait_gone(set().union(*(descendants(w) for w in cluster.worker_pids)), timeout_s=120)
    committed = {m.parent.name: json.loads(m.read_text()) for m in root.glob("staging/*/p*/_COMMITTED")}
    assert 1 <= len(committed) < 6 and not (root / "current").exists()
    time.sleep(2.5)  # the killed driver's lease expires

    _finished(_submit(cluster, root, content, {}, sets))
    vdir, manifest = _version(root)
    assert manifest["generation"]["committed_before"] == len(committed)
    assert manifest["counts"]["skipped_committed"] == sum(m["items"] for m in committed.values())
    assert manifest["counts"]["generated"] == ITEMS - manifest["counts"]["skipped_committed"]
    pd.testing.assert_frame_equal(_rows(vdir), local_rows)
