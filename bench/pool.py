"""Benchmark the pool job against the bare engine on the same world items.

    python bench/pool.py [--items 2000] [--backend vllm|hf] [--adapter PATH]

Prints one JSON object: raw engine time (engine creation included, no Spark), whole-job time
(Spark local mode, generation + filters + gates + publish), and their ratio (target <= 1.3).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--backend", default="vllm")
    p.add_argument("--adapter", default="", help="Adapter to serve; empty: the bare base model.")
    p.add_argument("--seed", type=int, default=31)
    return p


def main(args: argparse.Namespace) -> dict:
    import pyarrow.parquet as pq

    from cmaq.config import WorldConfig, load_config
    from cmaq.engines import make_engine
    from jobs.spark import get_spark
    from cmaq.world.generate import generate_world
    from jobs.nightly import build_pool

    tmp = Path(tempfile.mkdtemp(prefix="cmaq-bench-pool-"))
    try:
        generate_world(WorldConfig(seed=args.seed, items=args.items), tmp / "world")
        cfg = load_config(None, [f"engine.backend={args.backend}", f"pool.root={tmp / 'pool'}",
                                 f"pool.adapter={json.dumps(args.adapter)}",
                                 f"pool.items_per_partition={max(args.items // 8, 1)}"])
        items = pq.read_table(tmp / "world" / "content").to_pylist()

        t0 = time.perf_counter()
        engine = make_engine(cfg.engine)
        for start in range(0, len(items), 64):
            engine.beam(items[start:start + 64], width=cfg.engine.beam_width, adapter=args.adapter or None)
        raw = time.perf_counter() - t0
        if hasattr(engine, "close"):
            engine.close()
        del engine

        spark = get_spark("cmaq-bench-pool", master="local[2]")
        t0 = time.perf_counter()
        report = build_pool(spark, cfg, str(tmp / "world" / "content"))
        job = time.perf_counter() - t0
        spark.stop()
        return {"bench": "pool", "items": args.items, "backend": args.backend, "adapter": bool(args.adapter),
                "raw_engine_seconds": round(raw, 1), "job_seconds": round(job, 1), "ratio": round(job / raw, 3),
                "target_ratio": 1.3, "job_status": report.status, "job_timings": report.timings}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    print(json.dumps(main(make_parser().parse_args())))
