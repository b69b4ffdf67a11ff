"""The quickstart federation as a user runs it, and what it must show: collaboration beats
training alone and comes close to pooling everyone's data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
QUICKSTART = Path(__file__).resolve().parent.parent / "scenarios" / "quickstart.toml"


def test_quickstart_swarm_beats_local_only_and_nears_pooled(tmp_path):
    out = tmp_path / "quickstart"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "scenarios", "run", str(QUICKSTART), "--out", str(out)], capture_output=True, text=True, env=env, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["nodes"]) >= 6 and summary["topology"]["name"] in ("ring", "random-regular")
    assert all(len(n["neighbours"]) < len(summary["nodes"]) - 1 for n in summary["nodes"]), "not a complete graph"
    accuracy = summary["accuracy"]
    assert accuracy["swarm_mean"] >= accuracy["local_only_mean"] + 0.05, accuracy
    assert accuracy["swarm_mean"] >= accuracy["pooled_mean"] - 0.03, accuracy
    assert summary["log_verification"]["ok"] and summary["rejected_messages"]["total"] == 0
