"""What every spark-submit entry point shares: logging, and the config from --config / --set."""
from __future__ import annotations

import argparse
import logging
import sys

from cmaq.config import CmaqConfig, ConfigError, load_config


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
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--content", required=True, help="Content Parquet path or table name.")
    add_config_options(p)
    return p


def run_content_job(argv: list[str] | None, doc: str, app_name: str, job, fields: tuple[str, ...]) -> int:
    """Parse, load the config, run ``job(spark, cfg, content)`` and print the report's ``fields`` as
    one JSON line; the exit code is the report's (2 for a bad config)."""
    import json
    from dataclasses import asdict

    args = content_job_parser(doc).parse_args(argv)
    cfg = setup(args)
    if cfg is None:
        return 2
    from cmaq.spark import get_spark

    report = asdict(job(get_spark(app_name), cfg, args.content))
    print(json.dumps({k: report[k] for k in fields}, default=str))
    return report["exit_code"]
