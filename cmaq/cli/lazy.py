"""A click group whose commands are imported by name when one runs (click's examples/complex loads its
commands the same way). Listing them — ``--help`` — imports nothing: each command's one-line help is
given beside its module, so ``cmaq --help`` runs on a machine without Spark or torch, and a command
that only reads the cache never imports the Spark job stack."""
from __future__ import annotations

import importlib
from typing import NamedTuple

import click


class LazyCommand(NamedTuple):
    module: str
    attr: str
    short_help: str


class LazyGroup(click.Group):
    """``commands``: name -> where the command lives and its one-line help."""

    def __init__(self, *args, lazy_commands: dict[str, LazyCommand], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.lazy_commands)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.lazy_commands:
            return None
        found = self.lazy_commands[name]
        return getattr(importlib.import_module(found.module), found.attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self.lazy_commands[name].short_help) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)
