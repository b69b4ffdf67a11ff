"""`swarm-scenario compare`: every method on identical splits, BrainTorrent as real nodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from scenarios.cli import main as scenario_cli
from tests.conftest import write_scenario


def test_bad_compare_settings_are_refused_before_any_work(tmp_path):
    path = write_scenario(tmp_path)
    path.write_text(path.read_text() + '\n[compare]\nmethods = ["single", "swarmavg"]\n')
    result = CliRunner().invoke(scenario_cli, ["compare", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "compare.methods" in result.output and "swarmavg" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_short_comparison_writes_json_table_csv_and_plots(tmp_path):
    path = write_scenario(tmp_path, nodes=3, rounds=2)
    path.write_text(path.read_text() + '\n[compare]\nmethods = ["cross", "single", "mix", "fedavg", "fedsgd", "fedprox", "braintorrent"]\n')
    out = tmp_path / "cmp"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "scenarios", "compare", str(path), "--repeats", "2", "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "repeat 2/2: BrainTorrent" in result.stdout and "| FedAvg" in result.stdout
    results = json.loads((out / "compare.json").read_text())
    assert set(results["methods"]) == {"cross", "single", "mix", "fedavg", "fedsgd", "fedprox", "braintorrent"}
    for method in results["methods"].values():
        assert set(method["overall"]) == {"accuracy", "sensitivity", "specificity", "auc"}
        assert set(method["sites"]) == {"hospital-a", "hospital-b", "hospital-c"}
        assert 0.0 <= method["overall"]["accuracy"]["mean"] <= 1.0 and method["overall"]["accuracy"]["std"] >= 0.0
    assert len(results["methods"]["braintorrent"]["history"]) == 2
    for name in ("compare.md", "compare.csv", "plots/accuracy_vs_round.png", "plots/accuracy_per_site.png"):
        assert (out / name).stat().st_size > 100
    assert (out / "plots/accuracy_vs_round.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for repeat in (0, 1):  # the swarm's own logs are kept and verify
        verify = subprocess.run([sys.executable, "-m", "nodes", "log", "verify", str(out / f"repeat-{repeat}" / "braintorrent")], capture_output=True, text=True, timeout=120)
        assert verify.returncode == 0, verify.stderr
