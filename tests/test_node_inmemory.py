"""Real nodes (keys, signed logs, checkpoints, torch training) over the in-memory network,
each in its own thread: the whole node runtime without sockets."""

from __future__ import annotations

import threading

from nodes.audit import verify_sites
from nodes.launch import open_node
from nodes.node import Node
from swarm.codec import encode_message
from swarm.identity import SigningKey
from swarm.log import EntryBody, sign_entry
from swarm.messages import ModelReply, VersionRequest
from swarm.tensors import flatten_state, model_digest
from swarm.transport import InMemoryNetwork


def start_nodes(federation, network: InMemoryNetwork) -> tuple[dict[str, Node], list[threading.Thread], threading.Event]:
    nodes = {name: open_node(site, lambda config, peers: network.endpoint(config.name))[0] for name, site in federation.sites.items()}
    stop = threading.Event()
    threads = [threading.Thread(target=node.run, args=(stop,), daemon=True) for node in nodes.values()]
    for thread in threads:
        thread.start()
    return nodes, threads, stop


def join(threads, stop, limit=90.0) -> None:
    for thread in threads:
        thread.join(limit)
    stop.set()
    assert not any(t.is_alive() for t in threads), "a node did not finish"


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


def test_garbage_and_forged_models_are_rejected_counted_and_never_merged(small_federation):
    config, federation = small_federation(nodes=3, rounds=2)
    network = InMemoryNetwork()
    nodes, threads, stop = start_nodes(federation, network)
    target = nodes["hospital-a"]
    attacker = network.endpoint("hospital-b")  # speaks with b's name but without b's keys
    fed = federation.manifest.federation_id
    attacker.send("hospital-a", [b"\xc1 not msgpack"])
    attacker.send("hospital-a", [b"\x93" * 100_000])
    attacker.send("hospital-a", encode_message(b"\x00" * 32, VersionRequest(1)))
    # A model reply with a well-formed entry signed by a key outside the manifest.
    intruder = SigningKey.generate()
    flat = flatten_state(target.learner.state())
    body = EntryBody(fed, intruder.public, 1, bytes(32), "update", model_digest(flat), 10**6, (), 1, {}, 0.0)
    forged = sign_entry(body, intruder)
    attacker.send("hospital-a", encode_message(fed, ModelReply(1, (forged.envelope,)), flat))
    join(threads, stop)
    counts = target.rejections.counts
    assert counts["bad_msgpack"] >= 1 and counts["wrong_federation"] == 1
    assert sum(counts.values()) >= 3
    assert target.protocol.finished and target.store.head.seq == 2
    intruders = [p for e in target.store.own_log.entries for p in e.body.parents if p.author == intruder.public]
    assert intruders == []
    for node in nodes.values():
        node.store.close()
    assert verify_sites(federation.sites.values()).ok
