"""What every command shares: the configuration the root group loaded, options that set configuration
fields, and the one-line error of a user mistake.

The root group loads the configuration once (defaults, ``--config`` file, ``--set`` overrides) into a
:class:`Settings` on click's context object. A command option that sets a field is declared with
:func:`config_option`: its help text is the field's own, and its value is applied to that field
(coerced and validated like a file value) before the command runs; :func:`pass_config` hands the
command the resulting configuration.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import typing
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import click

from cmaq.config import CmaqConfig, ConfigDeprecation, ConfigError, help_of, load_config, with_values

#: Where option callbacks leave the field values they set (``ctx.meta`` is shared by the whole chain).
OPTION_VALUES = "cmaq.option_values"


class BadInput(click.ClickException):
    """A user error: printed as one line ``Error: ...`` and exit status 2."""

    exit_code = 2


@dataclass(frozen=True)
class Settings:
    """The root group's configuration sources and the configuration loaded from them."""

    path: str | None
    overrides: tuple[str, ...]
    config: CmaqConfig

    @classmethod
    def load(cls, path: str | None, overrides: Sequence[str]) -> "Settings":
        """Load once; a deprecated key is reported as one ``Warning:`` line on stderr."""
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConfigDeprecation)
                settings = cls(path, tuple(overrides), load_config(path, overrides))
        except ConfigError as exc:
            raise BadInput(str(exc)) from None
        for w in caught:
            click.echo(f"Warning: {w.message}", err=True)
        return settings

    def with_values(self, values: dict[str, Any]) -> CmaqConfig:
        """The configuration with a command's options applied to their fields."""
        try:
            return with_values(self.config, values)
        except ConfigError as exc:
            raise BadInput(str(exc)) from None

    def with_preset(self, preset: Sequence[str], values: dict[str, Any]) -> CmaqConfig:
        """The configuration with a preset (a list of ``section.key=value``, e.g. a reproduction profile)
        layered between the file and the ``--set`` overrides, so the user's overrides still win; then the
        command's options."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConfigDeprecation)  # said once already, by load()
                return with_values(load_config(self.path, [*preset, *self.overrides]), values)
        except ConfigError as exc:
            raise BadInput(str(exc)) from None


def field_owner(key: str) -> tuple[type, str]:
    """The section class holding dotted ``key`` and the field's name."""
    cls: Any = CmaqConfig
    *sections, name = key.split(".")
    for part in sections:
        cls = typing.get_type_hints(cls)[part]
    if name not in {f.name for f in dataclasses.fields(cls)}:
        raise KeyError(f"{key}: not a configuration field")
    return cls, name


_CLICK_TYPES = {int: click.INT, float: click.FLOAT, str: click.STRING, bool: click.BOOL}


def config_option(key: str, *param_decls: str, **attrs: Any) -> Callable:
    """A click option that sets configuration field ``key`` (e.g. ``"world.items"``); its help is the
    field's help text. Not given (or given empty): the field keeps its configured value."""
    cls, name = field_owner(key)
    attrs.setdefault("type", _CLICK_TYPES.get(typing.get_type_hints(cls)[name], click.STRING))

    def remember(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value not in (None, ""):
            ctx.meta.setdefault(OPTION_VALUES, {})[key] = value

    return click.option(*param_decls, default=None, expose_value=False, callback=remember,
                        help=f"{help_of(cls, name)} [{key}]", **attrs)


def pass_config(command: Callable) -> Callable:
    """Call ``command(cfg, ...)`` with the loaded configuration plus the command's config options."""

    @click.pass_context
    @functools.wraps(command)
    def wrapper(ctx: click.Context, *args: Any, **kwargs: Any) -> Any:
        cfg = ctx.find_object(Settings).with_values(ctx.meta.get(OPTION_VALUES, {}))
        return ctx.invoke(command, cfg, *args, **kwargs)

    return wrapper


def echo_json(document: Any, ensure_ascii: bool = True) -> None:
    """A command's result as indented JSON; values JSON has no type for (paths, timestamps) as strings."""
    click.echo(json.dumps(document, indent=2, default=str, ensure_ascii=ensure_ascii))
