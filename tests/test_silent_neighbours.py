"""A silent neighbour over real node processes: the healthy sites suspect it and go on
without waiting for it, and once it starts it is heard, cleared and merged again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest

from scenarios.config import ScenarioConfig
from scenarios.fault_bench import rejoin, round_gaps
from scenarios.federation import create_federation
from swarm.transport import InMemoryNetwork
from tests.conftest import kill_survivors, merged_peers, start_nodes, stop_processes, write_scenario

ENV = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_round_gaps_and_rejoin_are_read_from_metrics_lines():
    rows = [{"seq": s, "time": t, "merged": m} for s, t, m in [(1, 10.0, {}), (2, 10.5, {"c": 1}), (3, 12.0, {}), (4, 20.0, {"c": 6}), (5, 20.4, {"c": 7})]]
    assert round_gaps(rows) == [0.5, 1.5, 8.0, pytest.approx(0.4)]
    victim = [{"seq": 5, "time": 15.0, "merged": {}}, {"seq": 6, "time": 19.0, "merged": {"a": 3}}, {"seq": 7, "time": 20.2, "merged": {"a": 4}}]
    # Restarted at 18.0: its first new version is 6 (19.0); the healthy site's first round
    # from then on (seq 4 at 20.0) merged it.
    assert rejoin([rows], victim, "c", 18.0) == {"rounds_to_rejoin": 1, "rejoin_s": 2.0, "merged_neighbours_at_once": True}
    assert rejoin([rows[:3]], victim, "c", 18.0)["rounds_to_rejoin"] is None  # never merged it
    assert rejoin([rows], victim, "c", 30.0) == {"rounds_to_rejoin": None, "rejoin_s": None, "merged_neighbours_at_once": None}


def _status(site: Path) -> dict:
    try:
        return json.loads((site / "status.json").read_text())
    except (OSError, ValueError):  # not written yet
        return {}


@pytest.mark.slow
def test_a_dead_neighbour_is_suspected_not_waited_for_and_merged_again_once_it_runs(tmp_path):
    # poll_timeout = 15 s: without the detector, 20 rounds would wait 300 s for c.
    scenario = write_scenario(tmp_path, nodes=3, rounds=500, topology="complete")
    scenario.write_text(scenario.read_text().replace("poll_timeout = 2.0", "poll_timeout = 15.0"))
    federation = create_federation(ScenarioConfig.load(scenario), tmp_path / "run")
    sites = federation.sites

    def start(name: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "nodes", "run", "--site", str(sites[name])], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=ENV)

    processes = {name: start(name) for name in ("hospital-a", "hospital-b")}  # c is dead from the start
    a = sites["hospital-a"]
    try:
        deadline = time.monotonic() + 150  # c's first missed poll costs 15 s; without the detector 20 rounds cost 300 s
        while _status(a).get("published_seq", 0) < 20:
            assert time.monotonic() < deadline, f"hospital-a stalled at {_status(a).get('published_seq')}"
            assert all(p.poll() is None for p in processes.values()), "a node exited"
            time.sleep(0.2)
        seen = _status(a)["neighbours"]
        assert seen["hospital-c"]["suspected"] and seen["hospital-c"]["last_heard"] is None
        assert not seen["hospital-b"]["suspected"]
        assert "hospital-c did not answer in time: suspected" in (a / "node.log").read_text()
        report = subprocess.run([sys.executable, "-m", "nodes", "status", "--site", str(a)], capture_output=True, text=True, env=ENV, timeout=60)
        assert "SUSPECTED (not waited for)" in report.stdout and "WARNING hospital-c silent since the node started" in report.stdout
        processes["hospital-c"] = start("hospital-c")
        deadline = time.monotonic() + 240
        while "hospital-c" not in merged_peers(a) or _status(a)["neighbours"]["hospital-c"]["suspected"]:
            assert time.monotonic() < deadline, "hospital-c never rejoined"
            assert all(p.poll() is None for p in processes.values()), "a node exited"
            time.sleep(0.2)
        assert "hospital-c answers again: back in rounds" in (a / "node.log").read_text()
        stop_processes(processes.values())
    finally:
        kill_survivors(processes.values())


class StallingNetwork(InMemoryNetwork):
    """Drops b's messages of one kind to a while `stall` is set: a's wait for b's model
    hangs as if b died before offering it ("model_reply") or mid-transfer ("chunk")."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.stall = threading.Event()

    def _deliver(self, sender, peer, frames):
        if self.stall.is_set() and (sender, peer) == ("hospital-b", "hospital-a") and msgpack.unpackb(bytes(frames[0]))["kind"] == self.kind:
            return True  # lost
        return super()._deliver(sender, peer, frames)


def _wait(condition, what: str, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@pytest.mark.parametrize("lost", ["model_reply", "chunk"], ids=["before its offer", "mid-transfer"])
def test_a_pull_from_a_neighbour_that_loses_its_connection_is_put_aside_not_waited_out(tmp_path, lost):
    # pull_timeout = 600 s: without the connection watch, the round would wait ten minutes.
    scenario = write_scenario(tmp_path, nodes=2, rounds=1000, topology="complete")
    scenario.write_text(scenario.read_text().replace("pull_timeout = 10.0", "pull_timeout = 600.0"))
    federation = create_federation(ScenarioConfig.load(scenario), tmp_path / "run")
    network = StallingNetwork(lost)
    nodes, threads, stop = start_nodes(federation, network)
    a = nodes["hospital-a"]
    try:
        _wait(lambda: a.protocol.merged.get("hospital-b", 0) >= 2, "a never merged b")
        network.stall.set()
        if lost == "chunk":
            _wait(lambda: (p := a.transfers.pulls.get("hospital-b")) is not None and p.active and p.transfer.bytes_received == 0,
                  "a never started a pull that hangs")
        else:
            _wait(lambda: a.protocol.phase.value == "pulling" and "hospital-b" in a.protocol.pending, "a never asked b for a model")
        stuck_at = a.protocol.published_seq
        network.down.add("hospital-b")  # b's connection is gone
        _wait(lambda: a.protocol.published_seq > stuck_at + 2, "a waited for the pull instead of going on")
        assert a.dropped["peer_unreachable"] >= 1 and (lost != "chunk" or a.transfers.counts["paused"] >= 1)
        assert "hospital-b" in a.protocol.suspects  # and not waited for in the rounds since
        merged_before = a.protocol.merged["hospital-b"]
        network.down.discard("hospital-b")
        network.stall.clear()
        _wait(lambda: a.protocol.merged["hospital-b"] > merged_before and not a.protocol.suspects, "b never rejoined")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        for node in nodes.values():
            node.store.close()
    assert not any(t.is_alive() for t in threads)
