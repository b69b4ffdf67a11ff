"""The typed TOML getters in swarm.config: every error names the field (with its prefix),
the bad value and an example of a good one."""

from __future__ import annotations

import errno
import math
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from swarm.config import (
    TableConfig,
    check_keys,
    get_bool,
    get_float,
    get_int,
    get_optional_int,
    get_str,
    invalid,
    toml_value,
)
from swarm.errors import ConfigError


def message(call) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    return str(info.value)


def test_check_keys():
    check_keys({"a": 1}, {"a", "b"}, "t")
    assert message(lambda: check_keys({"a": 1, "zz": 2}, {"b", "a"}, "plan.t")) == (
        "plan.t.zz: unknown key, got 'zz' = 2 (known keys: a, b)"
    )
    # A sequence of known keys is listed in its own order.
    assert message(lambda: check_keys({"c": 0}, ["b", "a"], "t")).endswith("(known keys: b, a)")
    assert message(lambda: check_keys([1], {"a"}, "plan.t")) == "plan.t: must be a table, got [1] (example: [plan.t])"


def test_get_int():
    assert get_int({"n": 3}, "n", "t") == 3
    assert get_int({}, "n", "t", default=4) == 4
    assert get_int({"n": 2**62 + 1}, "n", "t", maximum=None) == 2**62 + 1
    assert message(lambda: get_int({"n": "x"}, "n", "data", minimum=2, maximum=None, example=6)) == (
        "data.n: must be an integer >= 2, got 'x' (example: n = 6)"
    )
    assert message(lambda: get_int({"n": 9}, "n", "t", minimum=1, maximum=5)) == (
        "t.n: must be an integer from 1 to 5, got 9 (example: n = 1)"
    )
    assert message(lambda: get_int({}, "n", "t", minimum=3)) == "t.n: missing; add e.g. n = 3"
    for bad in (True, 1.0, -1, 2**62 + 1):
        assert f"got {bad!r}" in message(lambda: get_int({"n": bad}, "n", "t", default=7))
    # The example is the default when there is one, and always within the bounds.
    assert message(lambda: get_int({"n": -1}, "n", "t", default=7)).endswith("(example: n = 7)")
    assert message(lambda: get_int({"n": -1}, "n", "t", maximum=0)).endswith("(example: n = 0)")


def test_get_optional_int():
    assert get_optional_int({}, "site", "data") is None
    assert get_optional_int({"site": None}, "site", "data") is None
    assert get_optional_int({"site": 2}, "site", "data", maximum=2) == 2
    assert message(lambda: get_optional_int({"site": 3}, "site", "data", maximum=2, example=0)) == (
        "data.site: must be an integer from 0 to 2, got 3 (example: site = 0)"
    )


def test_get_float_bounds_open_and_closed():
    assert get_float({"x": 1}, "x", "t") == 1.0 and isinstance(get_float({"x": 1}, "x", "t"), float)
    assert get_float({"x": 0.0}, "x", "t", maximum=1.0) == 0.0
    assert get_float({"x": 1.0}, "x", "t", maximum=1.0) == 1.0
    assert message(lambda: get_float({"x": 0}, "x", "train", maximum=100.0, min_open=True, example=0.003)) == (
        "train.x: must be a number in (0, 100], got 0 (example: x = 0.003)"
    )
    assert message(lambda: get_float({"x": 1.0}, "x", "t", maximum=1.0, max_open=True, example=0.05)) == (
        "t.x: must be a number in [0, 1), got 1.0 (example: x = 0.05)"
    )
    assert message(lambda: get_float({"x": 0.5}, "x", "t", default=170.0, minimum=1.0)) == (
        "t.x: must be a number >= 1, got 0.5 (example: x = 170.0)"
    )
    assert message(lambda: get_float({"x": 0.0}, "x", "t", min_open=True)).startswith("t.x: must be a number > 0,")
    assert message(lambda: get_float({}, "x", "t", minimum=2.0)) == "t.x: missing; add e.g. x = 2.0"
    for bad in (True, "1", math.nan, -math.inf, 10**400):
        assert message(lambda: get_float({"x": bad}, "x", "t", maximum=10.0)).startswith("t.x: must be a number in [0, 10]")
    # Infinity only where the upper bound is an included infinity.
    assert get_float({"x": math.inf}, "x", "t") == math.inf
    assert "got inf" in message(lambda: get_float({"x": math.inf}, "x", "t", max_open=True))
    # A made-up example always fits.
    assert message(lambda: get_float({"x": 9.0}, "x", "t", maximum=0.5, min_open=True)).endswith("(example: x = 0.25)")


def test_get_bool():
    assert get_bool({"b": False}, "b", "t") is False
    assert get_bool({}, "b", "t", default=True) is True
    assert message(lambda: get_bool({}, "b", "t")) == "t.b: missing; add e.g. b = true"
    for bad in (1, "yes"):
        assert message(lambda: get_bool({"b": bad}, "b", "data", example=False)) == (
            f"data.b: must be true or false, got {bad!r} (example: b = false)"
        )


def test_get_str():
    assert get_str({"s": "a"}, "s", "t") == "a"
    assert get_str({}, "s", "t", default="d") == "d"
    assert message(lambda: get_str({"s": ""}, "s", "t", default="ring")) == (
        't.s: must be a non-empty string, got \'\' (example: s = "ring")'
    )
    assert message(lambda: get_str({"s": "lbfgs"}, "s", "train", choices=("sgd", "adam"))) == (
        "train.s: must be one of: sgd, adam, got 'lbfgs' (example: s = \"sgd\")"
    )
    # Sets and mappings of choices are listed sorted; a non-string is refused, not hashed.
    assert message(lambda: get_str({"s": ["x"]}, "s", "t", choices={"b": 1, "a": 2}, example="b")) == (
        "t.s: must be one of: a, b, got ['x'] (example: s = \"b\")"
    )
    assert message(lambda: get_str({}, "s", "t")) == 't.s: missing; add e.g. s = "..."'


def test_invalid_and_toml_value():
    assert [toml_value(v) for v in (True, 3, 0.0001, 1.0, 'a"b')] == ["true", "3", "0.0001", "1.0", '"a\\"b"']
    assert str(invalid("data", "min_samples", "<= samples_per_site (10)", 20, 10)) == (
        "data.min_samples: must be <= samples_per_site (10), got 20 (example: min_samples = 10)"
    )


@dataclass(frozen=True)
class _Demo(TableConfig):
    TABLE: ClassVar[str] = "demo"

    n: int = 1
    x: float = 0.5

    @staticmethod
    def _parse(v: Any, p: str) -> dict[str, Any]:
        return {"n": get_int(v, "n", p, minimum=1, example=1), "x": get_float(v, "x", p, maximum=1.0, example=0.5)}


def test_table_config():
    assert _Demo.from_dict({}) == _Demo()
    demo = _Demo.from_dict({"x": 1})
    assert demo.x == 1.0 and isinstance(demo.x, float)  # normalised
    assert isinstance(_Demo(x=0).x, float)
    assert message(lambda: _Demo(n=0)).startswith("demo.n: must be an integer")  # direct construction is checked
    assert message(lambda: _Demo.from_dict({"n": 0}, "plan.demo")).startswith("plan.demo.n: ")
    assert message(lambda: _Demo.from_dict({"y": 0}, "plan.demo")) == (
        "plan.demo.y: unknown key, got 'y' = 0 (known keys: n, x)"
    )
    assert message(lambda: _Demo.from_dict("n = 1")).startswith("demo: must be a table")


@pytest.mark.parametrize("code, says", [
    (errno.ENOSPC, "its file system is full; free space on it"),
    (errno.EACCES, "permission denied; give the user that runs the node write access"),
    (errno.EROFS, "read-only; put the site directory on a writable file system"),
    (errno.EDQUOT, "quota"),
])
def test_a_resource_the_machine_refuses_is_one_line_naming_the_path_and_the_fix(code, says):
    from swarm.errors import ResourceError, resource_error

    error = resource_error(OSError(code, os.strerror(code), "/site/checkpoints/00000007.swt"))
    assert isinstance(error, ResourceError) and error.exit_code == 3
    assert str(error).startswith("cannot write /site/checkpoints/00000007.swt: ") and says in str(error)
    assert "\n" not in str(error)
    assert resource_error(OSError(errno.EBADF, "bad file descriptor")) is None  # a bug keeps its traceback


def test_a_failed_atomic_write_names_the_file_and_leaves_nothing_behind(tmp_path, monkeypatch):
    from swarm import atomic

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "write", full)
    with pytest.raises(OSError) as failed:
        atomic.write_atomic(tmp_path / "status.json", b"{}")
    assert failed.value.errno == errno.ENOSPC and failed.value.filename == str(tmp_path / "status.json")
    assert list(tmp_path.iterdir()) == []
