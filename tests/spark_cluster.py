"""A throw-away Spark standalone cluster on loopback: one master and N workers, started from the
pyspark package's own launcher (``bin/spark-class``), for tests and for trying spark-submit against a
real cluster on one machine. The workers share this machine's filesystem, so a pool root on it is
the shared storage a real cluster's pool root (HDFS, S3, NFS) must be."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyspark

SPARK_HOME = Path(pyspark.__file__).parent
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


@dataclass(frozen=True)
class Cluster:
    master_url: str      # spark://127.0.0.1:<port>, what spark-submit --master takes
    ui_url: str          # the master's web UI; /json lists the workers
    workers: int
    cores_per_worker: int
    spark_submit: str    # the launcher of this pyspark
    worker_pids: tuple[int, ...]  # the worker daemons; their executors are their child processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive_workers(ui_url: str) -> int:
    try:
        with urllib.request.urlopen(f"{ui_url}/json/", timeout=2) as r:
            state = json.load(r)
    except OSError:
        return -1
    return sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")


@contextmanager
def standalone_cluster(work_dir: Path, workers: int = 2, cores: int = 1, memory: str = "1g",
                       start_timeout_s: float = 120.0) -> Iterator[Cluster]:
    """Start a master and ``workers`` workers of ``cores`` cores each on 127.0.0.1, wait until the
    master lists them alive, yield the cluster, stop everything afterwards (logs under ``work_dir``)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_MASTER_HOST": "127.0.0.1", "SPARK_NO_DAEMONIZE": "1"}
    launcher = str(SPARK_HOME / "bin" / "spark-class")
    port, ui_port = _free_port(), _free_port()
    master_url, ui_url = f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui_port}"
    procs: list[subprocess.Popen] = []

    def start(name: str, args: list[str]) -> None:
        log = open(work_dir / f"{name}.log", "w")
        procs.append(subprocess.Popen([launcher, *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))

    try:
        start("master", [MASTER_CLASS, "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui_port)])
        for i in range(workers):
            start(f"worker-{i}", [WORKER_CLASS, master_url, "--host", "127.0.0.1", "--cores", str(cores),
                                  "--memory", memory, "--webui-port", str(_free_port()),
                                  "--work-dir", str(work_dir / f"worker-{i}")])
        deadline = time.monotonic() + start_timeout_s
        while _alive_workers(ui_url) < workers:
            dead = [p.args[1] for p in procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"the standalone cluster did not come up ({', '.join(dead) or 'timeout'}); "
                                   f"logs in {work_dir}")
            time.sleep(0.5)
        yield Cluster(master_url, ui_url, workers, cores, str(SPARK_HOME / "bin" / "spark-submit"),
                      tuple(p.pid for p in procs[1:]))
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                p.wait()
