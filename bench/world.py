"""Benchmark the world generator: items/s and peak RSS on one core.

    python bench/world.py [--items 200000] [--out DIR]

Prints one JSON object. Arrow's thread pools are pinned to one thread; the generator runs in
``--workers`` processes (default: one per core, up to 4), so ``--workers 1`` gives the one-core
figure. ``cpu_seconds`` counts this process only.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from cmaq.config import WorldConfig
from cmaq.world.generate import default_workers, generate_world


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=200_000, help="Items to generate (default 200,000).")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--workers", type=int, default=None,
                   help="Generator processes (default: the generator's own choice, one per core up to 4).")
    p.add_argument("--out", default=None, help="Output directory (default: a temporary one, removed after).")
    return p


def main(args: argparse.Namespace) -> dict:
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    tmp = None
    out = Path(args.out) if args.out else Path(tmp := tempfile.mkdtemp(prefix="cmaq-bench-world-")) / "w"
    try:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        cfg = WorldConfig(seed=args.seed, items=args.items)
        workers = args.workers or default_workers(cfg)
        summary = generate_world(cfg, out, workers=workers)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        bytes_on_disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "bench": "world", "items": args.items, "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
        "items_per_s": round(args.items / wall, 1), "workers": workers, "target_items_per_s": 20_000,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_worker_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "log_rows": summary.counts["logs"], "disk_mb": round(bytes_on_disk / 2**20, 1),
    }


if __name__ == "__main__":
    print(json.dumps(main(make_parser().parse_args())))
    sys.exit(0)
