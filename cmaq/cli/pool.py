"""`cmaq pool`: build, refresh, read, size, roll back and purge the recall pool. The Spark commands
(the jobs and rollback, which switches the catalog's views) and the cache readers live in two
modules, each imported when one of its commands runs."""
from __future__ import annotations

import click

from cmaq.cli.lazy import LazyCommand, LazyGroup

JOBS, CACHE = "cmaq.cli.pool_jobs", "cmaq.cli.pool_cache"
POOL_COMMANDS = {
    "build": LazyCommand(JOBS, "build", "Generate, filter, gate and publish a complete pool version."),
    "refresh": LazyCommand(JOBS, "refresh", "Nearline: new or changed content into the current version."),
    "purge": LazyCommand(JOBS, "purge", "Takedown without regeneration, in Parquet and the cache together."),
    "get": LazyCommand(CACHE, "get", "The served queries of one content from the cache (exit 4 on a miss)."),
    "kv-size": LazyCommand(CACHE, "kv_size", "Cache memory per item and for two versions."),
    "compact": LazyCommand(JOBS, "compact", "Fold the current version's nearline deltas into one."),
    "stream": LazyCommand(JOBS, "stream", "Nearline as a stream: dropped notes into the current version."),
    "status": LazyCommand(CACHE, "status", "What the stream last reported: batches, latency, progress."),
    "rollback": LazyCommand(JOBS, "rollback", "Serve an earlier version again (both pointers together)."),
}


@click.group("pool", cls=LazyGroup, lazy_commands=POOL_COMMANDS)
def pool_group() -> None:
    """The recall pool: build, refresh, read, size, roll back and purge."""
