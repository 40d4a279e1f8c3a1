"""`cmaq config`: the effective configuration."""
from __future__ import annotations

import click

from cmaq.cli.settings import echo_json, pass_config
from cmaq.config import CmaqConfig, to_dict, to_toml


@click.group("config")
def config_group() -> None:
    """Inspect the effective configuration."""


@config_group.command("show")
@click.option("--help-fields", is_flag=True, help="Precede each key with its help text.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of TOML.")
@pass_config
def show(cfg: CmaqConfig, help_fields: bool, as_json: bool) -> None:
    """Print the effective configuration (defaults, file, then --set overrides)."""
    if as_json:
        echo_json(to_dict(cfg), ensure_ascii=False)
    else:
        click.echo(to_toml(cfg, with_help=help_fields), nl=False)
