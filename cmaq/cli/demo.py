"""`make demo`: run the main job end to end on embedded defaults, and say where everything went.

world -> the task model (committed weights, copied into the model cache once) -> the recall-pool job in Spark local mode with the vLLM
engine over a sample of the notes -> Parquet pool and the SQLite cache -> one SQL report and one
cache lookup. It serves the bare task model (``pool.adapter`` empty) unless configured otherwise;
``--set model.factory=tiny`` serves the unit tests' tiny model instead.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from cmaq.cli.world import format_summary
from cmaq.config import ConfigError, load_config, with_values
from cmaq.engines import base_model_dir
from cmaq.pool.reader import Reader
from cmaq.pool.sinks import redact_url
from cmaq.world.generate import generate_world
from jobs.nightly import build_pool
from jobs.spark import get_spark
from jobs.sql import run_sql


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cmaq.cli.demo", description=__doc__)
    p.add_argument("--out", default="demo_out", help="Directory for everything the demo writes (recreated).")
    p.add_argument("--config", default=None, help="Optional TOML configuration file.")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="Configuration override; repeatable.")
    p.add_argument("--pool-items", type=int, default=120,
                   help="Notes the pool job generates for (the CPU build of vLLM beam-searches a few per second).")
    return p


def show_sample(world_dir: Path) -> str:
    """One note and its most-clicked logged queries, as a reader would meet them."""
    content = pq.read_table(world_dir / "content", filters=[("content_id", "=", "c000000000")]).to_pylist()[0]
    logs = pq.read_table(world_dir / "logs", filters=[("content_id", "=", content["content_id"])])
    agg = logs.group_by("query").aggregate([("impressions", "sum"), ("clicks", "sum")])
    ctr = pc.divide(pc.cast(agg["clicks_sum"], "double"), pc.cast(agg["impressions_sum"], "double"))
    agg = agg.append_column("ctr", ctr).sort_by([("ctr", "descending")])
    body = content["body"] if len(content["body"]) < 240 else content["body"][:240] + "…"
    lines = [f"sample note {content['content_id']} ({content['lang']}, {content['category']}): {content['title']}",
             f"  {body}".replace("\n", " "), "  logged related searches (12 months, by observed CTR):"]
    for row in agg.to_pylist()[:6]:
        lines.append(f"    {row['ctr']:6.1%}  {row['impressions_sum']:>7,} impressions  {row['query']}")
    return "\n".join(lines)


class StepTimes:
    """Seconds per demo step, printed as one breakdown at the end (the first run's cost, step by step)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def line(self) -> str:
        total = sum(self.seconds.values())
        parts = ", ".join(f"{name} {s:.0f} s" for name, s in self.seconds.items())
        return f"[demo] time by step: {parts} (total {total:.0f} s)"


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        # the demo's own default: the model that can do the task (the library's default is the tiny one)
        cfg = load_config(args.config, ["model.factory=task", *args.overrides])
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    world_dir = out / "world"
    if world_dir.exists():
        shutil.rmtree(world_dir)  # the demo's own output from a previous run
    times = StepTimes()
    print(f"[demo] generating a synthetic world of {cfg.world.items:,} notes (seed {cfg.world.seed})", flush=True)
    with times.step("world"):
        summary = generate_world(cfg.world, world_dir)
    manifest = json.loads((world_dir / "world.json").read_text("utf-8"))
    print(format_summary(summary.out, manifest))
    print(show_sample(world_dir))
    code = run_pool(cfg, world_dir, out, args.pool_items, times)
    print(times.line())
    print(f"[demo] done. Everything is under {out}")
    return code


def run_pool(cfg, world_dir: Path, out: Path, n_items: int, times: StepTimes) -> int:
    """The main job on a sample of the world's notes, then one analyst report."""
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    if not (cfg.model.base_dir or cfg.engine.model_dir):
        print(f"[demo] preparing the {cfg.model.factory} model (cached after the first run)", flush=True)
        with times.step("model"):
            base_model_dir(cfg.model)
    sample = out / "content_sample.parquet"
    pq.write_table(pq.read_table(world_dir / "content").slice(0, n_items), sample)
    pool_root = out / "pool"
    if pool_root.exists():
        shutil.rmtree(pool_root)
    cfg = with_values(cfg, {"pool.root": str(pool_root), "pool.items_per_partition": max(1, n_items // 4)})
    print(f"[demo] running the recall-pool job on {n_items} notes (Spark local mode, vLLM engine)", flush=True)
    with times.step("spark start"):
        spark = get_spark("cmaq-demo")
    with times.step("pool job"):
        report = build_pool(spark, cfg, str(sample))
    print(f"[demo] pool job: {report.status} (exit {report.exit_code}); counts {json.dumps(report.counts)}")
    if report.exit_code != 0:
        print(f"[demo] see {pool_root}/runs/{report.run_id}.json", file=sys.stderr)
        return report.exit_code
    with times.step("report"):
        show_results(spark, cfg, pool_root, report.run_id)
    return 0


def show_results(spark, cfg, pool_root: Path, run_id: str) -> None:
    """The analyst's coverage report, a few served queries and one cache lookup."""
    sql_file = Path(__file__).resolve().parents[2] / "sql" / "coverage_by_category.sql"
    if sql_file.exists():
        print("[demo] sql/coverage_by_category.sql:")
        print(run_sql(spark, sql_file, pool_root).toPandas().to_string(index=False))
    top = pq.read_table(pool_root / "versions" / run_id / "pool").to_pandas().sort_values(["content_id", "rank"])
    print("[demo] a few served queries:")
    for row in top.head(5).itertuples():
        print(f"    {row.content_id}  #{row.rank}  {row.query}")
    first = top.content_id.iloc[0]
    hit = Reader(cfg.pool.kv(), cfg.pool.kv_prefix).get(first)
    print(f"[demo] cmaq pool get {first}  (cache {redact_url(cfg.pool.kv())}, version {hit.version}):")
    for q in hit.queries:
        print(f"    #{q['rank']}  {q['query']}")
    print(f"[demo] pool version {run_id} in {pool_root}/versions/{run_id}/ "
          f"(pointer {pool_root}/current, run manifest {pool_root}/runs/{run_id}.json)")


if __name__ == "__main__":
    sys.exit(main())
