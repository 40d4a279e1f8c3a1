"""Benchmark the whole FilterChain (without the embedding scorer) on world candidates, one core.

    python bench/filter_chain.py [--items 20000] [--per-item 5] [--chain serving|training|all]

Candidates are 5 grammar queries per world item (mixed en/zh), joined to their notes, fed in Arrow
batches of --batch rows as Spark's mapInArrow would. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cmaq.config import FiltersConfig, WorldConfig
from filters import FilterChain, merge_counts


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--per-item", type=int, default=5)
    p.add_argument("--batch", type=int, default=10_000, help="Rows per Arrow batch.")
    p.add_argument("--chain", choices=("serving", "training", "all"), default="all")
    p.add_argument("--seed", type=int, default=7)
    return p


def world_candidates(items: int, per_item: int, seed: int) -> pa.Table:
    from cmaq.world.generate import generate_world

    out = Path(tempfile.mkdtemp(prefix="cmaq-bench-filters-")) / "w"
    generate_world(WorldConfig(seed=seed, items=items), out)
    content = pq.read_table(out / "content")
    truth = pq.read_table(out / "truth/grammar", columns=["content_id", "query"])
    rng = np.random.default_rng(seed)
    keys = rng.random(truth.num_rows)
    order = np.lexsort((keys, truth["content_id"].to_numpy(zero_copy_only=False)))
    ids = truth["content_id"].to_numpy(zero_copy_only=False)[order]
    first = np.r_[True, ids[1:] != ids[:-1]]
    rank = np.arange(len(ids)) - np.maximum.accumulate(np.where(first, np.arange(len(ids)), 0))
    picked = truth.take(pa.array(order[rank < per_item]))
    return picked.join(content.drop_columns(["updated_at"]), "content_id")


def main(args: argparse.Namespace) -> dict:
    pa.set_cpu_count(1)
    cfg = FiltersConfig()
    names = {"serving": cfg.serving, "training": cfg.training,
             "all": ["lexical", "harm", "commercial", "similarity", "relevance"]}[args.chain]
    chain = FilterChain(names, cfg)
    table = world_candidates(args.items, args.per_item, args.seed)
    batches = table.to_batches(max_chunksize=args.batch)
    t0 = time.perf_counter()
    counts = merge_counts(*(chain.run(rb).counts for rb in batches))
    seconds = time.perf_counter() - t0
    return {"bench": "filters", "chain": names, "candidates": table.num_rows, "seconds": round(seconds, 3),
            "candidates_per_s": round(table.num_rows / seconds, 1), "target_candidates_per_s": 100_000,
            "kept_fraction": round(counts["kept"] / counts["input"], 4), "counts": counts}


if __name__ == "__main__":
    print(json.dumps(main(make_parser().parse_args())))
