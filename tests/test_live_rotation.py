"""A live key rotation with real `swarm-node run` processes over loopback TCP and CurveZMQ:
hospital-b gets new signing and transport keys (README, "Changing the federation") while
the federation trains. b stops when it adopts the version that changes its own card, comes
back with the new keys, and its neighbours take its log on under the new key: c, made to
lag behind, through the reply that mixes b's last old-key entries with its first new-key one."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scenarios.config import ScenarioConfig
from scenarios.federation import create_federation
from swarm.identity import load_site_keys
from swarm.log import open_entry, read_records
from swarm.manifest import load_manifest
from tests.conftest import write_scenario
from tests.test_processes import ENV, log_entries, swarm_node

pytestmark = pytest.mark.slow

ROUNDS = 30
ROUND_INTERVAL = 0.4  # slow enough that the rotation happens with most rounds to go
ROTATED = "hospital-b"
LAGGING = "hospital-c"
HALT_LINE = "manifest version 2 changes this site's own keys or endpoint: stopping"


def federation_of_three(tmp_path: Path):
    """The conftest's small scenario, complete topology, with a slower round timer and a
    shorter wait for a silent neighbour."""
    scenario = write_scenario(tmp_path, nodes=3, rounds=ROUNDS, topology="complete")
    text = scenario.read_text().replace("round_interval = 0.05", f"round_interval = {ROUND_INTERVAL}")
    scenario.write_text(text.replace("poll_timeout = 2.0", "poll_timeout = 1.0"))  # rounds go on soon while c stalls
    return create_federation(ScenarioConfig.load(scenario), tmp_path / "run")


def start(site: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nodes", "run", "--site", str(site)], stdout=subprocess.PIPE, stderr=open(site / "node.log", "ab"), text=True, env=ENV)


def peer_copy(site: Path, peer: str) -> list:
    path = site / "peers" / f"{peer}.log"
    if not path.exists():
        return []
    envelopes, torn = read_records(path)
    assert not torn
    return [open_entry(e) for e in envelopes]


def cli(*args) -> str:
    result = swarm_node(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_a_live_key_rotation_keeps_the_federation_training_under_the_new_keys(tmp_path):
    federation = federation_of_three(tmp_path)
    sites = federation.sites
    b_site = sites[ROTATED]
    old_key = load_site_keys(b_site / "keys").signing.public
    # The rotation, as an operator does it: fresh keys for the same name and endpoint,
    # version 2 proposed with --rotate, signed with the new keys, with b's old ones and with
    # a's (2 of the 3 members of version 1). Prepared before the nodes start, so that on a
    # busy machine the slow CLI runs do not let the federation finish before the install.
    new_keys = tmp_path / "b-new-keys"
    cli("init", "--site", new_keys, "--name", ROTATED, "--endpoint", federation.manifest.member(ROTATED).endpoint)
    new_key = load_site_keys(new_keys / "keys").signing.public
    v2 = tmp_path / "manifest-v2.json"
    cli("federation", "propose", "--from", federation.manifest_path, "--rotate", new_keys / "member.json", "--out", v2)
    card = load_manifest(v2).manifest.member(ROTATED)
    assert card.signing_key == new_key and card.transport_key != federation.manifest.member(ROTATED).transport_key
    cli("federation", "sign", v2, "--site", new_keys)
    assert "with its old key of version 1" in cli("federation", "sign", v2, "--site", b_site)
    assert "enough signatures" in cli("federation", "sign", v2, "--site", sites["hospital-a"])
    processes = {name: start(site) for name, site in sites.items()}
    try:
        deadline = time.monotonic() + 60
        while min(len(log_entries(site)) for site in sites.values()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert min(len(log_entries(site)) for site in sites.values()) >= 3, "the nodes did not start training"
        # c stalls (SIGSTOP) while b publishes two more versions, so that c's copy of b's log
        # lags behind: when b is back, c's first pull from it is the reply that mixes b's last
        # old-key entries with its first new-key one.
        processes[LAGGING].send_signal(signal.SIGSTOP)
        stalled_at = len(log_entries(b_site))
        deadline = time.monotonic() + 30
        while len(log_entries(b_site)) < stalled_at + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        # Version 2 is installed at every site while the nodes run: at a first, which tells b.
        cli("federation", "install", v2, "--site", sites["hospital-a"])

        # b stops on its own once it adopts version 2.
        stdout, _ = processes[ROTATED].communicate(timeout=60)
        assert processes[ROTATED].returncode == 0 and stdout.startswith("stopped at version")
        assert HALT_LINE in (b_site / "node.log").read_text()
        status = json.loads((b_site / "status.json").read_text())
        assert status["state"] == "stopped" and status["halted"] == "own_card_changed"
        before = log_entries(b_site)
        assert {e.author for e in before} == {old_key}
        assert len(before) < ROUNDS - 8, "b should be rotated with rounds to go"
        assert len(peer_copy(sites[LAGGING], ROTATED)) <= stalled_at < len(before) - 1, "c's copy of b's log should lag behind"
        processes[LAGGING].send_signal(signal.SIGCONT)
        assert all(processes[name].poll() is None for name in ("hospital-a", LAGGING)), "a and c should still be training"
        for name in (LAGGING, ROTATED):
            cli("federation", "install", v2, "--site", sites[name])

        # The new keys into b's site, and b starts again.
        for path in (new_keys / "keys").iterdir():
            shutil.copyfile(path, b_site / "keys" / path.name)
        processes[ROTATED] = start(b_site)
        for name, process in processes.items():
            assert process.wait(120) == 0, (sites[name] / "node.log").read_text()[-3000:]
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()

    rotation = len(before)  # b's last entry signed with its old key
    after = log_entries(b_site)
    assert len(after) == ROUNDS and [e.envelope for e in after[:rotation]] == [e.envelope for e in before]
    assert {e.author for e in after[rotation:]} == {new_key}, "after the rotation b signs only with its new key"
    assert f"resuming from published version {rotation}" in (b_site / "node.log").read_text()

    for name in ("hospital-a", "hospital-c"):
        site = sites[name]
        copy = peer_copy(site, ROTATED)
        # Its copy of b's log is b's own, entry for entry, and goes on past the rotation.
        assert [e.envelope for e in copy] == [e.envelope for e in after[: len(copy)]]
        assert len(copy) > rotation + 2 and copy[rotation].author == new_key, f"{name} never took b's log on under the new key"
        assert all(e.author == new_key for e in copy[rotation:]) and all(e.author == old_key for e in copy[:rotation])
        # It merged b's versions signed with the new key.
        merged = [json.loads(line)["merged"].get(ROTATED, 0) for line in (site / "metrics.jsonl").read_text().splitlines()]
        assert max(merged) > rotation, f"{name} merged no version b signed with its new key"
        status = json.loads((site / "status.json").read_text())
        assert status["state"] == "finished" and status["manifest_version"] == 2
        # Nothing of b's was refused, except at most one reply b sent with its old key just
        # before it heard of version 2 and arrived after this node adopted it (revoked_key).
        rejected = status["rejected"]
        assert rejected.get("revoked_key", 0) <= 1 and "author_mismatch" not in rejected, rejected
        assert set(rejected) <= {"revoked_key"}, rejected
    assert json.loads((b_site / "status.json").read_text())["state"] == "finished"

    out = tmp_path / "run"
    assert "OK" in cli("log", "verify", out)
    cli("audit", out)
