"""Every TOML table this project reads, as one typed model with one validator.

A table is a `Table` (a frozen pydantic v2 model with unknown keys forbidden and no type
coercion: 1 is no bool, "3" no int). `Table.from_dict(values, where)` checks it, and every
failure becomes one ConfigError naming the field under `where`, the bad value and a good
example, e.g.

    data.sites: must be an integer >= 2, got 'x' (example: sites = 6)

The requirement ("an integer >= 2") is read from the field's type and bounds, the example
from `setting(..., example=...)` or else the field's default. Checks that span fields raise
`refuse(field, message)` or `invalid_value(...)` from a validator."""

from __future__ import annotations

import contextvars
import json
import math
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError, PydanticUndefined

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self

__all__ = [
    "ConfigError", "Table", "invalid", "invalid_value", "read_toml", "refuse", "setting", "toml_text", "toml_value",
]


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


def toml_text(document: Mapping[str, Any]) -> str:
    """`document` as TOML (tables after plain keys); None values are left out, as TOML has no null."""
    try:
        return tomli_w.dumps(_without_none(document))
    except TypeError as exc:
        raise ConfigError(f"cannot write TOML: {exc}; use numbers, strings, booleans, lists and tables") from None


def _without_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_without_none(v) for v in value]
    return value


def toml_value(value: Any) -> str:
    """`value` as it would be written in a TOML file (for examples in messages)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def setting(
    default: Any = PydanticUndefined, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
    lt: float | None = None, example: Any = None, requirement: str | None = None, **field: Any,
) -> Any:
    """A field of a Table: its default (none: required), bounds, and for messages an example
    (default: the default) and, where the type does not say it well, the requirement."""
    extra = {k: v for k, v in (("example", example), ("requirement", requirement)) if v is not None}
    return Field(default, ge=ge, gt=gt, le=le, lt=lt, json_schema_extra=extra or None, **field)


def refuse(field: str, message: str) -> PydanticCustomError:
    """For a validator: `field` (relative to the table; "" for the table itself) is wrong; the
    message says why and what to write instead."""
    return PydanticCustomError("swarm_config", "{message}", {"field": field, "message": message})


def invalid_value(field: str, requirement: str, value: Any, example: Any) -> PydanticCustomError:
    """For a validator: the standard "must be ..., got ... (example: ...)" for `field` (relative
    to the table; "" in a field validator, whose error already names its field)."""
    return PydanticCustomError("swarm_config", "must be {requirement}", {
        "field": field, "requirement": requirement, "value": value, "example": example})


def invalid(where: str, key: str, requirement: str, value: Any, example: Any) -> ConfigError:
    """The same message outside a table's check, e.g. for a setting that does not fit the data."""
    field = f"{where}.{key}" if where else key
    return ConfigError(f"{field}: must be {requirement}, got {value!r} (example: {key} = {toml_value(example)})")


_checking: contextvars.ContextVar[bool] = contextvars.ContextVar("swarm_config_checking", default=False)
_context: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar("swarm_config_context", default=None)


class Table(BaseModel):
    """One TOML table: a frozen model that forbids unknown keys and coerces nothing. TABLE
    names the table in messages when it is built directly (`TrainConfig(epochs=0)`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False, str_min_length=1)
    TABLE: ClassVar[str] = "config"
    # What a key the table does not know gets said (fields: key, value, known, table).
    UNKNOWN_KEY: ClassVar[str] = "unknown key, got {key!r} = {value!r} (known keys: {known})"

    def __init__(self, **values: Any) -> None:
        # pydantic runs a model's own __init__ for nested tables too, without the validation
        # context: it comes from _context here, as BaseModel.__init__ would validate.
        if _checking.get():  # inside a check: errors go up with their whole path
            self.__pydantic_validator__.validate_python(values, self_instance=self, context=_context.get())
            return
        token = _checking.set(True)
        try:  # direct construction, e.g. TrainConfig(epochs=0): the same one line as from_dict
            self.__pydantic_validator__.validate_python(values, self_instance=self)
        except ValidationError as exc:
            raise config_error(exc, type(self), self.TABLE, values) from None
        finally:
            _checking.reset(token)

    @classmethod
    def from_dict(cls, values: Any, where: str | None = None, context: Mapping[str, Any] | None = None) -> Self:
        """Check a TOML table (absent keys take their defaults). ConfigError names the field
        under `where` (default TABLE), the bad value and an example. `context` reaches the
        validators as `info.context` (facts from outside the table, e.g. the number of nodes)."""
        where = cls.TABLE if where is None else where
        tokens = _checking.set(True), _context.set(context)
        try:
            return cls.model_validate(values, context=context)
        except ValidationError as exc:
            raise config_error(exc, cls, where, values) from None
        finally:
            _checking.reset(tokens[0])
            _context.reset(tokens[1])

    def replace(self, **changes: Any) -> Self:
        """A checked copy with `changes`."""
        return type(self).from_dict({**self.fields(), **changes}, self.TABLE)

    def fields(self) -> dict[str, Any]:
        """The fields as given (nested tables stay models)."""
        return {name: getattr(self, name) for name in type(self).model_fields}

    def to_dict(self) -> dict[str, Any]:
        """The table as plain TOML values (None left out)."""
        return _without_none(self.model_dump(mode="json"))


def config_error(exc: ValidationError, model: type[BaseModel], where: str, values: Any = None) -> ConfigError:
    """The first of pydantic's errors as one line: field path, requirement, bad value, example.
    An unknown key in `values` comes first, as a reader fixes typos first (a validator that
    runs before pydantic's own checks may have stopped it from reporting one)."""
    unknown = _unknown_key(model, values, where)
    if unknown is not None:
        return unknown
    errors = exc.errors(include_url=False)
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    kind, loc, value = error["type"], tuple(error["loc"]), error.get("input")
    if kind == "extra_forbidden":
        owner, _, path = _walk(model, loc[:-1], where)
        return _unknown(owner, path, str(loc[-1]), value)
    _, info, path = _walk(model, loc, where)
    key = path.rsplit(".", 1)[-1]
    if kind == "swarm_config":
        ctx = error["ctx"]
        path = f"{path}.{ctx['field']}" if ctx["field"] else path
        if "requirement" in ctx:
            where, _, key = path.rpartition(".")
            return invalid(where, key, ctx["requirement"], ctx["value"], ctx["example"])
        return ConfigError(f"{path}: {ctx['message']}")
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return ConfigError(f"{path}: must be a table, got {value!r} (example: [{path}])")
    if info is None:
        return ConfigError(f"{path}: {error['msg']}")
    if kind == "missing":
        return ConfigError(f"{path}: missing; add e.g. {key} = {toml_value(_example(info))}")
    if kind == "value_error":
        return ConfigError(f"{path}: {error['ctx']['error']}")
    return ConfigError(f"{path}: must be {requirement(info)}, got {value!r} (example: {key} = {toml_value(_example(info))})")


def _unknown(model: Any, path: str, key: str, value: Any) -> ConfigError:
    known = ", ".join(getattr(model, "model_fields", {})) or "none"
    text = getattr(model, "UNKNOWN_KEY", Table.UNKNOWN_KEY).format(key=key, value=value, known=known, table=model)
    return ConfigError(f"{path}.{key}: {text}")


def _unknown_key(model: Any, values: Any, path: str) -> ConfigError | None:
    """The first key of `values` (or of a nested table in it) that its table does not know."""
    fields = getattr(model, "model_fields", None)
    if not isinstance(values, Mapping) or fields is None or model.model_config.get("extra") != "forbid":
        return None
    for key, value in values.items():
        if key not in fields:
            return _unknown(model, path, key, value)
        inner = _plain(fields[key].annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            found = _unknown_key(inner, value, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    return None


def _walk(model: type[BaseModel], loc: tuple, where: str) -> tuple[Any, FieldInfo | None, str]:
    """(the model holding the last field of `loc`, that field, its dotted path under `where`)."""
    owner: Any = model
    info: FieldInfo | None = None
    path = where
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
            continue
        fields = getattr(owner, "model_fields", None)
        if isinstance(fields, dict) and part in fields:
            info = fields[part]
            owner = _table_type(info.annotation)
        elif owner is not None:  # a union member's tag
            continue
        path = f"{path}.{part}" if path else str(part)
    return owner, info, path


def _table_type(annotation: Any) -> type[BaseModel] | None:
    """The model inside `annotation` (T, T | None, list[T], dict[str, T]), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _table_type(arg)
        if found is not None:
            return found
    return None


def _plain(annotation: Any) -> Any:
    """`annotation` without `| None`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _bounds(info: FieldInfo) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in info.metadata:
        for name in ("ge", "gt", "le", "lt"):
            if getattr(item, name, None) is not None:
                found[name] = getattr(item, name)
    return found


def requirement(info: FieldInfo) -> str:
    """What a field takes, in words, from its type and bounds."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "requirement" in extra:
        return str(extra["requirement"])
    kind = _plain(info.annotation)
    b = _bounds(info)
    if typing.get_origin(kind) is Literal:
        return "one of: " + ", ".join(str(c) for c in typing.get_args(kind))
    if kind is bool:
        return "true or false"
    if kind is int:
        low = b.get("ge", b["gt"] + 1 if "gt" in b else None)
        high = b.get("le", b["lt"] - 1 if "lt" in b else None)
        if high is None:
            return "an integer" if low is None else f"an integer >= {low}"
        return f"an integer from {low} to {high}" if low is not None else f"an integer <= {high}"
    if kind is float:
        low, high = b.get("ge", b.get("gt")), b.get("le", b.get("lt"))
        if high is None:
            return "a number" if low is None else f"a number {'>' if 'gt' in b else '>='} {low:g}"
        if low is None:
            return f"a number {'<' if 'lt' in b else '<='} {high:g}"
        return f"a number in {'(' if 'gt' in b else '['}{low:g}, {high:g}{')' if 'lt' in b else ']'}"
    if kind is str:
        return "a non-empty string"
    if typing.get_origin(kind) is list:
        return "a list"
    return "a valid value"


def _example(info: FieldInfo) -> Any:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "example" in extra:
        return extra["example"]
    if info.default is not PydanticUndefined and info.default is not None:
        return info.default
    kind = _plain(info.annotation)
    b = _bounds(info)
    if typing.get_origin(kind) is Literal:
        return typing.get_args(kind)[0]
    if kind is bool:
        return True
    if kind is int:
        low = b.get("ge", b["gt"] + 1 if "gt" in b else 0)
        return min(max(low, 1), b.get("le", math.inf))
    if kind is float:
        low = b.get("ge", b.get("gt", 0.0))
        high = b.get("le", b.get("lt", math.inf))
        return next((x for x in (1.0, float(low), (low + high) / 2) if low <= x <= high and not (x == low and "gt" in b)), 1.0)
    return "..."
