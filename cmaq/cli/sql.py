"""`cmaq sql`: analyst SQL over the published pool (files in sql/)."""
from __future__ import annotations

import click

from dataclasses import replace

from cmaq.cli.settings import BadInput, pass_config
from cmaq.config import CmaqConfig
from jobs.catalog import catalog_session
from jobs.sql import run_sql


@click.group("sql")
def sql_group() -> None:
    """Analyst SQL over the published pool (files in sql/)."""


@sql_group.command("run")
@click.argument("sql_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--pool", "pool_root", required=True, type=click.Path(exists=True, file_okay=False),
              help="Pool root directory.")
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False), default=None, help="Write CSV here instead.")
@click.option("--limit", type=int, default=100, help="Rows to print.")
@pass_config
def run(cfg: CmaqConfig, sql_file: str, pool_root: str, csv_out: str | None, limit: int) -> None:
    """Run SQL_FILE with views pool, dropped, quarantine and pool_previous registered (and the pool's
    catalog open: cmaq.cmaq_pool_current and the other views any Spark SQL client on it sees)."""
    spark = catalog_session("cmaq-sql", replace(cfg.pool, root=pool_root))
    try:
        df = run_sql(spark, sql_file, pool_root)
    except (FileNotFoundError, ValueError) as exc:
        raise BadInput(str(exc)) from None
    pdf = df.toPandas()
    if csv_out:
        pdf.to_csv(csv_out, index=False)
        click.echo(f"{len(pdf)} rows -> {csv_out}")
    else:
        click.echo(pdf.head(limit).to_string(index=False))
