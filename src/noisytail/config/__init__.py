"""params.yaml -> typed configuration. Unknown or mistyped keys are errors that name the key."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from noisytail.errors import NoisytailError

T = TypeVar("T")


class ConfigError(NoisytailError, ValueError):
    """A parameter that is missing, unknown or of the wrong type; the message names it."""


def check_choice(name: str, value: Any, allowed: tuple | list | Mapping) -> None:
    """``value`` must be one of ``allowed``; the error names the key and the allowed values."""
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {list(allowed)}, got {value!r}")


def check_range(name: str, value: float, low: float, high: float = float("inf")) -> None:
    """``low <= value <= high``; the error names the key and the range."""
    if not low <= value <= high:
        bounds = f"at least {low}" if high == float("inf") else f"in [{low}, {high}]"
        raise ConfigError(f"{name} must be {bounds}, got {value!r}")


def load_params(path: str | os.PathLike = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read parameters {path}: {error}") from error
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return params


def _coerce(value: Any, kind: Any, where: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        kind = next(k for k in options if k is not type(None))
        origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        return from_mapping(kind, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(kind)[:1] or (Any,)
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (int, float, str, bool) and not isinstance(value, kind):
        raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")
    return value


def from_mapping(cls: type[T], mapping: Mapping | None, where: str = "params") -> T:
    """Build dataclass ``cls`` from a mapping; missing keys take the dataclass defaults."""
    mapping = dict(mapping or {})
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: expected a mapping, got {mapping!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown parameter(s) {unknown}; known: {sorted(names)}")
    return cls(**{k: _coerce(v, hints[k], f"{where}.{k}") for k, v in mapping.items()})


def flatten(params: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (for MLflow params)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
