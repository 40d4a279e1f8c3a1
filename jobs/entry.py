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
