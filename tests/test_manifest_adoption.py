"""A running node and manifest versions: it adopts a newer valid version installed in its
site or sent by a neighbour, refuses a removed member from then on (and accepted it
before), passes new versions on, and refuses a second valid version 2 as equivocation."""

from __future__ import annotations

import json
import logging
import threading

import pytest

from nodes.audit import verify_sites
from nodes.launch import install_manifest, open_node
from nodes.manifest_sync import update_message
from swarm.codec import decode_message, encode_message
from swarm.identity import SigningKey, load_site_keys
from swarm.manifest import SignedManifest, load_manifest, save_manifest
from swarm.manifest_chain import propose
from swarm.log import UpdateLog
from swarm.messages import ManifestUpdate, ModelRequest, Refusal, VersionReply
from swarm.transport import InMemoryNetwork, Received
from tests.conftest import join
from tests.test_node_verification import b_model, entry, reply


def signed_version(federation, manifest, signers, **changes) -> SignedManifest:
    signed = SignedManifest(propose(manifest, **changes), {})
    for name in signers:
        signed.sign(name, load_site_keys(federation.sites[name] / "keys").signing, manifest)
    return signed


@pytest.fixture
def node_a(small_federation):
    """hospital-a's node of a 3-member ring (everyone is everyone's neighbour), by hand."""
    _, federation = small_federation(nodes=3, rounds=5)
    network = InMemoryNetwork()
    node, _ = open_node(federation.sites["hospital-a"], lambda config, links, settings: network.endpoint(config.name))
    node.protocol.start(0.0)
    inboxes = {name: network.endpoint(name) for name in ("hospital-b", "hospital-c")}
    yield node, federation, inboxes
    node.executor.shutdown(wait=True)
    node.store.close()


def sent_to(inbox, fed) -> list:
    out = []
    while (received := inbox.receive(0)) is not None:
        out.append(decode_message(received.frames, fed).msg)
    return out


def pull_from_b(node, fed, b_seq: int) -> int:
    node._execute(node.protocol.tick(node.protocol.next_deadline()))
    polls = dict(node.protocol.pending)
    node._on_received(Received("hospital-b", encode_message(fed, VersionReply(polls["hospital-b"], b_seq, 100, False))))
    node._on_received(Received("hospital-c", encode_message(fed, VersionReply(polls["hospital-c"], 0, 100, False))))
    return node.protocol.pending["hospital-b"]


def merge_first_from_b(node, federation):
    """a pulls, verifies and merges b's first version (signed with b's key of version 1)."""
    fed = federation.manifest.federation_id
    key = load_site_keys(federation.sites["hospital-b"] / "keys").signing
    flat = b_model(node)
    first = entry(fed, key, flat)
    reply(node, fed, pull_from_b(node, fed, 1), [first], flat)
    assert node.rejections.counts == {} and node.store.peer_logs["hospital-b"].head.seq == 1  # accepted under v1
    node.job.result()
    node._finish_round()
    return fed, key, flat, first


def test_a_member_removed_in_v2_is_accepted_before_and_refused_after_adoption(node_a, tmp_path, caplog):
    node, federation, inboxes = node_a
    fed, b_key, flat, first = merge_first_from_b(node, federation)

    for inbox in inboxes.values():
        sent_to(inbox, fed)  # what the rounds so far sent
    # Prepare: version 2 removes hospital-b, signed by a and c (2 of 3), installed at a's site.
    v2 = signed_version(federation, federation.manifest, ["hospital-a", "hospital-c"], remove=["hospital-b"])
    save_manifest(tmp_path / "v2.json", v2)
    install_manifest(tmp_path / "v2.json", federation.sites["hospital-a"])
    # Execute: the node's next look at its site directory.
    with caplog.at_level(logging.INFO, logger="swarm.node"):
        node._follow_manifests()
    # Assert: adopted and logged; announced to c, and once to b so that it stops.
    assert node.manifest.version == 2 and node.manifest.federation_id == fed
    assert any("adopted manifest version 2 (installed in the site; removed: hospital-b" in r.getMessage() for r in caplog.records)
    assert [m.manifest for m in sent_to(inboxes["hospital-c"], fed) if isinstance(m, ManifestUpdate)] == [v2.manifest.raw]
    assert [m.manifest for m in sent_to(inboxes["hospital-b"], fed)] == [v2.manifest.raw]
    assert node.transport.links == {"hospital-c": v2.manifest.member("hospital-c").endpoint}  # b left the allow-list
    # b's next, validly signed model is refused and counted; nothing of it is kept or staged.
    second = entry(fed, b_key, flat, seq=2, prev=first.hash)
    reply(node, fed, 1, [first, second], flat)
    assert node.rejections.counts["not_a_member"] == 1
    assert node.store.peer_logs["hospital-b"].head.seq == 1 and "hospital-b" not in node.staged
    node._execute(node.protocol.tick(node.protocol.next_deadline()))
    assert "hospital-b" not in node.protocol.pending and sent_to(inboxes["hospital-b"], fed) == []  # no round waits for b
    node._write_status("running")
    assert json.loads(node.status_path.read_text())["manifest_version"] == 2


def test_a_node_adopts_v2_from_a_neighbour_and_passes_it_on(node_a):
    node, federation, inboxes = node_a
    fed = federation.manifest.federation_id
    v1 = load_manifest(federation.manifest_path)
    v2 = signed_version(federation, federation.manifest, ["hospital-b", "hospital-c"], threshold=3)
    v3 = signed_version(federation, v2.manifest, ["hospital-a", "hospital-b", "hospital-c"], threshold=2)
    # Version 3 first: it cannot be placed yet, so a answers with its own current version.
    node._on_received(Received("hospital-c", encode_message(fed, update_message(v3))))
    assert node.manifest.version == 1 and node.dropped["manifest_gap"] == 1
    assert [m.manifest for m in sent_to(inboxes["hospital-c"], fed)] == [v1.manifest.raw]
    # Version 2 from c: verified against version 1, written to the site, adopted, passed on to b.
    node._on_received(Received("hospital-c", encode_message(fed, update_message(v2))))
    assert node.manifest.version == 2 and node.store.manifest.version == 2
    assert (federation.sites["hospital-a"] / "federation" / "v0002.json").read_bytes() == v2.manifest.raw
    assert [m.manifest for m in sent_to(inboxes["hospital-b"], fed)] == [v2.manifest.raw]
    assert sent_to(inboxes["hospital-c"], fed) == []  # not back to where it came from
    node._on_received(Received("hospital-c", encode_message(fed, update_message(v3))))
    assert node.manifest.version == 3 and sum(node.rejections.counts.values()) == 0
    # b shows that it is behind (it sends version 1): it gets versions 2 and 3, in order.
    sent_to(inboxes["hospital-b"], fed)
    node._on_received(Received("hospital-b", encode_message(fed, update_message(v1))))
    assert [m.manifest for m in sent_to(inboxes["hospital-b"], fed)] == [v2.manifest.raw, v3.manifest.raw]
    node._on_received(Received("hospital-b", encode_message(fed, update_message(v1))))
    assert sent_to(inboxes["hospital-b"], fed) == []  # answers are rate-limited per neighbour


def test_an_invalid_version_from_a_neighbour_is_refused_and_counted(node_a):
    node, federation, _ = node_a
    fed = federation.manifest.federation_id
    short = signed_version(federation, federation.manifest, ["hospital-b"], threshold=3)  # 1 of the 2 needed
    node._on_received(Received("hospital-b", encode_message(fed, update_message(short))))
    node._on_received(Received("hospital-c", encode_message(fed, ManifestUpdate(b"{not json", b"{}"))))
    assert node.manifest.version == 1 and node.rejections.counts == {"bad_manifest": 2}
    assert not (federation.sites["hospital-a"] / "federation" / "v0002.json").exists()


def test_two_conflicting_valid_v2s_the_second_is_refused_and_both_kept_as_evidence(node_a, caplog):
    node, federation, _ = node_a
    fed = federation.manifest.federation_id
    first = signed_version(federation, federation.manifest, ["hospital-b", "hospital-c"], threshold=3)
    second = signed_version(federation, federation.manifest, ["hospital-b", "hospital-c"], remove=["hospital-a"])
    node._on_received(Received("hospital-c", encode_message(fed, update_message(first))))
    with caplog.at_level(logging.ERROR, logger="swarm.node"):
        node._on_received(Received("hospital-b", encode_message(fed, update_message(second))))
        node._on_received(Received("hospital-b", encode_message(fed, update_message(second))))  # again: not counted twice
    assert node.manifest.raw == first.manifest.raw and node.halted is None  # kept the first; a is still a member
    assert node.rejections.counts["manifest_equivocation"] == 1 and node.dropped["known_manifest_equivocation"] == 1
    [loud] = [r.getMessage() for r in caplog.records if "MANIFEST EQUIVOCATION" in r.getMessage()]
    assert "signed both: hospital-b, hospital-c" in loud
    evidence = federation.sites["hospital-a"] / "evidence"
    kept = {load_manifest(p).manifest.raw for p in evidence.glob("manifest-v0002-*.json") if not p.name.endswith(".sigs.json")}
    assert kept == {first.manifest.raw, second.manifest.raw}


def test_a_node_whose_site_is_removed_stops(node_a, caplog):
    node, federation, _ = node_a
    fed = federation.manifest.federation_id
    v2 = signed_version(federation, federation.manifest, ["hospital-b", "hospital-c"], remove=["hospital-a"])
    with caplog.at_level(logging.ERROR, logger="swarm.node"):
        node._on_received(Received("hospital-b", encode_message(fed, update_message(v2))))
    assert node.halted == "removed" and any("not a member of manifest version 2: stopping" in r.getMessage() for r in caplog.records)


def test_running_nodes_spread_a_version_installed_at_one_site(small_federation, tmp_path):
    """Three nodes in threads: version 2 (hospital-c removed) is installed at hospital-a's
    site after its node opened under version 1; a picks it up from disk as it runs, b hears
    it from a, c stops."""
    _, federation = small_federation(nodes=3, rounds=8)
    network = InMemoryNetwork()
    nodes = {name: open_node(site, lambda config, links, settings: network.endpoint(config.name))[0] for name, site in federation.sites.items()}
    v2 = signed_version(federation, federation.manifest, ["hospital-a", "hospital-b"], remove=["hospital-c"])
    save_manifest(tmp_path / "v2.json", v2)
    install_manifest(tmp_path / "v2.json", federation.sites["hospital-a"])
    assert nodes["hospital-a"].manifest.version == 1
    stop = threading.Event()
    threads = [threading.Thread(target=node.run, args=(stop,), daemon=True) for node in nodes.values()]
    for thread in threads:
        thread.start()
    join(threads, stop)
    for node in nodes.values():
        node.store.close()
    statuses = {name: json.loads((site / "status.json").read_text()) for name, site in federation.sites.items()}
    assert statuses["hospital-a"]["manifest_version"] == 2 and statuses["hospital-b"]["manifest_version"] == 2
    assert statuses["hospital-c"]["halted"] == "removed"
    assert (federation.sites["hospital-b"] / "federation" / "v0002.json").read_bytes() == v2.manifest.raw
    assert nodes["hospital-a"].manifest.member_or_none("hospital-c") is None
    assert verify_sites([federation.manifest_path.parent]).ok  # c's log, written while it was a member, still audits


def test_after_a_signing_key_rotation_the_old_key_is_refused_and_the_new_one_continues(node_a):
    from swarm.manifest import Member

    node, federation, _ = node_a
    fed, old_key, flat, first = merge_first_from_b(node, federation)
    new_key = SigningKey.generate()
    card = federation.manifest.member("hospital-b")
    v2 = signed_version(federation, federation.manifest, ["hospital-a", "hospital-c"], rotate=[Member(card.name, new_key.public, card.transport_key, card.endpoint)])
    v2.sign("hospital-b", new_key, federation.manifest)
    node._on_received(Received("hospital-c", encode_message(fed, update_message(v2))))
    assert node.manifest.member("hospital-b").signing_key == new_key.public
    # Seq 2 signed with the old key: refused as revoked. Signed with the new key: it continues the chain.
    reply(node, fed, pull_from_b(node, fed, 2), [entry(fed, old_key, flat, seq=2, prev=first.hash)], flat)
    assert node.rejections.counts["revoked_key"] == 1 and node.store.peer_logs["hospital-b"].head.seq == 1
    node.job.result()
    node._finish_round()
    second = entry(fed, new_key, flat, seq=2, prev=first.hash)
    reply(node, fed, pull_from_b(node, fed, 2), [second], flat)
    assert node.store.peer_logs["hospital-b"].head.envelope == second.envelope and node.rejections.counts["revoked_key"] == 1
    assert node.names[new_key.public] == node.names[old_key.public] == "hospital-b"


def test_a_reply_with_old_key_entries_then_a_new_key_one_is_kept_whole(node_a):
    """A neighbour that missed b's last entries under its old key gets them, after the
    rotation, in the same reply as b's first new-key entry, which vouches for them."""
    from swarm.manifest import Member

    node, federation, _ = node_a
    fed, old_key, flat, first = merge_first_from_b(node, federation)
    new_key = SigningKey.generate()
    card = federation.manifest.member("hospital-b")
    v2 = signed_version(federation, federation.manifest, ["hospital-a", "hospital-c"], rotate=[Member(card.name, new_key.public, card.transport_key, card.endpoint)])
    v2.sign("hospital-b", new_key, federation.manifest)
    node._on_received(Received("hospital-c", encode_message(fed, update_message(v2))))
    second = entry(fed, old_key, flat, seq=2, prev=first.hash)  # published before b stopped; a never pulled it
    third = entry(fed, new_key, flat, seq=3, prev=second.hash)
    reply(node, fed, pull_from_b(node, fed, 3), [second, third], flat)
    assert sum(node.rejections.counts.values()) == 0 and [s.entry.seq for s in node.job_pulled] == [3]  # merging it
    node.job.result()
    peer_log = node.store.peer_logs["hospital-b"]
    assert [e.envelope for e in peer_log.entries] == [first.envelope, second.envelope, third.envelope]
    peer_log.close()  # what was written opens again with b's key history
    reopened = UpdateLog.open(peer_log.path, fed, new_key.public, earlier_keys=(old_key.public,))
    assert [e.seq for e in reopened.entries] == [1, 2, 3]
    reopened.close()


def test_a_node_restarted_with_new_keys_refuses_to_send_its_old_key_head(node_a):
    """Until it publishes under its new key, what it holds is signed with the replaced key,
    which its neighbours refuse (revoked_key): it says so instead of sending it."""
    node, federation, inboxes = node_a
    fed = federation.manifest.federation_id
    flat = b_model(node)
    reply(node, fed, pull_from_b(node, fed, 1), [entry(fed, load_site_keys(federation.sites["hospital-b"] / "keys").signing, flat)], flat)
    node.job.result()
    node._finish_round()
    sent_to(inboxes["hospital-b"], fed)
    node.store.key = SigningKey.generate()  # as after a restart with the keys of a rotation
    node._execute(node.protocol.receive("hospital-b", ModelRequest(7, 0), 0.0))
    assert sent_to(inboxes["hospital-b"], fed) == [Refusal(7, "head_under_old_key")] and node.dropped["head_under_old_key"] == 1


def test_a_version_read_from_disk_while_a_peers_version_is_refused_is_still_adopted(node_a, tmp_path):
    # Found in review: v2 (removing b) installed in the site, then, before the node's next
    # look at the directory, b sends a bad version 2. Adding b's version reads v2 from disk
    # first; the node must adopt it, not lose it and go on under v1 with b a member.
    node, federation, _ = node_a
    fed = federation.manifest.federation_id
    v2 = signed_version(federation, federation.manifest, ["hospital-a", "hospital-c"], remove=["hospital-b"])
    save_manifest(tmp_path / "v2.json", v2)
    install_manifest(tmp_path / "v2.json", federation.sites["hospital-a"])
    forged = signed_version(federation, federation.manifest, ["hospital-b"], threshold=3)  # 1 of the 2 needed
    node._on_received(Received("hospital-b", encode_message(fed, update_message(forged))))
    assert node.manifest.version == 2 and node.transport.links == {"hospital-c": v2.manifest.member("hospital-c").endpoint}
    node._follow_manifests()
    assert node.manifest.version == 2
