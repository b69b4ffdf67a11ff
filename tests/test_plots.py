"""scenarios/plots.py, the one module that imports matplotlib, and the reports without it:
every table, CSV and Markdown file is still written, and the command says in one line that
the plots were skipped."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from scenarios import plots
from scenarios.cli import main as scenario_cli
from scenarios.compare_report import write_report
from tests.test_compare_report import _method
from tests.test_sweep import GRID, FakeRunner, write_sweep

SKIPPED = 'plots skipped: matplotlib is not installed (pip install -e ".[report]")'


@pytest.fixture
def no_matplotlib(monkeypatch):
    """`import matplotlib` fails as it does where the `report` extra is not installed."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_without_matplotlib_pyplot_raises_the_line_to_print(no_matplotlib):
    with pytest.raises(plots.PlotsUnavailable) as raised:
        plots.pyplot()
    assert str(raised.value) == SKIPPED == plots.MISSING


def test_panels_blank_the_unused_places_and_a_name_keeps_its_colour(tmp_path):
    with plots.panels(3, 2, (3.0, 2.0)) as (fig, axes):
        assert len(axes) == 3 and len(fig.axes) == 4 and not fig.axes[3].axison
        assert tuple(fig.get_size_inches()) == (6.0, 4.0)
        path = plots.save_png(fig, tmp_path / "new" / "panels.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    colour = plots.colours(["ring", "torus", "ring"])
    assert list(colour) == ["ring", "torus"] and colour["ring"] != colour["torus"]


def test_compare_without_matplotlib_writes_the_tables_and_one_line(no_matplotlib, tmp_path):
    results = {"scenario": "toy", "repeats": 3, "metrics": ["accuracy"], "primary_metric": "accuracy",
               "methods": {"swarm": _method("BrainTorrent (serverless)", 0.861)}}
    lines: list[str] = []
    paths = write_report(results, tmp_path / "out", lines.append)
    assert set(paths) == {"markdown", "csv"} and all(path.is_file() for path in paths.values())
    assert lines == [SKIPPED]
    assert not (tmp_path / "out" / "plots").exists()


def test_sweep_without_matplotlib_writes_the_table_and_one_line(no_matplotlib, tmp_path, monkeypatch):
    monkeypatch.setattr("scenarios.sweep.run_scenario", FakeRunner())
    out = tmp_path / "out"
    result = CliRunner().invoke(scenario_cli, ["sweep", str(write_sweep(tmp_path, GRID)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.count(SKIPPED) == 1 and "Traceback" not in result.output
    assert len((out / "results.csv").read_text().splitlines()) == 3
    assert all((out / "cells" / cell / "series.json").is_file() for cell in ("ring_dpsgd_n3_s0", "complete_dpsgd_n3_s0"))
    assert not (out / "plots").exists()
