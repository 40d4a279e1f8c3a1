"""`cmaq pool get / kv-size / status`: what an operator reads from the cache and the stream. Needs
only the ground layer (and ``redis`` for a Redis cache): no Spark, no engine."""
from __future__ import annotations

import json

import click

from cmaq.cli.settings import BadInput, config_option, echo_json, pass_config
from cmaq.config import CmaqConfig
from cmaq.pool.loader import estimate_size
from cmaq.pool.reader import Reader
from cmaq.pool.sinks import open_sink, redact_url


def _cache_url(cfg: CmaqConfig) -> str:
    url = cfg.pool.kv()
    if not url:
        raise BadInput("no cache configured (pool.kv_url is 'none')")
    return url


@click.command("get")
@click.argument("content_id")
@click.option("--arm", default=None, help="The A/B arm to read, when the current version serves arms.")
@click.option("--unit", default=None, help="Read the arm this unit (a user id) is assigned by the version's "
                                           "published traffic split.")
@config_option("pool.kv_url", "--kv-url")
@pass_config
@click.pass_context
def get(ctx: click.Context, cfg: CmaqConfig, content_id: str, arm: str | None, unit: str | None) -> None:
    """Print the served queries of CONTENT_ID from the cache's current version (exit 4 on a miss)."""
    url = _cache_url(cfg)
    if arm and unit:
        raise BadInput("give --arm or --unit, not both")
    try:
        reader = Reader(url, cfg.pool.kv_prefix)
        hit = reader.get(content_id, arm=reader.assign(unit) if unit else arm)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - connection problems are the user's to fix
        raise click.ClickException(f"cannot read {redact_url(url)}: {exc}") from None
    if not hit.hit:
        where = f"version {hit.version}" if hit.version else "the cache (no version loaded yet)"
        click.echo(f"miss: {content_id} is not in {where}")
        ctx.exit(4)
    echo_json({"content_id": content_id, "version": hit.version, **({"arm": hit.arm} if hit.arm else {}),
               "queries": hit.queries}, ensure_ascii=False)


@click.command("kv-size")
@click.option("--sample", default=200, show_default=True, type=click.IntRange(1, 100_000),
              help="Items of the current version to measure.")
@config_option("pool.kv_url", "--kv-url")
@pass_config
def kv_size(cfg: CmaqConfig, sample: int) -> None:
    """Estimate cache memory per item and for two versions (what a load needs at its peak)."""
    url = _cache_url(cfg)
    try:
        figures = estimate_size(open_sink(url, cfg.pool.kv_prefix), sample)
    except LookupError as exc:
        raise BadInput(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - connection problems are the user's to fix
        raise click.ClickException(f"cannot read {redact_url(url)}: {exc}") from None
    echo_json(figures)


@click.command("status")
@config_option("pool.root", "--root")
@pass_config
@click.pass_context
def status(ctx: click.Context, cfg: CmaqConfig) -> None:
    """Print what the stream (`cmaq pool stream`) last reported: totals, the last micro-batch (rows in,
    generated, published, latency from arrival to readable keys), the streaming query's progress and
    whether a batch is waiting for the writer lease. Exit 4 when no stream has run on this pool."""
    path = cfg.stream.status_file(cfg.pool.root)
    if not path.exists():
        click.echo(f"no stream status at {path} (has `cmaq pool stream` run on this pool?)")
        ctx.exit(4)
    echo_json(json.loads(path.read_text()), ensure_ascii=False)
