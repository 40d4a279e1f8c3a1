"""Benchmark serving: nearline refresh against the nightly, and Redis bulk loads.

    python bench/serving.py [--items 5000] [--backend hf|vllm] [--redis-items 100000]

Prints one JSON object with
- ``nightly_seconds``: the pool job over ``--items`` world items (Spark local mode, cache load included);
- ``nearline_seconds``: `pool refresh` after 1% new items are added, and its ratio to the nightly
  (target <= 0.15);
- ``redis``: items/s loading a version through the sink's pipelined writes against one SET per round
  trip, on a redis-server of its own (targets: >= 10x and >= 50,000 items/s pipelined).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# The throw-away redis-server starter is a test helper (tests/local_redis.py), not part of the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=5000, help="World items the nightly serves.")
    p.add_argument("--new-fraction", type=float, default=0.01, help="Share of new items the refresh sees.")
    p.add_argument("--backend", default="hf", help="Engine for both jobs (hf is the faster one on CPU).")
    p.add_argument("--redis-items", type=int, default=100_000, help="Items per pipelined Redis load.")
    p.add_argument("--naive-items", type=int, default=10_000, help="Items written one SET per round trip.")
    p.add_argument("--seed", type=int, default=41)
    return p


def bench_jobs(args: argparse.Namespace, tmp: Path) -> dict:
    import pandas as pd

    from cmaq.config import WorldConfig, load_config
    from jobs.spark import get_spark
    from cmaq.world.generate import generate_world
    from jobs.nearline import refresh
    from jobs.nightly import build_pool

    generate_world(WorldConfig(seed=args.seed, items=args.items), tmp / "world")
    content = pd.read_parquet(tmp / "world" / "content")
    path = tmp / "content.parquet"
    content.to_parquet(path, index=False)
    cfg = [f"engine.backend={args.backend}", f"pool.root={tmp / 'pool'}",
           f"pool.items_per_partition={max(args.items // 8, 1)}"]
    spark = get_spark("cmaq-bench-serving", master="local[2]")
    t0 = time.perf_counter()
    nightly = build_pool(spark, load_config(None, cfg), str(path))
    nightly_s = time.perf_counter() - t0

    n_new = max(1, round(args.items * args.new_fraction))
    new = content.sample(n_new, random_state=args.seed).copy()
    new["content_id"] = [f"bench-new-{i:06d}" for i in range(n_new)]
    new["updated_at"] = content["updated_at"].max() + pd.Timedelta(minutes=5)
    pd.concat([content, new]).to_parquet(path, index=False)
    t0 = time.perf_counter()
    nearline = refresh(spark, load_config(None, cfg), str(path))
    nearline_s = time.perf_counter() - t0
    spark.stop()
    return {"items": args.items, "backend": args.backend, "nightly_seconds": round(nightly_s, 1),
            "nightly_status": nightly.status, "nightly_timings": nightly.timings,
            "new_items": n_new, "nearline_seconds": round(nearline_s, 1), "nearline_status": nearline.status,
            "nearline_counts": nearline.counts, "nearline_timings": nearline.timings,
            "nearline_to_nightly": round(nearline_s / nightly_s, 3), "target_ratio": 0.15}


def bench_redis(args: argparse.Namespace) -> dict:
    import redis

    from cmaq.pool.sinks import RedisSink, encode_value
    from local_redis import local_redis

    queries = [{"rank": r, "query": f"sample query number {r} about the place", "logprob": -1.5 * (r + 1),
                "relevance": 0.5} for r in range(5)]

    def items(n: int, version: str):
        return [(f"c{i:09d}", encode_value(f"c{i:09d}", version, queries)) for i in range(n)]

    with local_redis() as url:
        sink = RedisSink(url)
        batch = items(args.redis_items, "v1")
        t0 = time.perf_counter()
        sink.write("v1", batch)
        pipelined = len(batch) / (time.perf_counter() - t0)
        client = redis.Redis.from_url(url)
        naive_batch = items(args.naive_items, "v2")
        t0 = time.perf_counter()
        for content_id, value in naive_batch:
            client.set(f"cmaq:v2:{content_id}", value)
        naive = len(naive_batch) / (time.perf_counter() - t0)
        value_bytes = len(batch[0][1])
    return {"value_bytes": value_bytes, "pipelined_items_per_s": round(pipelined),
            "naive_items_per_s": round(naive), "speedup": round(pipelined / naive, 1),
            "target_speedup": 10, "target_pipelined_items_per_s": 50_000}


def main(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="cmaq-bench-serving-"))
    try:
        return {"bench": "serving", **bench_jobs(args, tmp), "redis": bench_redis(args)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    print(json.dumps(main(make_parser().parse_args())))
