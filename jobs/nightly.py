"""spark-submit entry point of the recall-pool job (also `cmaq pool build`).

    spark-submit jobs/nightly.py --content data/world/content --set pool.root=/data/pool

Exit codes: 0 published, 1 error, 3 ran but failed the data-quality gates (nothing published).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from cmaq.config import ConfigError, load_config


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--content", required=True, help="Content Parquet path or table name.")
    p.add_argument("--config", help="TOML configuration file.")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    from cmaq.spark import get_spark
    from jobs.pool import build_pool

    report = build_pool(get_spark("cmaq-nightly"), cfg, args.content)
    print(json.dumps({"run_id": report.run_id, "status": report.status, "exit_code": report.exit_code,
                      "counts": report.counts, "gates": report.gates}, default=str))
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
