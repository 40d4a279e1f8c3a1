"""`cmaq pool build / refresh / stream / purge / compact / rollback`: the Spark jobs that write the pool and move its
pointers. Each session opens the pool's catalog (``pool.catalog``) so the analysts' views follow."""
from __future__ import annotations

import click

from cmaq.cli.settings import BadInput, config_option, echo_json, pass_config
from cmaq.config import CmaqConfig
from cmaq.pool.lease import LeaseHeld
from cmaq.pool.rollback import rollback as rollback_pool
from jobs.catalog import catalog_session, register_current
from jobs.compact import compact_current
from jobs.nearline import refresh as refresh_pool
from jobs.nightly import build_pool
from jobs.purge import purge as purge_pool
from jobs.stream import run_stream, stop_on_signals


@click.command("build")
@click.option("--content", required=True, help="Content Parquet path or table name (input contract: "
              "content_id, title, body required; see the README).")
@config_option("pool.root", "--root")
@config_option("pool.adapter", "--adapter")
@pass_config
@click.pass_context
def build(ctx: click.Context, cfg: CmaqConfig, content: str) -> None:
    """Generate, filter, gate and publish a complete pool version. Exit 0 published, 1 error,
    2 bad input or configuration (the content table breaks the input contract: one line names the
    column, its type and the expected type; nothing written but runs/<id>.json), 3 gates failed
    (nothing published)."""
    report = build_pool(catalog_session("cmaq-pool-build", cfg.pool), cfg, content)
    echo_json({"run_id": report.run_id, "status": report.status, "counts": report.counts, "gates": report.gates,
               "error": report.error})
    ctx.exit(report.exit_code)


@click.command("refresh")
@click.option("--content", required=True, help="Content Parquet path or table name (the full table; rows "
              "updated after the watermark are the candidates).")
@config_option("pool.root", "--root")
@pass_config
@click.pass_context
def refresh(ctx: click.Context, cfg: CmaqConfig, content: str) -> None:
    """Nearline: generate queries for new or changed content and add them to the current version
    (Parquet delta + cache); takedown rows (deleted = true) purge their items. Exit 0 refreshed or
    nothing to do, 1 error, 2 bad input or configuration."""
    report = refresh_pool(catalog_session("cmaq-nearline", cfg.pool), cfg, content)
    echo_json({"op_id": report.op_id, "status": report.status, "version": report.version, "counts": report.counts,
               "watermark": report.watermark, "delta": report.delta, "error": report.error})
    ctx.exit(report.exit_code)


@click.command("stream")
@click.option("--once", is_flag=True, help="Process what is available now, then exit (tests, cron).")
@config_option("pool.root", "--root")
@config_option("stream.trigger_s", "--trigger-s")
@pass_config
@click.pass_context
def stream(ctx: click.Context, cfg: CmaqConfig, once: bool) -> None:
    """Nearline as a stream: notes dropped into <stream dir>/drop/ (Parquet or JSON lines, written
    under a name starting with _ or . and renamed into place) reach the current version's cache and
    Parquet one micro-batch at a time, exactly once; bad files go to quarantine/ with their reason.
    Runs until SIGTERM or Ctrl-C. Exit 0 stopped (or done, with --once), 1 error, 2 bad configuration."""
    ctx.exit(run_stream(catalog_session("cmaq-pool-stream", cfg.pool), cfg, once, stop_on_signals()))


@click.command("purge")
@click.option("--content-id", "content_ids", multiple=True, help="Remove this item entirely; repeatable.")
@click.option("--term", "terms", multiple=True, help="Remove queries containing this newly blocked term; repeatable.")
@config_option("pool.root", "--root")
@pass_config
def purge(cfg: CmaqConfig, content_ids: tuple[str, ...], terms: tuple[str, ...]) -> None:
    """Takedown without regeneration, in Parquet and the cache together; recorded under runs/."""
    if not content_ids and not terms:
        raise BadInput("name --content-id or --term")
    try:
        record = purge_pool(cfg, catalog_session("cmaq-pool-purge", cfg.pool), list(content_ids), list(terms))
    except (FileNotFoundError, ValueError, LeaseHeld) as exc:
        raise BadInput(str(exc)) from None
    echo_json(record, ensure_ascii=False)


@click.command("rollback")
@click.option("--to", "to", default=None, help="Version to serve (default: the one the current version replaced).")
@config_option("pool.root", "--root")
@pass_config
def rollback(cfg: CmaqConfig, to: str | None) -> None:
    """Serve an earlier version again: moves the Parquet pointer, the cache's pointer and the
    catalog's views together."""
    switch = None
    if cfg.pool.catalog != "none":
        def switch() -> dict:
            return register_current(catalog_session("cmaq-pool-rollback", cfg.pool), cfg.pool)
    try:
        echo_json(rollback_pool(cfg, to, switch))
    except (FileNotFoundError, ValueError, LeaseHeld) as exc:
        raise BadInput(str(exc)) from None


@click.command("compact")
@config_option("pool.root", "--root")
@pass_config
def compact(cfg: CmaqConfig) -> None:
    """Fold the current version's nearline deltas into one (refresh and purge do it themselves every
    pool.compact_every deltas or pool.compact_every_min minutes), so reading the version stays fast."""
    try:
        echo_json(compact_current(cfg, catalog_session("cmaq-pool-compact", cfg.pool)))
    except (FileNotFoundError, LeaseHeld) as exc:
        raise BadInput(str(exc)) from None
