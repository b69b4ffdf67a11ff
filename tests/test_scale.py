"""Packing many nodes into few worker processes: the defaults, the file-descriptor limit,
the memory sampler, and a real packed federation of 32 nodes (slow; runs in CI)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodes.launch import raise_fd_limit
from scenarios.config import ScenarioConfig
from scenarios.run import run_scenario
from scenarios.runner import default_nodes_per_worker, start_workers
from scenarios.tree_memory import descendants, tree_usage
from swarm.errors import UsageError

SCALE = Path(__file__).resolve().parent.parent / "scenarios" / "scale-128.toml"


def test_default_packing_keeps_a_few_workers_per_core():
    assert default_nodes_per_worker(6, cores=2) == 1  # small federations: one process per node
    assert default_nodes_per_worker(8, cores=2) == 1
    assert default_nodes_per_worker(9, cores=2) == 2
    assert default_nodes_per_worker(128, cores=2) == 16
    assert default_nodes_per_worker(256, cores=16) == 4


def test_start_workers_groups_consecutive_sites(tmp_path):
    started: list[list[str]] = []

    class Fake:
        def __init__(self, sites, log_path, insecure=False):
            started.append([p.name for p in sites])

        def poll(self):
            return 0

    sites = {f"s{i}": tmp_path / "sites" / f"s{i}" for i in range(5)}
    for path in sites.values():
        path.mkdir(parents=True)
    runs = start_workers(sites, 2, Fake)
    assert started == [["s0", "s1"], ["s2", "s3"], ["s4"]]
    assert runs[0].worker is runs[1].worker and runs[1].worker is not runs[2].worker
    assert [r.name for r in runs] == list(sites)


def test_fd_limit_above_the_hard_limit_is_a_clear_error():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit on open files here")
    with pytest.raises(UsageError, match="hard limit"):
        raise_fd_limit(hard + 1)
    raise_fd_limit(soft)  # already enough: no change
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)


def test_tree_usage_sees_child_processes():
    # The child touches 64 MiB (bytearray zero-fills), so the tree's PSS must include it.
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(64 << 20); time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        processes, rss, pss = tree_usage(os.getpid())
        while time.monotonic() < deadline and pss < 64 << 20:
            time.sleep(0.1)
            processes, rss, pss = tree_usage(os.getpid())
        assert child.pid in descendants(os.getpid())
        assert processes >= 2 and rss >= pss > 64 << 20
    finally:
        child.kill()
        child.wait()


@pytest.mark.slow
def test_a_packed_federation_of_32_nodes_finishes_with_verified_logs(tmp_path):
    # Packing is forced (the default would give one process per node on a machine with 8+ cores).
    config = ScenarioConfig.load(SCALE).with_overrides(nodes=32, rounds=3).replace(nodes_per_worker=4)
    summary = run_scenario(config, tmp_path / "run", lambda line: None)
    assert summary["ok"], summary["log_verification"]
    assert summary["workers"] == 8
    assert len(summary["nodes"]) == 32 and all(n["rounds_completed"] == 3 and n["exit_code"] == 0 for n in summary["nodes"])
    # Every node kept its own signed log, metrics and node.log inside a shared process.
    site = tmp_path / "run" / "sites" / "hospital-000"
    assert (site / "node.log").read_text().count("finished at version 3") == 1
    lines = [json.loads(line) for line in (site / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in lines] == [1, 2, 3] and lines[-1]["bytes_sent"] > 0
    assert summary["log_verification"]["entries"] >= 32 * 3
