"""Typed reading of TOML tables: every error names the field, the bad value and a good example.

The getters read `values[key]` (or `default` where the key is absent) and raise ConfigError
with messages of the form

    data.sites: must be an integer >= 2, got 'x' (example: sites = 6)

The example is `example` when given, else `default`, else a value that fits the bounds.
`TableConfig` turns a frozen dataclass into a checked TOML table."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Collection, Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

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


def check_keys(values: Any, known: Iterable[str], where: str) -> None:
    """`values` must be a table holding no key outside `known`."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: must be a table, got {values!r} (example: [{where}])")
    known = _listed(known)
    for key in values:
        if key not in known:
            raise ConfigError(
                f"{where}.{key}: unknown key, got {key!r} = {values[key]!r} (known keys: {', '.join(known)})"
            )


def toml_value(value: Any) -> str:
    """`value` as it would be written in a TOML file (for examples in messages)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def invalid(where: str, key: str, requirement: str, value: Any, example: Any) -> ConfigError:
    """The error for a present but bad value: field, requirement, bad value and a good example."""
    return ConfigError(f"{where}.{key}: must be {requirement}, got {value!r} (example: {key} = {toml_value(example)})")


def _missing(where: str, key: str, example: Any) -> ConfigError:
    return ConfigError(f"{where}.{key}: missing; add e.g. {key} = {toml_value(example)}")


def _listed(choices: Iterable[str]) -> list[str]:
    # Sequences keep their (meaningful) order; sets and mappings are sorted.
    return list(choices) if isinstance(choices, (list, tuple)) else sorted(choices)


def get_int(
    values: Mapping[str, Any], key: str, where: str, default: int | None = None,
    minimum: int = 0, maximum: int | None = 2**62, *, example: int | None = None,
) -> int:
    """An integer in [minimum, maximum] (maximum=None: no upper bound); booleans are refused."""
    if example is None:
        example = default if default is not None else max(minimum, 1)
        if maximum is not None:
            example = min(example, maximum)
    value = values.get(key, default)
    if value is None:
        raise _missing(where, key, example)
    if (isinstance(value, bool) or not isinstance(value, int) or value < minimum
            or (maximum is not None and value > maximum)):
        requirement = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"
        raise invalid(where, key, requirement, value, example)
    return value


def get_optional_int(
    values: Mapping[str, Any], key: str, where: str,
    minimum: int = 0, maximum: int | None = 2**62, *, example: int | None = None,
) -> int | None:
    """Like get_int, but an absent key (or None) gives None."""
    if values.get(key) is None:
        return None
    return get_int(values, key, where, minimum=minimum, maximum=maximum, example=example)


def get_float(
    values: Mapping[str, Any], key: str, where: str, default: float | None = None,
    minimum: float = 0.0, maximum: float = math.inf, *,
    min_open: bool = False, max_open: bool = False, example: float | None = None,
) -> float:
    """A number (int or float, returned as float) between minimum and maximum, each bound
    included unless min_open / max_open; NaN is refused, and so is infinity unless
    maximum is an included infinity."""

    def fits(number: float) -> bool:
        return not (math.isnan(number) or number < minimum or (min_open and number == minimum)
                    or number > maximum or (max_open and number == maximum))

    if example is None:
        example = default if default is not None else next(
            (x for x in (1.0, float(minimum), (minimum + maximum) / 2) if fits(x)), 1.0)
    value = values.get(key, default)
    if value is None:
        raise _missing(where, key, example)
    try:
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and fits(float(value))
    except OverflowError:  # an int too large for a float
        ok = False
    if not ok:
        if math.isinf(maximum):
            requirement = f"a number {'>' if min_open else '>='} {minimum:g}"
        else:
            requirement = (f"a number in {'(' if min_open else '['}{minimum:g}, "
                           f"{maximum:g}{')' if max_open else ']'}")
        raise invalid(where, key, requirement, value, example)
    return float(value)


def get_bool(values: Mapping[str, Any], key: str, where: str, default: bool | None = None,
             *, example: bool | None = None) -> bool:
    """true or false (not 0/1, not "yes")."""
    if example is None:
        example = default if default is not None else True
    value = values.get(key, default)
    if value is None:
        raise _missing(where, key, example)
    if not isinstance(value, bool):
        raise invalid(where, key, "true or false", value, example)
    return value


def get_str(
    values: Mapping[str, Any], key: str, where: str, default: str | None = None,
    choices: Collection[str] | None = None, *, example: str | None = None,
) -> str:
    """A non-empty string; one of `choices` where given."""
    listed = None if choices is None else _listed(choices)
    if example is None:
        example = default if default is not None else listed[0] if listed else "..."
    value = values.get(key, default)
    if value is None:
        raise _missing(where, key, example)
    if listed is not None:
        if not isinstance(value, str) or value not in listed:
            raise invalid(where, key, "one of: " + ", ".join(listed), value, example)
    elif not isinstance(value, str) or not value:
        raise invalid(where, key, "a non-empty string", value, example)
    return value


T = TypeVar("T", bound="TableConfig")


class TableConfig:
    """Base of a frozen dataclass that is one TOML table.

    A subclass sets TABLE (the table's name: the default prefix of its messages) and
    `_parse(values, where)`, which checks a mapping holding every field and returns the
    fields normalised (ints for ints, floats for floats, ...). Direct construction is
    checked too, as the TABLE table."""

    TABLE: ClassVar[str]

    @staticmethod
    def _parse(values: Mapping[str, Any], where: str) -> dict[str, Any]:
        raise NotImplementedError

    def __post_init__(self) -> None:
        for key, value in self._parse(_field_values(self), self.TABLE).items():
            object.__setattr__(self, key, value)

    @classmethod
    def from_dict(cls: type[T], d: Mapping[str, Any], field_prefix: str | None = None) -> T:
        """Parse a TOML table (absent keys take their defaults); ConfigError names the field
        (under `field_prefix`, default TABLE), the bad value and an example."""
        where = cls.TABLE if field_prefix is None else field_prefix
        check_keys(d, [f.name for f in fields(cls)], where)  # type: ignore[arg-type]
        return cls(**cls._parse({**_field_values(cls()), **d}, where))


def _field_values(config: Any) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in fields(config)}
