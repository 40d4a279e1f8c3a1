"""The loader every configuration section shares: TOML in, typed and validated dataclasses out.

A section is a dataclass whose fields carry a ``help`` text (``field_help``) and whose
``__post_init__`` checks its values with :func:`require`, naming a field *relative to its own
section* ("lora_r"). The loader knows where the section sits in the tree and prefixes the path the
user wrote ("rm_exp.lora_r"), so one dataclass used for two sections (``rm_exp``, ``rm_ctr``) still
names the right key. Nothing here knows the sections: ``cmaq.config`` assembles them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
import types
import typing
import warnings
from dataclasses import field
from pathlib import Path
from typing import Any, Mapping, Sequence


class ConfigError(ValueError):
    """A configuration file, key or value is invalid. The message is one line, naming the key."""


class FieldError(ConfigError):
    """A section's validator rejected one of its fields; the loader adds the section's path."""

    def __init__(self, field_name: str, message: str):
        self.field_name, self.message = field_name, message
        super().__init__(f"{field_name}: {message}" if field_name else message)

    def at(self, prefix: str) -> ConfigError:
        key = ".".join(p for p in (prefix, self.field_name) if p) or "config"
        return ConfigError(f"{key}: {self.message}")


class ConfigDeprecation(FutureWarning):
    """A key that still works but has a better replacement (shown to users by default)."""


def field_help(text: str, **kw: Any) -> Any:
    """A dataclass field with its help text (shown by ``cmaq config show --help-fields`` and the CLI)."""
    return field(metadata={"help": text}, **kw)


def require(cond: bool, field_name: str, msg: str) -> None:
    """Inside ``__post_init__``: fail naming ``field_name`` (relative to the section; "" = the section)."""
    if not cond:
        raise FieldError(field_name, msg)


def help_of(cls: type, name: str) -> str:
    """The help text of field ``name`` of section class ``cls``."""
    return {f.name: f for f in dataclasses.fields(cls)}[name].metadata.get("help", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Coerce a TOML or command-line value to the field's declared type, or fail naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if origin in (list, tuple, Sequence):
        (inner,) = typing.get_args(tp)[:1] or (Any,)
        if isinstance(value, str):
            value = [v for v in (p.strip() for p in value.split(",")) if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, inner, key) for v in value]
    if origin is dict:
        inner = typing.get_args(tp)[1]
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        if dataclasses.is_dataclass(inner):  # a table of named sections, e.g. [pool.arms.<name>]
            return {str(k): v if isinstance(v, inner) else _build(inner, v, f"{key}.{k}") for k, v in value.items()}
        return {str(k): _coerce(v, inner, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


# Keys a release removed, with what replaces them: an old config file fails with the way forward.
REMOVED_KEYS = {
    "pool.chunk_items": "removed: generation is one stage over pool.partitions hash partitions; set "
                        "pool.items_per_partition (the old chunk size / partitions_per_chunk is the closest "
                        "equivalent) or pool.partitions",
    "pool.partitions_per_chunk": "removed: set pool.partitions (total generation partitions) or leave it 0 "
                                 "and set pool.items_per_partition",
}


def unknown_key(key: str, known) -> ConfigError:
    if key in REMOVED_KEYS:
        return ConfigError(f"{key}: {REMOVED_KEYS[key]}")
    return ConfigError(f"{key}: unknown key (known: {', '.join(sorted(known))})")


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise unknown_key(f"{where}{unknown[0]}", fields)
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key)
        else:
            kwargs[name] = _coerce(value, tp, key)
    return _construct(cls, kwargs, prefix)


def _construct(make, kwargs: dict, prefix: str) -> Any:
    """``make(**kwargs)`` with a validator's complaint turned into one line naming the full key."""
    try:
        return make(**kwargs)
    except FieldError as exc:
        raise exc.at(prefix) from None
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # a validator that raised something else
        raise ConfigError(f"{prefix or 'config'}: {exc}") from None


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``section.key=value``; the value is parsed as TOML when it can be, else kept as a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    key, raw = (s.strip() for s in text.split("=", 1))
    if not key or "." not in key:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def read_tree(path: str | Path | None = None, overrides: Sequence[str] = ()) -> dict:
    """The raw tree: a TOML file (optional), then ``section.key=value`` overrides, in order."""
    tree: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            tree = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: not valid TOML ({str(exc).splitlines()[0]})") from None
    for text in overrides:
        key, value = parse_override(text)
        _set_path(tree, key, value)
    return tree


def build(root: type, tree: Mapping[str, Any]) -> Any:
    """The validated root dataclass of a raw tree."""
    return _build(root, tree, "")


def with_values(cfg: Any, values: Mapping[str, Any]) -> Any:
    """A copy of ``cfg`` with dotted keys set (``{"pool.root": "/data/pool"}``), coerced and validated
    like file values; ``cfg`` itself is not changed. ``None`` values are skipped (an option not given)."""
    for dotted, value in values.items():
        if value is not None:
            cfg = _replace_path(cfg, dotted.split("."), value, "")
    return cfg


def _replace_path(obj: Any, parts: list[str], value: Any, prefix: str) -> Any:
    name = parts[0]
    key = f"{prefix}.{name}" if prefix else name
    names = {f.name for f in dataclasses.fields(obj)}
    if name not in names:
        raise unknown_key(key, names)
    tp = typing.get_type_hints(type(obj))[name]
    if len(parts) == 1:
        new = _coerce(value, tp, key)
    elif typing.get_origin(tp) is dict:  # pool.arms.<name>.<field>: edit the raw table, rebuild it
        tree = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in getattr(obj, name).items()}
        _set_path(tree, ".".join(parts[1:]), value)
        new = _coerce(tree, tp, key)
    else:
        new = _replace_path(getattr(obj, name), parts[1:], value, key)
    return _construct(lambda **kw: dataclasses.replace(obj, **kw), {name: new}, prefix)


def warn_deprecated(tree: Mapping[str, Any], keys: Mapping[str, str]) -> None:
    """A ``ConfigDeprecation`` for each dotted key of ``keys`` set (present, not empty) in the raw tree."""
    for dotted, advice in keys.items():
        node: Any = tree
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node not in (None, ""):
            warnings.warn(f"{dotted} is deprecated: {advice}", ConfigDeprecation, stacklevel=3)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if v is None:
        return '""'
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(cfg: Any, with_help: bool = False) -> str:
    """Render a config tree as TOML (optionally with each field's help as a comment)."""
    lines: list[str] = []

    def section(obj: Any, name: str) -> None:
        scalars, tables, named = [], [], []
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if isinstance(v, dict) and v and all(dataclasses.is_dataclass(x) for x in v.values()):
                named.append((f, v))
            elif isinstance(v, dict) and not v:
                continue  # an empty table of sections: nothing to write
            else:
                (tables if dataclasses.is_dataclass(v) else scalars).append((f, v))
        if scalars:
            if name:
                lines.append(f"[{name}]")
            for f, v in scalars:
                if with_help and f.metadata.get("help"):
                    lines.append(f"# {f.metadata['help']}")
                lines.append(f"{f.name} = {_toml_value(v)}")
            lines.append("")
        for f, v in tables:
            section(v, f"{name}.{f.name}" if name else f.name)
        for f, v in named:
            for key, sub in v.items():
                section(sub, f"{name}.{f.name}.{key}" if name else f"{f.name}.{key}")

    section(cfg, "")
    return "\n".join(lines).rstrip() + "\n"


def config_hash(cfg: Any) -> str:
    """A stable short hash of a config (sub)tree, for manifests and cache keys."""
    blob = json.dumps(to_dict(cfg), sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]
