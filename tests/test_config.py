"""The one typed configuration model (swarm.config.Table): every error names the field (with
its prefix), the bad value and an example of a good one."""

from __future__ import annotations

import errno
import math
import os
from typing import Literal

import pytest
from pydantic import model_validator

from swarm.config import Table, invalid_value, read_toml, refuse, setting, toml_text, toml_value
from swarm.errors import ConfigError


def message(call) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    return str(info.value)


class Inner(Table):
    TABLE = "inner"
    x: float = setting(0.5, ge=0.0, le=1.0)


class Demo(Table):
    """One field of each kind the project's tables use."""

    TABLE = "demo"
    n: int = setting(7, ge=1, le=5_000)
    sites: int = setting(6, ge=2)
    site: int | None = setting(None, ge=0, example=0)
    rate: float = setting(0.003, gt=0.0, le=100.0)
    noise: float = setting(0.05, ge=0.0, lt=1.0)
    scale: float = setting(170.0, ge=1.0)
    flag: bool = setting(True, example=False)
    name: str = "ring"
    optimizer: Literal["sgd", "adam"] = "sgd"
    samples: int = 120
    min_samples: int = 20
    inner: Inner = Inner()

    @model_validator(mode="after")
    def _within(self) -> Demo:
        if self.site is not None and self.site >= self.sites:
            raise invalid_value("site", f"an integer from 0 to {self.sites - 1}", self.site, 0)
        if self.min_samples > self.samples:
            raise invalid_value("min_samples", f"<= samples ({self.samples})", self.min_samples, min(20, self.samples))
        if self.name == "reserved":
            raise refuse("name", "is reserved; choose another")
        return self


class Required(Table):
    TABLE = "req"
    p: float = setting(ge=2.0)
    b: bool = setting()
    s: str = setting()
    c: Literal["x", "y"] = setting()
    tiny: float = setting(0.1, gt=0.0, le=0.5)
    q: float = setting(gt=0.0, le=0.5)


def test_defaults_and_normalised_values():
    demo = Demo.from_dict({})
    assert demo == Demo() and demo.site is None and demo.inner == Inner()
    demo = Demo.from_dict({"rate": 1, "site": 5, "inner": {"x": 1}})
    assert demo.rate == 1.0 and isinstance(demo.rate, float) and demo.site == 5
    assert isinstance(demo.inner.x, float)
    assert Demo.from_dict({"sites": 2**62 + 1}).sites == 2**62 + 1


def test_integers():
    assert message(lambda: Demo.from_dict({"sites": "x"}, "data")) == "data.sites: must be an integer >= 2, got 'x' (example: sites = 6)"
    assert message(lambda: Demo.from_dict({"n": 9000})) == "demo.n: must be an integer from 1 to 5000, got 9000 (example: n = 7)"
    for bad in (True, 1.0, -1, "3"):
        assert f"got {bad!r} (example: n = 7)" in message(lambda: Demo.from_dict({"n": bad}))
    assert message(lambda: Demo.from_dict({"site": 6})) == "demo.site: must be an integer from 0 to 5, got 6 (example: site = 0)"
    assert message(lambda: Demo.from_dict({"site": -1})).endswith("got -1 (example: site = 0)")


def test_numbers_with_open_and_closed_bounds():
    assert message(lambda: Demo.from_dict({"rate": 0}, "train")) == "train.rate: must be a number in (0, 100], got 0 (example: rate = 0.003)"
    assert message(lambda: Demo.from_dict({"noise": 1.0})) == "demo.noise: must be a number in [0, 1), got 1.0 (example: noise = 0.05)"
    assert message(lambda: Demo.from_dict({"scale": 0.5})) == "demo.scale: must be a number >= 1, got 0.5 (example: scale = 170.0)"
    for bad in (True, "1", math.nan, math.inf, -math.inf, 10**400):
        assert message(lambda: Demo.from_dict({"rate": bad})).startswith("demo.rate: must be a number in (0, 100], got ")


def test_booleans_strings_and_choices():
    for bad in (1, "yes"):
        assert message(lambda: Demo.from_dict({"flag": bad}, "data")) == f"data.flag: must be true or false, got {bad!r} (example: flag = false)"
    assert message(lambda: Demo.from_dict({"name": ""})) == "demo.name: must be a non-empty string, got '' (example: name = \"ring\")"
    assert message(lambda: Demo.from_dict({"optimizer": "lbfgs"}, "train")) == (
        "train.optimizer: must be one of: sgd, adam, got 'lbfgs' (example: optimizer = \"sgd\")"
    )
    assert message(lambda: Demo.from_dict({"optimizer": ["x"]})).startswith("demo.optimizer: must be one of: sgd, adam, got ['x']")


def test_missing_keys_name_an_example_that_fits():
    assert message(lambda: Required.from_dict({}, "t")) == "t.p: missing; add e.g. p = 2.0"
    assert message(lambda: Required.from_dict({"p": 2})) == "req.b: missing; add e.g. b = true"
    assert message(lambda: Required.from_dict({"p": 2, "b": True})) == 'req.s: missing; add e.g. s = "..."'
    assert message(lambda: Required.from_dict({"p": 2, "b": True, "s": "a"})) == 'req.c: missing; add e.g. c = "x"'
    # Without a default, a made-up example fits the bounds; with one, the default is the example.
    complete = {"p": 2, "b": True, "s": "a", "c": "y"}
    assert message(lambda: Required.from_dict(complete)) == "req.q: missing; add e.g. q = 0.25"
    assert message(lambda: Required.from_dict(complete | {"q": 0.2, "tiny": 9.0})).endswith("(example: tiny = 0.1)")


def test_unknown_keys_come_first_and_list_the_known_ones():
    assert message(lambda: Inner.from_dict({"y": 0}, "plan.inner")) == "plan.inner.y: unknown key, got 'y' = 0 (known keys: x)"
    assert message(lambda: Demo.from_dict({"n": 0, "zz": 2})).startswith("demo.zz: unknown key, got 'zz' = 2 (known keys: n, sites, site,")


class Early(Table):
    """A table whose own check runs before pydantic's (and stops it)."""

    TABLE = "early"
    items: list[str] = setting(["ring"])

    @model_validator(mode="before")
    @classmethod
    def _needs_items(cls, values: object) -> object:
        if isinstance(values, dict) and "items" not in values:
            raise refuse("items", 'missing; add e.g. items = ["ring"]')
        return values


def test_a_typo_is_an_unknown_key_even_where_a_check_runs_first():
    assert message(lambda: Early.from_dict({"itmes": ["a"]})) == "early.itmes: unknown key, got 'itmes' = ['a'] (known keys: items)"
    assert message(lambda: Early.from_dict({})) == 'early.items: missing; add e.g. items = ["ring"]'
    assert message(lambda: Demo.from_dict({"inner": {"y": 1}, "n": 0})).startswith("demo.inner.y: unknown key")


def test_nested_tables_give_the_whole_path():
    assert message(lambda: Demo.from_dict({"inner": {"x": 2}}, "plan.demo")) == (
        "plan.demo.inner.x: must be a number in [0, 1], got 2 (example: x = 0.5)"
    )
    assert message(lambda: Demo.from_dict({"inner": {"q": 1}}, "plan.demo")).startswith("plan.demo.inner.q: unknown key")
    assert message(lambda: Demo.from_dict({"inner": 3})) == "demo.inner: must be a table, got 3 (example: [demo.inner])"
    assert message(lambda: Demo.from_dict([1], "plan.t")) == "plan.t: must be a table, got [1] (example: [plan.t])"


def test_checks_across_fields():
    assert message(lambda: Demo.from_dict({"samples": 10, "min_samples": 20}, "data")) == (
        "data.min_samples: must be <= samples (10), got 20 (example: min_samples = 10)"
    )
    assert message(lambda: Demo.from_dict({"name": "reserved"})) == "demo.name: is reserved; choose another"


def test_direct_construction_and_replace_are_checked():
    assert message(lambda: Demo(n=0)).startswith("demo.n: must be an integer")
    assert message(lambda: Demo(inner=Inner(x=0.1), site=9)).startswith("demo.site: ")
    demo = Demo(sites=3)
    assert demo.replace(site=2).site == 2 and demo.replace(site=2).sites == 3
    assert message(lambda: demo.replace(site=3)).startswith("demo.site: must be an integer from 0 to 2")
    with pytest.raises(Exception):
        demo.n = 2  # frozen


def test_toml_value_and_text_round_trip(tmp_path):
    assert [toml_value(v) for v in (True, 3, 0.0001, 1.0, 'a"b')] == ["true", "3", "0.0001", "1.0", '"a\\"b"']
    assert toml_value(["head.*", 1, [True]]) == '["head.*", 1, [true]]'  # examples read as TOML
    document = {"site": {"name": "hospital-a"}, "data": {"sites": 6, "shape": [1, 28, 28], "noise": 0.04, "skip": None}}
    path = tmp_path / "site.toml"
    path.write_text(toml_text(document))
    assert read_toml(path) == {"site": {"name": "hospital-a"}, "data": {"sites": 6, "shape": [1, 28, 28], "noise": 0.04}}
    assert Demo(site=1).to_dict()["inner"] == {"x": 0.5} and "site" not in Demo().to_dict()
    assert message(lambda: toml_text({"x": object()})).startswith("cannot write TOML")


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
