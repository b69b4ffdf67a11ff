"""Typed reading of TOML tables: every error names the field, the bad value and a good example."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def read_toml(path: Path, what: str = "config") -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found; check the path") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory; pass the {what} file itself") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax") from None


def table(values: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = values.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}.{key}: must be a table like [{key}], got {value!r}")
    return dict(value)


def check_keys(values: Mapping[str, Any], known: set[str] | frozenset[str], where: str) -> None:
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown setting; known settings are: {', '.join(sorted(known))}")


def get_int(values: Mapping[str, Any], key: str, where: str, default: int | None = None, minimum: int = 0, maximum: int = 2**62) -> int:
    value = values.get(key, default)
    if value is None:
        raise ConfigError(f"{where}.{key}: missing; add e.g. {key} = {max(minimum, 1)}")
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ConfigError(f"{where}.{key}: must be an integer in [{minimum}, {maximum}], got {value!r} (example: {key} = {max(minimum, 1)})")
    return value


def get_float(values: Mapping[str, Any], key: str, where: str, default: float | None = None, minimum: float = 0.0, maximum: float = float("inf")) -> float:
    value = values.get(key, default)
    if value is None:
        raise ConfigError(f"{where}.{key}: missing; add e.g. {key} = 1.0")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not minimum <= value <= maximum:
        raise ConfigError(f"{where}.{key}: must be a number in [{minimum}, {maximum}], got {value!r} (example: {key} = {max(minimum, 1.0)})")
    return float(value)


def get_str(values: Mapping[str, Any], key: str, where: str, default: str | None = None, choices: Any = None) -> str:
    value = values.get(key, default)
    if value is None:
        raise ConfigError(f"{where}.{key}: missing; add e.g. {key} = \"...\"")
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key}: must be a non-empty string, got {value!r}")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}.{key}: unknown value {value!r}; choose one of: {', '.join(sorted(choices))}")
    return value
