"""Real nodes (keys, signed logs, checkpoints, torch training) over the in-memory network,
each in its own thread: the whole node runtime without sockets."""

from __future__ import annotations

import json

import pytest

from nodes.audit import verify_sites
from scenarios.config import ScenarioConfig
from scenarios.federation import create_federation
from swarm.codec import encode_message
from swarm.messages import VersionRequest
from swarm.transport import InMemoryNetwork
from tests.conftest import join, start_nodes, write_scenario


def test_nodes_train_exchange_and_log_verifiable_history(small_federation):
    config, federation = small_federation(nodes=3, rounds=3)
    network = InMemoryNetwork()
    nodes, threads, stop = start_nodes(federation, network)
    join(threads, stop)
    for name, node in nodes.items():
        assert node.protocol.finished and node.store.head.seq == 3
        node.store.close()
    report = verify_sites(federation.sites.values())
    assert report.ok, report.failures
    # Every entry after the first merges the author's own previous version and at least one
    # neighbour's, by (author, seq, digest) -- the provenance an auditor follows.
    keys = {m.signing_key: m.name for m in federation.manifest.members}
    merged_from_neighbours = [
        keys[p.author] for node in nodes.values() for e in node.store.own_log.entries for p in e.body.parents if keys[p.author] != node.name
    ]
    assert merged_from_neighbours, "no node ever merged a neighbour's model"


def test_garbage_is_rejected_counted_and_the_node_carries_on(small_federation):
    config, federation = small_federation(nodes=3, rounds=2)
    network = InMemoryNetwork()
    nodes, threads, stop = start_nodes(federation, network)
    target = nodes["hospital-a"]
    attacker = network.endpoint("hospital-b")  # speaks with b's name but without b's keys
    attacker.send("hospital-a", [b"\xc1 not msgpack"])
    attacker.send("hospital-a", [b"\x93" * 100_000])
    attacker.send("hospital-a", encode_message(b"\x00" * 32, VersionRequest(1)))
    join(threads, stop)
    counts = target.rejections.counts
    assert counts["bad_msgpack"] >= 1 and counts["wrong_federation"] == 1
    assert sum(counts.values()) >= 3
    assert target.protocol.finished and target.store.head.seq == 2
    for node in nodes.values():
        node.store.close()
    assert verify_sites(federation.sites.values()).ok


@pytest.mark.parametrize(
    "protocol",
    [
        {"name": "dpsgd", "round_timeout": 10.0, "linger": 10.0},
        {"name": "epidemic", "fanout": 1, "round_timeout": 10.0, "linger": 10.0},
        {"name": "gossip", "push_interval": 0.05, "wait_for_new": 1.0, "linger": 10.0},
    ],
    ids=lambda p: p["name"],
)
def test_every_protocol_runs_on_the_real_node_runtime(tmp_path, protocol):
    config = ScenarioConfig.load(write_scenario(tmp_path, nodes=4, rounds=3)).with_overrides(protocol=protocol)
    federation = create_federation(config, tmp_path / "run")
    nodes, threads, stop = start_nodes(federation, InMemoryNetwork())
    join(threads, stop)
    for node in nodes.values():
        assert node.protocol.finished and node.store.head.seq == 3
        node.store.close()
    assert verify_sites(federation.sites.values()).ok
    keys = {m.signing_key: m.name for m in federation.manifest.members}
    for name, node in nodes.items():
        entries = node.store.own_log.entries
        assert any(keys[p.author] != name for e in entries for p in e.body.parents), f"{name} never merged a neighbour"
        if protocol["name"] == "gossip":  # the age is signed, and grows by one per round at least
            ages = [e.body.metrics["age"] for e in entries]
            assert ages[0] == 1.0 and all(b >= a + 1 for a, b in zip(ages, ages[1:]))
        lines = [json.loads(line) for line in (federation.sites[name] / "metrics.jsonl").read_text().splitlines()]
        assert lines[-1]["bytes_sent"] > lines[0]["bytes_sent"] >= 0 and lines[-1]["bytes_received"] > 0
        assert {"wait", "merge", "train", "publish", "round"} <= set(lines[-1]["timings"])
