"""The exchange benchmark runs end to end and reports a well-formed result (no timing limits:
the machine running the tests may be arbitrarily slow or busy)."""

from __future__ import annotations

import ast
import json
import math
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from nodes.cli import main as node_cli
from swarm_dev.bench import RECEIVER_STAGES, SENDER_STAGES, format_bench, model_layout, run_bench
from swarm_dev.cli import main as dev_cli

ROOT = Path(__file__).resolve().parent.parent


def _positive_floats(values) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in values)


@pytest.mark.slow
def test_a_transfer_between_two_processes_is_timed_and_a_cut_one_resumes():
    """Real processes and sockets: every repeat pulls a verified model (the receiver raises
    otherwise), and a transfer whose sender "crashes" after half its chunks resumes. With a
    window of one chunk, at most one chunk is lost at the cut, so the sender serves just over
    half the model again. A receiver that stops half way and starts again from its saved
    pull takes half the model from disk and pulls only the other half."""
    result = run_bench(size_mb=64, repeats=2, window=1)

    assert result["model_bytes"] == 64 * 1024 * 1024 and result["repeats"] == 2
    for path in ("swarm", "raw_zmq"):
        assert len(result[path]["seconds"]) == 2 and _positive_floats(result[path]["seconds"])
    assert tuple(result["swarm"]["stage_medians"]) == SENDER_STAGES + RECEIVER_STAGES
    assert result["ratio_vs_raw_zmq"] > 0 and result["ratio_with_snapshot"] > 0
    for side in ("sender", "receiver"):  # the whole model lives in each process
        assert result["peak_rss_bytes"][side] > result["model_bytes"]
    resume = result["resume"]
    assert resume["resumed"] is True
    assert 0 < resume["resent_bytes"] <= result["model_bytes"] // 2 + 4 * 1024 * 1024
    assert resume["resent_fraction"] < 0.6
    restart = resume["receiver_restart"]  # the receiver saved half, restarted, and pulled the rest
    assert 0.45 <= restart["from_disk_fraction"] <= 0.6
    assert abs(restart["from_disk_fraction"] + restart["pulled_after_restart_fraction"] - 1.0) < 0.01

    json.dumps(result)  # the CLI prints it with --json
    report = format_bench(result)
    assert "ratio vs raw zmq" in report and "peak RSS" in report and "resume" in report


@pytest.mark.parametrize("size, tensors", [(100 * 1024 * 1024, 0), (2 * 1024 * 1024, 0), (1000, 0), (4096, 7), (40, 10)])
def test_model_layout_sums_to_size(size, tensors):
    layout = model_layout(size, tensors)
    assert sum(math.prod(shape) for _, shape in layout) * 4 == size
    assert len({name for name, _ in layout}) == len(layout)
    assert all(math.prod(shape) > 0 for _, shape in layout)
    if tensors:
        assert len(layout) == tensors


# -- where the developer tools live ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["bench", "fuzz"])
def test_swarm_node_offers_the_developer_tools_own_commands(name):
    with node_cli.make_context("swarm-node", [name, "--help"], resilient_parsing=True) as ctx:
        assert node_cli.get_command(ctx, name) is dev_cli.commands[name]
    result = CliRunner().invoke(node_cli, [name, "--help"], prog_name="swarm-node")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: swarm-node {name} [OPTIONS]")


@pytest.mark.parametrize("args", [["bench", "--size-mb", "8"], ["fuzz", "--help"]])
def test_without_the_developer_tools_swarm_node_says_so_in_one_line_and_exits_2(args, monkeypatch):
    for module in [name for name in sys.modules if name.split(".")[0] == "swarm_dev"]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(sys, "meta_path", [_NoDeveloperTools(), *sys.meta_path])  # as in a hospital's image
    result = CliRunner().invoke(node_cli, args)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert f"swarm-dev {args[0]}" in result.output
    assert CliRunner().invoke(node_cli, ["--help"]).exit_code == 0


class _NoDeveloperTools:
    def find_spec(self, name, path=None, target=None):
        if name == "swarm_dev":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def test_what_a_hospital_runs_never_imports_the_developer_tools_on_import():
    """swarm, gossip and nodes may reach swarm_dev only inside a function (nodes/cli.py does)."""
    for path in sorted(p for package in ("swarm", "gossip", "nodes") for p in (ROOT / package).rglob("*.py")):
        for node in _imports_run_on_import(ast.parse(path.read_text(), str(path))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not any(name.split(".")[0] == "swarm_dev" for name in names), f"{path}:{node.lineno}"


def _imports_run_on_import(node: ast.AST):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _imports_run_on_import(child)
