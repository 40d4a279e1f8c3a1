"""Latency of the stream: from a file's arrival in the drop directory to the cache returning its notes.

    python bench/stream_latency.py                    # 10 notes every 5 s for 2 minutes, 5 s trigger
    python bench/stream_latency.py --minutes 0.5      # a quick look

Publishes a nightly over ``--base`` notes of a synthetic world with the tiny model on the
transformers engine, starts ``jobs/stream.py`` as its own process (the embedded defaults: SQLite
cache, embedded catalog) and, once it runs and has published a first warm-up file (its workers load
the model in the first batch; that batch's time is reported as ``first_batch_s``), drops a file of
``--per-file`` new notes every ``--every-s`` seconds the way a producer must (a hidden name, then a
rename). A reader polls the cache for every note; a note's latency is from its file's rename to the
first read that returns its queries. Notes the serving filters leave without a query never appear
in the cache; they are counted (``unserved``), and the stream's own per-file figure (arrival to keys
written, from batches.jsonl) covers every file. Prints one JSON object; the acceptance figures are
``cache_latency.p50_s`` ≤ 15 and ``cache_latency.p95_s`` ≤ 30.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from cmaq.config import WorldConfig, load_config  # noqa: E402
from cmaq.engines.tiny import build_tiny_model  # noqa: E402
from cmaq.pool.reader import Reader  # noqa: E402
from cmaq.world.generate import generate_world  # noqa: E402
from jobs.nightly import build_pool  # noqa: E402
from jobs.spark import get_spark  # noqa: E402


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=2.0, help="How long files are dropped.")
    p.add_argument("--every-s", type=float, default=5.0, help="Seconds between dropped files.")
    p.add_argument("--per-file", type=int, default=10, help="New notes per file.")
    p.add_argument("--trigger-s", type=float, default=5.0, help="stream.trigger_s.")
    p.add_argument("--base", type=int, default=100, help="Notes of the nightly the stream adds to.")
    p.add_argument("--keep", action="store_true", help="Keep the work directory (the stream's log, batches).")
    p.add_argument("--drain-s", type=float, default=90.0, help="Most seconds to wait after the last file.")
    return p


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50_s": round(statistics.median(values), 2), "p95_s": round(percentile(values, 0.95), 2),
            "max_s": round(max(values), 2)}


def main(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="cmaq-bench-stream-"))
    n_files = int(args.minutes * 60 / args.every_s)
    try:
        generate_world(WorldConfig(seed=11, items=args.base + (n_files + 1) * args.per_file), tmp / "world")
        content = pq.read_table(tmp / "world" / "content").to_pandas()
        content.iloc[:args.base].to_parquet(tmp / "base.parquet", index=False)
        opts = [f"model.base_dir={build_tiny_model()}", "engine.backend=hf", f"pool.root={tmp / 'pool'}",
                f"stream.trigger_s={args.trigger_s}"]
        spark = get_spark("cmaq-bench-stream-nightly")
        nightly = build_pool(spark, load_config(None, opts), str(tmp / "base.parquet"))
        spark.stop()
        assert nightly.exit_code == 0, nightly.error
        cfg = load_config(None, opts)
        stream = subprocess.Popen([sys.executable, str(REPO / "jobs" / "stream.py"),
                                   *sum((["--set", o] for o in opts), [])], cwd=REPO,
                                  env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                                  stderr=open(tmp / "stream.log", "w"), start_new_session=True)
        try:
            status = cfg.stream.status_file(cfg.pool.root)
            t0 = time.time()
            while not status.exists():  # written once the query runs
                if stream.poll() is not None or time.time() - t0 > 300:
                    raise RuntimeError(f"the stream did not start: {(tmp / 'stream.log').read_text()[-3000:]}")
                time.sleep(0.2)
            startup_s = time.time() - t0
            warm = content.iloc[-args.per_file:]
            t0 = time.time()
            drop_file(cfg, "warm-up", warm)
            batches = cfg.stream.root(cfg.pool.root) / "batches.jsonl"
            while not batches.exists():
                if stream.poll() is not None or time.time() - t0 > 300:
                    raise RuntimeError(f"no first batch: {(tmp / 'stream.log').read_text()[-3000:]}")
                time.sleep(0.2)
            first_batch_s = time.time() - t0
            return {"bench": "stream_latency", "files": n_files, "per_file": args.per_file,
                    "every_s": args.every_s, "trigger_s": args.trigger_s, "stream_startup_s": round(startup_s, 1),
                    "first_batch_s": round(first_batch_s, 1),
                    **produce_and_read(content.iloc[args.base:-args.per_file], cfg, tmp, n_files, args)}
        finally:
            stream.send_signal(signal.SIGTERM)
            try:
                stream.wait(timeout=120)
            except subprocess.TimeoutExpired:
                stream.kill()
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def drop_file(cfg, name: str, notes: pd.DataFrame) -> float:
    """Drop ``notes`` as a producer must (a hidden name, then a rename); the rename's time."""
    drop = cfg.stream.root(cfg.pool.root) / "drop"
    drop.mkdir(parents=True, exist_ok=True)
    tmp_file = drop / f"_{name}.parquet.tmp"
    notes.assign(updated_at=pd.Timestamp.now(tz="UTC")).to_parquet(tmp_file, index=False)
    os.replace(tmp_file, drop / f"{name}.parquet")
    return (drop / f"{name}.parquet").stat().st_ctime


def produce_and_read(notes: pd.DataFrame, cfg, tmp: Path, n_files: int, args) -> dict:
    reader = Reader(cfg.pool.kv(), cfg.pool.kv_prefix)
    arrived: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = threading.Event()

    def read_cache():
        while not done.is_set():
            for cid in [c for c in arrived if c not in seen]:
                if reader.get(cid).hit:
                    seen[cid] = time.time()
            time.sleep(0.5)  # a reader's poll is CPU the stream does not get on a 2-core machine

    poller = threading.Thread(target=read_cache, daemon=True)
    poller.start()
    start = time.time()
    for k in range(n_files):
        batch = notes.iloc[k * args.per_file:(k + 1) * args.per_file]
        renamed = drop_file(cfg, f"f{k:04d}", batch)
        for cid in batch.content_id:
            arrived[cid] = renamed
        time.sleep(max(0.0, start + (k + 1) * args.every_s - time.time()))
    batches_file = cfg.stream.root(cfg.pool.root) / "batches.jsonl"
    deadline = time.time() + args.drain_s
    while time.time() < deadline:  # until every file is in a published batch
        lines = [json.loads(x) for x in batches_file.read_text().splitlines()] if batches_file.exists() else []
        if sum(b["files"] for b in lines) >= n_files + 1:
            time.sleep(1.0)  # the poller's last round
            break
        time.sleep(0.5)
    done.set()
    poller.join()
    lines = [json.loads(x) for x in batches_file.read_text().splitlines()][1:]  # after the warm-up batch
    latencies = [seen[c] - arrived[c] for c in seen]
    steps = {k: round(statistics.median(b["timings"].get(k, 0.0) for b in lines), 2)
             for k in ("select", "generate", "publish", "carry")}
    return {"notes": len(arrived), "served": len(seen), "unserved": len(arrived) - len(seen),
            "cache_latency": summary(latencies),
            "stream_file_latency": summary([b["latency_s"]["max"] for b in lines if b["latency_s"]]),
            "batches": len(lines), "files_per_batch": round(statistics.mean(b["files"] for b in lines), 2),
            "median_batch_step_s": steps}


if __name__ == "__main__":
    print(json.dumps(main(make_parser().parse_args())))
