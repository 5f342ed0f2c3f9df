"""Typed configs: build dataclasses from YAML mappings, strictly.

An unknown key is an error that suggests the closest valid key; a missing key or a
value of the wrong type is an error naming the dotted path of the field. Nested
dataclasses are filled from nested mappings.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from metarec.errors import ConfigError

T = TypeVar("T")


def _coerce(value: Any, kind: Any, where: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_kind,) = typing.get_args(kind)
        return [_coerce(item, item_kind, f"{where}[{i}]") for i, item in enumerate(value)]
    if dataclasses.is_dataclass(kind):
        return from_mapping(kind, value, where)
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is Path and isinstance(value, (str, Path)):
        return Path(value)
    if kind is Any or (
        isinstance(kind, type)
        and isinstance(value, kind)
        and not (kind is int and isinstance(value, bool))
    ):
        return value
    name = getattr(kind, "__name__", str(kind))
    raise ConfigError(f"{where}: expected {name}, got {value!r}")


def from_mapping(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and value types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} fields, got {data!r}")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = (
                f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(fields)}"
            )
            raise ConfigError(f"{where}: unknown key '{key}'{hint}")
    values = {}
    for name, field in fields.items():
        if name in data:
            values[name] = _coerce(data[name], hints[name], f"{where}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required key '{name}'")
    return cls(**values)


def load_yaml(path: Path) -> dict:
    """Read a YAML mapping, with file-named errors for a missing or malformed file."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config ({err.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config is not UTF-8 text") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"{path}{line}: not valid YAML ({getattr(err, 'problem', err)})"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data
