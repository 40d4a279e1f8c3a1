"""spark-submit entry point of the recall-pool job (also `cmaq pool build`).

    spark-submit jobs/nightly.py --content data/world/content --set pool.root=/data/pool

Exit codes: 0 published, 1 error, 3 ran but failed the data-quality gates (nothing published).
"""
from __future__ import annotations

import sys

from jobs.entry import content_job_parser, run_content_job


def make_parser():
    return content_job_parser(__doc__)


def main(argv: list[str] | None = None) -> int:
    from jobs.pool import build_pool

    return run_content_job(argv, __doc__, "cmaq-nightly", build_pool,
                           ("run_id", "status", "exit_code", "counts", "gates"))


if __name__ == "__main__":
    sys.exit(main())
