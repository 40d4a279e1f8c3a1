"""spark-submit entry point of the recall-pool job (also `cmaq pool build`).

    spark-submit jobs/nightly.py --content data/world/content --set pool.root=/data/pool

Exit codes: 0 published, 1 error, 3 ran but failed the data-quality gates (nothing published).
"""
from __future__ import annotations

import argparse
import json
import sys

from jobs.entry import add_config_options, setup


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--content", required=True, help="Content Parquet path or table name.")
    add_config_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    cfg = setup(args)
    if cfg is None:
        return 2
    from cmaq.spark import get_spark
    from jobs.pool import build_pool

    report = build_pool(get_spark("cmaq-nightly"), cfg, args.content)
    print(json.dumps({"run_id": report.run_id, "status": report.status, "exit_code": report.exit_code,
                      "counts": report.counts, "gates": report.gates}, default=str))
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
