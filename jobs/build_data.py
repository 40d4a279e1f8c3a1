"""spark-submit entry point of the training-data builders.

    spark-submit jobs/build_data.py sft --world data/world --out data/train
    spark-submit jobs/build_data.py ctr-pairs --content db.content --logs db.logs --out data/train

The same code runs in local mode (`cmaq data sft ...`) and on a cluster; only the session differs.
"""
from __future__ import annotations

import argparse
import json
import sys

from jobs.data.builders import run
from jobs.contract import BadInput
from jobs.entry import EXIT_BAD_INPUT, add_config_options, setup
from jobs.spark import get_spark


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("sft", "ctr-pairs", "expansion"))
    p.add_argument("--world", help="A world directory (content/, logs/, annotations/).")
    p.add_argument("--content", help="Content Parquet path or table name (overrides --world).")
    p.add_argument("--logs", help="Logs Parquet path or table name (overrides --world).")
    p.add_argument("--annotations", help="Annotations Parquet path or table name (overrides --world).")
    p.add_argument("--out", required=True, help="Output directory.")
    add_config_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    cfg = setup(args)
    if cfg is None:
        return EXIT_BAD_INPUT
    if not args.world and not args.content:
        print("Error: give --world or --content (and --logs / --annotations)", file=sys.stderr)
        return EXIT_BAD_INPUT
    spark = get_spark(f"cmaq-data-{args.kind}")
    try:
        summary = run(args.kind, cfg, args.world, args.out, spark, args.content, args.logs, args.annotations)
    except BadInput as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
