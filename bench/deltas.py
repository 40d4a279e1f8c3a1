"""Reading a pool version as a day's nearline deltas pile up, with and without compaction.

    python bench/deltas.py                        # 20,000 items, 500 deltas of 20 items each
    python bench/deltas.py --deltas 60 --repeats 1   # a quick look

Builds a base version (the pool's schemas and layout: ``pool`` partitioned by category) and then
``--deltas`` refresh deltas of ``--per-delta`` items each, one after another, in two pool roots: one
compacted as ``cmaq pool refresh`` does after each delta (``pool.compact_every`` /
``compact_every_min``); then the same root folded into a single delta (``cmaq pool compact``). With
``--uncompacted`` a second root never compacted is timed too (slow: every delta is a read in one plan;
the first full-size run of that state did not finish in 20 minutes). For each state it times (median of ``--repeats``) the two reads that
a version's deltas slow down: the next nightly's carry-forward read (the version's frames, less the
contract's rows, their distinct record keys counted) and the analysts' SQL view
(``cmaq_pool_current``'s SQL, counted). Prints one JSON object; ``policy_over_compacted`` is the
acceptance figure (≤ 2).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cmaq.config import PoolConfig  # noqa: E402
from cmaq.pool.versions import DELTA_MANIFEST, committed_deltas, tables  # noqa: E402
from cmaq.schema import SCORE_COLUMNS  # noqa: E402
from jobs import compact  # noqa: E402
from jobs.catalog import view_sql  # noqa: E402
from jobs.plan import KEY  # noqa: E402
from jobs.pool_tables import generated_frames, named_keys, version_frames  # noqa: E402
from jobs.spark import get_spark  # noqa: E402

CATEGORIES = ("hotpot", "cafe", "spa", "hotel", "bbq")
T0 = datetime(2026, 12, 4, tzinfo=timezone.utc)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=20_000, help="Served items of the base version.")
    p.add_argument("--deltas", type=int, default=500, help="Refresh deltas published after it.")
    p.add_argument("--per-delta", type=int, default=20, help="Items each delta replaces.")
    p.add_argument("--compact-every", type=int, default=PoolConfig().compact_every, help="pool.compact_every.")
    p.add_argument("--repeats", type=int, default=3, help="Timed reads per state (the median is reported).")
    p.add_argument("--uncompacted", action="store_true",
                   help="Also build and time a root whose deltas are never compacted (small runs only).")
    return p


def write_layer(out: Path, ids: list[int], run_id: str, partitioned: bool = True) -> None:
    """One layer (the base, or a delta: unpartitioned, as publish writes them): five served queries,
    one dropped candidate per item."""
    n = len(ids)
    common = {"content_id": [f"c{i:07d}" for i in ids], "content_hash": [f"h{i}-{run_id}" for i in ids],
              "category": [CATEGORIES[i % len(CATEGORIES)] for i in ids]}
    prov = {"model_version": ["m"] * n, "adapter_version": ["a"] * n, "config_hash": ["c"] * n,
            "run_id": [run_id] * n, "generated_at": [T0] * n}
    schemas = dict(tables(False))
    pool = {k: [v for v in vs for _ in range(5)] for k, vs in {**common, **prov}.items()}
    pool.update(rank=list(range(5)) * n, query=[f"query {r} of {c}" for c in common["content_id"] for r in range(5)],
                logprob=[-1.0] * 5 * n, **{s: [0.5] * 5 * n for s in SCORE_COLUMNS})
    pool = pa.table({f.name: pool[f.name] for f in schemas["pool"]}, schema=schemas["pool"])
    if partitioned:
        pq.write_to_dataset(pool, str(out / "pool"), partition_cols=["category"])
    else:
        (out / "pool").mkdir(parents=True)
        pq.write_table(pool, out / "pool" / "part-0.parquet")
    dropped = {**common, **prov, "rank": [5] * n, "query": ["www.spam.com"] * n, "reason": ["url"] * n}
    (out / "dropped").mkdir(parents=True)
    pq.write_table(pa.table({f.name: dropped[f.name] for f in schemas["dropped"]}, schema=schemas["dropped"]),
                   out / "dropped" / "part-0.parquet")
    (out / "quarantine").mkdir(parents=True)
    pq.write_table(schemas["quarantine"].empty_table(), out / "quarantine" / "part-0.parquet")


def build(root: Path, args, spark, policy: PoolConfig | None) -> tuple[Path, int]:
    """The base version and its deltas; ``policy``: compact as refresh does after each delta."""
    vdir = root / "versions" / "v1"
    write_layer(vdir, list(range(args.items)), "v1")
    (vdir / "manifest.json").write_text("{}")
    compactions = 0
    for k in range(args.deltas):
        ids = [(k * args.per_delta + j) % args.items for j in range(args.per_delta)]
        delta = vdir / "deltas" / f"20261204T{k // 3600:02d}{k // 60 % 60:02d}{k % 60:02d}-nearline-{k:06d}"
        write_layer(delta, ids, f"d{k}", partitioned=False)
        (delta / DELTA_MANIFEST).write_text(json.dumps({"op": "nearline"}))
        if policy is not None and compact.due(vdir, policy):
            compact.compact_deltas(spark, vdir)
            compactions += 1
    return vdir, compactions


def timed_reads(spark, vdir: Path, repeats: int) -> dict:
    def carry_forward():
        return named_keys(generated_frames(version_frames(spark, vdir)), KEY).count()

    def sql_view():
        return spark.sql(view_sql(vdir, "pool")).count()

    out = {"deltas": len(committed_deltas(vdir))}
    for name, read in (("carry_forward", carry_forward), ("sql_view", sql_view)):
        read()  # untimed: the first read of a state also lists its files and warms the JVM
        seconds, rows = [], None
        for _ in range(repeats):
            t0 = time.perf_counter()
            rows = read()
            seconds.append(time.perf_counter() - t0)
        out[name] = {"rows": rows, "median_s": round(statistics.median(seconds), 2)}
    return out


def main(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="cmaq-bench-deltas-"))
    spark = get_spark("cmaq-bench-deltas")
    try:
        t0 = time.perf_counter()
        policy_vdir, compactions = build(tmp / "policy", args, spark,
                                         PoolConfig(compact_every=args.compact_every, compact_every_min=0))
        build_s = time.perf_counter() - t0
        states = {"policy": timed_reads(spark, policy_vdir, args.repeats)}
        print(json.dumps({"policy": states["policy"]}), file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        compact.compact_deltas(spark, policy_vdir)
        states["compacted"] = {**timed_reads(spark, policy_vdir, args.repeats),
                               "compaction_s": round(time.perf_counter() - t0, 1)}
        if args.uncompacted:
            raw_vdir, _ = build(tmp / "raw", args, spark, None)
            states["uncompacted"] = timed_reads(spark, raw_vdir, args.repeats)
        for name in set(states) - {"compacted"}:  # every state holds the same rows
            for read in ("carry_forward", "sql_view"):
                assert states[name][read]["rows"] == states["compacted"][read]["rows"], (name, read)
        ratio = {read: round(states["policy"][read]["median_s"] / states["compacted"][read]["median_s"], 2)
                 for read in ("carry_forward", "sql_view")}
        return {"bench": "deltas", "items": args.items, "deltas": args.deltas, "per_delta": args.per_delta,
                "compact_every": args.compact_every, "compactions": compactions,
                "policy_build_s": round(build_s, 1), "states": states, "policy_over_compacted": ratio}
    finally:
        spark.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(main(make_parser().parse_args())))
