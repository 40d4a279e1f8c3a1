"""`cmaq sql`: analyst SQL over the published pool (files in sql/)."""
from __future__ import annotations

import click

from cmaq.cli.settings import BadInput
from jobs.spark import get_spark
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
def run(sql_file: str, pool_root: str, csv_out: str | None, limit: int) -> None:
    """Run SQL_FILE with views pool, dropped, quarantine and pool_previous registered."""
    try:
        df = run_sql(get_spark("cmaq-sql"), sql_file, pool_root)
    except FileNotFoundError as exc:
        raise BadInput(str(exc)) from None
    pdf = df.toPandas()
    if csv_out:
        pdf.to_csv(csv_out, index=False)
        click.echo(f"{len(pdf)} rows -> {csv_out}")
    else:
        click.echo(pdf.head(limit).to_string(index=False))
