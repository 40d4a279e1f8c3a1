"""Benchmark the training-data builders on Spark local[2] over a generated world.

    python bench/data.py [--items 100000]

Prints one JSON object: world generation time (not counted), then wall time of each builder and
their total (target for 100k items on 2 cores: < 5 minutes).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=7)
    return p


def main(args: argparse.Namespace) -> dict:
    from cmaq.config import WorldConfig, load_config
    from jobs.spark import get_spark
    from cmaq.world.generate import generate_world
    from jobs.data.builders import run

    tmp = Path(tempfile.mkdtemp(prefix="cmaq-bench-data-"))
    try:
        t0 = time.perf_counter()
        generate_world(WorldConfig(seed=args.seed, items=args.items), tmp / "world")
        out = {"bench": "data", "items": args.items, "world_seconds": round(time.perf_counter() - t0, 1)}
        spark = get_spark("cmaq-bench-data", master="local[2]")
        cfg = load_config()
        total = 0.0
        for kind in ("sft", "ctr-pairs", "expansion"):
            t0 = time.perf_counter()
            summary = run(kind, cfg, str(tmp / "world"), str(tmp / "out"), spark)
            seconds = time.perf_counter() - t0
            total += seconds
            out[f"{kind}_seconds"] = round(seconds, 1)
            out[f"{kind}_rows"] = summary["written"]
        out["total_seconds"] = round(total, 1)
        out["target_seconds"] = 300
        spark.stop()
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(main(make_parser().parse_args())))
