"""What every spark-submit entry point shares: logging, the config from --config / --set, exit codes,
step timings, and running one content job."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator

from cmaq.config import CmaqConfig, ConfigError, PoolConfig, load_config
from cmaq.pool import write_record
from cmaq.pool.lease import writer_lease
from jobs.catalog import catalog_session
from jobs.contract import BadInput

# 0 published (or refreshed), 1 error, 2 bad input or configuration, 3 ran but failed the gates.
EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_GATES = 0, 1, 2, 3
EXIT_CODES_HELP = ("Exit codes: 0 published (refreshed, or nothing to do), 1 error, 2 bad input or "
                   "configuration (nothing written but runs/<id>.json), 3 the data-quality gates failed "
                   "(nothing published).")
log = logging.getLogger(__name__)


def add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML configuration file.")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="Configuration override; repeatable.")


def setup(args: argparse.Namespace) -> CmaqConfig | None:
    """Configure logging and load the config; on a bad config print one line and return None."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return None


def content_job_parser(doc: str) -> argparse.ArgumentParser:
    """The parser of a job that reads one content table (the nightly and the nearline refresh)."""
    p = argparse.ArgumentParser(description=doc, epilog=EXIT_CODES_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--content", required=True, help="Content Parquet path or table name (the input contract: "
                                                    "jobs/contract.py).")
    add_config_options(p)
    return p


def run_content_job(argv: list[str] | None, doc: str, app_name: str, job, fields: tuple[str, ...]) -> int:
    """Parse, load the config, run ``job(spark, cfg, content)`` and print the report's ``fields`` as
    one JSON line; the exit code is the report's (2 for a bad config)."""
    args = content_job_parser(doc).parse_args(argv)
    cfg = setup(args)
    if cfg is None:
        return EXIT_BAD_INPUT
    report = asdict(job(catalog_session(app_name, cfg.pool), cfg, args.content))
    print(json.dumps({k: report[k] for k in fields}, default=str))
    return report["exit_code"]


class Timer:
    """``with timer("step"):`` records the step's seconds in ``report.timings``."""

    def __init__(self, report):
        self.report = report

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.report.timings[name] = round(time.perf_counter() - t0, 2)


def checked_input(root: Path, report, op_id: str, read: Callable[[], object]):
    """``read()``, the input contract's check, before any lease or staging. On :class:`BadInput` the
    report says ``bad_input`` with the one-line reason, ``runs/<op_id>.json`` records it (when the
    pool root exists) and None is returned: nothing else is written."""
    try:
        return read()
    except BadInput as exc:
        log.error("bad input: %s", exc)
        report.status, report.exit_code, report.error = "bad_input", EXIT_BAD_INPUT, str(exc)
        if root.exists():
            write_record(root, op_id, asdict(report))
        return None


def run_recorded(pool_cfg: PoolConfig, report, op_id: str, owner: str, steps: Callable[[Timer], None]) -> None:
    """``steps(timer)`` under the pool's writer lease. Whatever happens the report is recorded in
    ``runs/<op_id>.json`` (when the pool root exists); an exception becomes the report's error and exit
    code 1 instead of propagating, so a job never dies without its manifest."""
    root = Path(pool_cfg.root)
    try:
        with writer_lease(pool_cfg, f"{owner} {op_id}"):
            steps(Timer(report))
    except Exception as exc:  # noqa: BLE001 - recorded in the run manifest, exit code 1
        log.exception("%s %s failed", owner, op_id)
        report.status, report.exit_code, report.error = "error", EXIT_ERROR, f"{type(exc).__name__}: {exc}"
    finally:
        if root.exists():
            write_record(root, op_id, asdict(report))
