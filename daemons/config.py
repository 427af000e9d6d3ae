"""Typed YAML configuration with environment overrides and errors that name the key.

A daemon's configuration is a tree of dataclasses. Every field has a default and a
``doc`` in its metadata, so ``d7y config-docs`` (and docs/configuration.md) are generated
from the code and can never drift from it. Loading goes:

    defaults  <-  YAML file (--config)  <-  environment (PREFIX_SECTION__KEY=value)

Values are checked against the field types. Sizes accept ``4MiB``/``1GB``/``1048576``,
durations ``500ms``/``30s``/``2h``/``0.5``. Unknown keys are errors (with a "did you
mean" hint) because a typo that silently keeps a default is the worst config bug.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration problem; the message names the key, the value and the fix."""


class Size(int):
    """A byte count; accepts ``4MiB``, ``1.5GB``, ``512k`` or a plain integer."""


class Duration(float):
    """Seconds; accepts ``500ms``, ``30s``, ``5m``, ``2h``, ``1d`` or a plain number."""


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER_UNIT = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(value: object) -> Size:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        number, unit = float(value), ""
    else:
        match = _NUMBER_UNIT.match(str(value))
        if not match or match.group(2).lower() not in _SIZE_UNITS:
            raise ValueError(f"{value!r} is not a size: write e.g. 1048576, 512KiB, 4MiB or 1GB")
        number, unit = float(match.group(1)), match.group(2).lower()
    if number < 0:
        raise ValueError(f"{value!r} is negative")
    return Size(int(number * _SIZE_UNITS[unit]))


def parse_duration(value: object) -> Duration:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        number, unit = float(value), ""
    else:
        match = _NUMBER_UNIT.match(str(value))
        if not match or match.group(2).lower() not in _DURATION_UNITS:
            raise ValueError(f"{value!r} is not a duration: write e.g. 500ms, 30s, 5m or 2h")
        number, unit = float(match.group(1)), match.group(2).lower()
    if number < 0:
        raise ValueError(f"{value!r} is negative")
    return Duration(number * _DURATION_UNITS[unit])


def field(default: Any, doc: str, **kwargs: Any) -> Any:
    """A config field with its default and one line of documentation."""
    if isinstance(default, list | dict):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata={"doc": doc, **kwargs}
        )
    return dataclasses.field(default=default, metadata={"doc": doc, **kwargs})


def section(cls: type, doc: str) -> Any:
    """A nested config section with its documentation."""
    return dataclasses.field(default_factory=cls, metadata={"doc": doc})


def _convert(path: str, hint: Any, value: Any) -> Any:
    """Coerce ``value`` (from YAML or an env string) to ``hint`` or raise ConfigError."""
    origin = typing.get_origin(hint)
    try:
        if origin in (typing.Union, types.UnionType):
            args = typing.get_args(hint)
            is_null = value is None or (
                isinstance(value, str) and value.lower() in ("", "null", "none")
            )
            if is_null and type(None) in args:
                return None
            inner = [a for a in args if a is not type(None)]
            return _convert(path, inner[0], value)
        if origin is typing.Literal:
            allowed = typing.get_args(hint)
            if value not in allowed:
                raise ValueError(f"{value!r} is not one of {', '.join(map(repr, allowed))}")
            return value
        if origin is list:
            (item,) = typing.get_args(hint)
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list):
                raise ValueError(f"{value!r} is not a list")
            if dataclasses.is_dataclass(item):
                # A list of sections (e.g. proxy.rules): each entry a mapping of its keys.
                entries = []
                for i, v in enumerate(value):
                    entry = item()
                    _apply(entry, v if v is not None else {}, f"{path}[{i}].")
                    entries.append(entry)
                return entries
            return [_convert(f"{path}[{i}]", item, v) for i, v in enumerate(value)]
        if origin is dict:
            if not isinstance(value, dict):
                raise ValueError(f"{value!r} is not a mapping")
            return {str(k): str(v) for k, v in value.items()}
        if hint is Size:
            return parse_size(value)
        if hint is Duration:
            return parse_duration(value)
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{value!r} is not a boolean: use true or false")
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"{value!r} is not an integer")
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError(f"{value!r} is not a number")
            return float(value)
        if hint is str:
            if isinstance(value, dict | list):
                raise ValueError(f"{value!r} is not a string")
            return str(value)
        if hint is Path:
            return Path(str(value)).expanduser()
    except ConfigError:
        raise  # already names its key (an entry of a list of sections)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config key {path!r}: {exc}") from None
    raise ConfigError(f"config key {path!r}: unsupported type {hint!r}")  # a schema bug


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _apply(obj: Any, data: Mapping[str, Any], prefix: str = "") -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"config section {prefix.rstrip('.') or '(top)'!r} must be a mapping, got {data!r}"
        )
    hints = _hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
            raise ConfigError(
                f"unknown config key {path!r}{hint}; valid keys here: {', '.join(names)}"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value if value is not None else {}, f"{path}.")
        else:
            setattr(obj, key, _convert(path, hints[key], value))


def _env_overrides(obj: Any, env: Mapping[str, str], env_prefix: str) -> dict[str, Any]:
    """Collect PREFIX_SECTION__KEY=value variables into a nested dict."""
    tree: dict[str, Any] = {}
    marker = env_prefix.upper() + "_"
    for name, value in env.items():
        if not name.startswith(marker):
            continue
        parts = [p.lower() for p in name[len(marker) :].split("__")]
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def load(
    cls: type,
    path: str | os.PathLike | None = None,
    *,
    env: Mapping[str, str] | None = None,
    env_prefix: str = "",
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """Build ``cls()`` and apply the YAML file, the environment and explicit overrides."""
    config = cls()
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
        import yaml  # here, not at import: dfget parses sizes without needing YAML

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
        _apply(config, data)
    if env_prefix:
        _apply(config, _env_overrides(config, os.environ if env is None else env, env_prefix))
    if overrides:
        _apply(config, overrides)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, doc) for every leaf key, for generated documentation."""
    rows = []
    instance = cls()
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            rows.extend(describe(type(value), f"{prefix}{f.name}."))
        else:
            shown = f.metadata.get("shown") or _format_default(value)
            rows.append((f"{prefix}{f.name}", shown, f.metadata.get("doc", "")))
    return rows


def _format_default(value: Any) -> str:
    if isinstance(value, Size):
        return _human_size(int(value))
    if isinstance(value, Duration):
        return f"{float(value):g}s"
    if isinstance(value, Path):
        return str(value)
    return (
        repr(value)
        if isinstance(value, str)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
    )


def _human_size(n: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)
