"""`make demo`: run what the project has, end to end, on embedded defaults, and say where it went.

Today that is the synthetic world; later stages (tiny model, the Spark pool job, the KV cache)
join here as they land.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from cmaq.config import ConfigError, load_config


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cmaq.demo", description=__doc__)
    p.add_argument("--out", default="demo_out", help="Directory for everything the demo writes (recreated).")
    p.add_argument("--config", default=None, help="Optional TOML configuration file.")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="Configuration override; repeatable.")
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


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    from cmaq.cli import format_summary
    from cmaq.world.generate import generate_world

    out = Path(args.out).resolve()
    world_dir = out / "world"
    if world_dir.exists():
        shutil.rmtree(world_dir)  # the demo's own output from a previous run
    print(f"[demo] generating a synthetic world of {cfg.world.items:,} notes (seed {cfg.world.seed})", flush=True)
    summary = generate_world(cfg.world, world_dir)
    manifest = json.loads((world_dir / "world.json").read_text("utf-8"))
    print(format_summary(summary.out, manifest))
    print(show_sample(world_dir))
    print(f"[demo] done. Everything is under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
