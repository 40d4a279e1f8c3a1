"""The ``cmaq`` command line: the entry layer. One module per command group, each loaded when its
command runs (a GPU machine without Spark can still run ``cmaq reproduce``); the root group loads the
configuration once and hands it to every command on click's context object.

Global options come before the command::

    cmaq --config cmaq.toml --set world.seed=11 world generate --items 5000 --out data/world

Exit codes: 0 success, 1 unexpected error, 2 bad option, file or configuration (one-line reason).
"""
from __future__ import annotations

import logging
import sys

import click

from cmaq.cli.lazy import LazyCommand, LazyGroup
from cmaq.cli.settings import Settings

COMMANDS = {
    "config": LazyCommand("cmaq.cli.configuration", "config_group", "Inspect the effective configuration."),
    "world": LazyCommand("cmaq.cli.world", "world_group", "The synthetic platform: notes, query logs, annotations."),
    "data": LazyCommand("cmaq.cli.data", "data_group", "Training-data builders on Spark."),
    "pool": LazyCommand("cmaq.cli.pool", "pool_group", "The recall pool: build, refresh, read, size, roll back, purge."),
    "sql": LazyCommand("cmaq.cli.sql", "sql_group", "Analyst SQL over the published pool (files in sql/)."),
    "train": LazyCommand("cmaq.cli.train", "train_group", "Train the reward models, QSA and the CMAQ policy."),
    "score": LazyCommand("cmaq.cli.score", "score", "Both reward models' scores on the current pool version."),
    "eval": LazyCommand("cmaq.cli.evaluation", "eval_group", "Evaluate policies in RM and oracle space."),
    "reproduce": LazyCommand("cmaq.cli.evaluation", "reproduce", "The whole chain on a world, then the report."),
}


@click.group(cls=LazyGroup, lazy_commands=COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="TOML configuration file (sections as in `cmaq config show`).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override one configuration value; repeatable. Example: --set world.seed=11")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
@click.version_option(package_name="cmaq")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, overrides: tuple[str, ...], verbose: bool) -> None:
    """cmaq: consistent multi-objective aligned related-search query generation.

    A synthetic platform (`world`), training data (`data`), reward models (`train`, `score`),
    the recall pool and its cache (`pool`), analyst SQL (`sql`), evaluation (`eval`, `reproduce`),
    the configuration (`config`).
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Loaded once, whatever the command: a bad file or override fails here with one line.
    ctx.obj = Settings.load(config_path, overrides)
