"""`cmaq pool build / refresh / purge`: the Spark jobs that write the pool."""
from __future__ import annotations

import click

from cmaq.cli.settings import BadInput, config_option, echo_json, pass_config
from cmaq.config import CmaqConfig
from cmaq.pool.lease import LeaseHeld
from jobs.nearline import refresh as refresh_pool
from jobs.nightly import build_pool
from jobs.purge import purge as purge_pool
from jobs.spark import get_spark


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
    report = build_pool(get_spark("cmaq-pool-build"), cfg, content)
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
    report = refresh_pool(get_spark("cmaq-nearline"), cfg, content)
    echo_json({"op_id": report.op_id, "status": report.status, "version": report.version, "counts": report.counts,
               "watermark": report.watermark, "delta": report.delta, "error": report.error})
    ctx.exit(report.exit_code)


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
        record = purge_pool(cfg, get_spark("cmaq-pool-purge"), list(content_ids), list(terms))
    except (FileNotFoundError, ValueError, LeaseHeld) as exc:
        raise BadInput(str(exc)) from None
    echo_json(record, ensure_ascii=False)
