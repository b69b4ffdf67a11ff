"""What a node does with a model reply from a neighbour it is pulling from: merge only what
verifies (signature by that member, federation, chain position, digest, the plan's tensor
layout, every chunk against its signed leaf hash, finite weights); refuse, count and never
stage anything else."""

from __future__ import annotations

import pytest
import torch

from nodes.launch import open_node
from swarm.codec import decode_message, encode_message
from swarm.evidence import EvidenceStore, load_evidence
from swarm.identity import SigningKey, load_site_keys
from swarm.log import EntryBody, sign_entry
from swarm.messages import Chunk, ChunkRequest, Evidence, ModelReply, VersionReply
from swarm.tensors import flatten_state, leaf_hashes, model_digest
from swarm.transfer import Offered, TransferSettings
from swarm.transport import InMemoryNetwork, Received


@pytest.fixture
def puller(small_federation):
    """hospital-a's node, driven by hand into pulling hospital-b's version 1."""
    _, federation = small_federation(nodes=3, rounds=5)
    network = InMemoryNetwork()
    node, _ = open_node(federation.sites["hospital-a"], lambda config, links, settings: network.endpoint(config.name))
    node.protocol.start(0.0)
    fed = federation.manifest.federation_id

    def pull_from_b(b_seq: int) -> int:
        node._execute(node.protocol.tick(node.protocol.next_deadline()))
        polls = dict(node.protocol.pending)
        node._on_received(Received("hospital-b", encode_message(fed, VersionReply(polls["hospital-b"], b_seq, 100, False))))
        node._on_received(Received("hospital-c", encode_message(fed, VersionReply(polls["hospital-c"], 0, 100, False))))
        return node.protocol.pending["hospital-b"]

    b_key = load_site_keys(federation.sites["hospital-b"] / "keys").signing
    c_key = load_site_keys(federation.sites["hospital-c"] / "keys").signing
    yield node, pull_from_b, fed, b_key, c_key
    node.executor.shutdown(wait=True)
    node.store.close()


def entry(fed: bytes, key: SigningKey, flat, seq: int = 1, prev: bytes = bytes(32), samples: int = 100):
    return sign_entry(EntryBody(fed, key.public, seq, prev, "update", model_digest(flat), samples, (), seq, {}, 0.0), key)


def reply(node, fed: bytes, req: int, entries, flat, chunks_from=None) -> None:
    """hospital-b offers `flat` (leaf hashes included) under `entries`, then answers every
    chunk request the node sends it with chunks of `chunks_from` (default: `flat`)."""
    b_inbox = node.transport.network.endpoint("hospital-b")
    node._on_received(Received("hospital-b", encode_message(fed, ModelReply(req, tuple(e.envelope for e in entries), tuple(leaf_hashes(flat))))))
    serving = Offered(chunks_from or flat, leaf_hashes(chunks_from or flat), b"")
    for _ in range(10_000):
        received = b_inbox.receive(0)
        if received is None:
            return
        msg = decode_message(received.frames, fed).msg
        if isinstance(msg, ChunkRequest):
            frames = serving.frames(msg.first, msg.count)
            node._on_received(Received("hospital-b", encode_message(fed, Chunk(msg.digest, msg.first, msg.count), frames)))
    raise AssertionError("the node never stopped asking for chunks")


def b_model(node, shift: float = 1.0):
    return flatten_state({k: v + shift for k, v in node.learner.state().items()}, copy=True)


def test_a_valid_model_is_staged_and_its_entry_kept(puller):
    node, pull_from_b, fed, b_key, _ = puller
    req = pull_from_b(1)
    flat = b_model(node)
    reply(node, fed, req, [entry(fed, b_key, flat)], flat)
    assert sum(node.rejections.counts.values()) == 0
    assert node.store.peer_logs["hospital-b"].head.seq == 1
    assert node.job is not None  # the round goes on to merge and train with b's model
    [pulled] = node.job_pulled
    assert pulled.entry.author == b_key.public


def forged_cases(node, fed, b_key, c_key):
    flat = b_model(node)
    other = b_model(node, shift=2.0)
    intruder = SigningKey.generate()
    state = dict(node.learner.state())
    last = sorted(state)[-1]
    reshaped = flatten_state(state | {last: torch.zeros(3)}, copy=True)  # same count, other shape
    extra = flatten_state(state | {"extra": torch.zeros(3)}, copy=True)
    wrong_fed = bytes(32)
    first = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    poisoned = {}
    for label, value in (("NaN", float("nan")), ("Inf", float("inf"))):
        tensor = state[first].clone()
        tensor.view(-1)[0] = value
        poisoned[label] = flatten_state(state | {first: tensor}, copy=True)
    return {
        "NaN weights, validly signed": ([entry(fed, b_key, poisoned["NaN"])], poisoned["NaN"], "non_finite_weights"),
        "Inf weights, validly signed": ([entry(fed, b_key, poisoned["Inf"])], poisoned["Inf"], "non_finite_weights"),
        "intruder key": ([entry(fed, intruder, flat)], flat, "author_mismatch"),
        "another member's key": ([entry(fed, c_key, flat)], flat, "author_mismatch"),
        "other tensors than signed": ([entry(fed, b_key, flat)], other, "digest_mismatch"),
        "not the plan's model": ([entry(fed, b_key, reshaped)], reshaped, "digest_mismatch"),
        "more tensors than the plan's model": ([entry(fed, b_key, extra)], extra, "offer_mismatch"),
        "another federation": ([entry(wrong_fed, b_key, flat)], flat, "wrong_federation"),
        "skips the chain start": ([entry(fed, b_key, flat, seq=2, prev=b"\x01" * 32)], flat, "bad_seq"),
    }


@pytest.mark.parametrize("case", ["NaN weights, validly signed", "Inf weights, validly signed", "intruder key", "another member's key", "other tensors than signed", "not the plan's model", "more tensors than the plan's model", "another federation", "skips the chain start"])
def test_forged_models_are_refused_counted_and_not_merged(puller, case):
    node, pull_from_b, fed, b_key, c_key = puller
    req = pull_from_b(1)
    entries, flat, reason = forged_cases(node, fed, b_key, c_key)[case]
    reply(node, fed, req, entries, flat)
    assert node.rejections.counts == {reason: 1}
    assert node.store.peer_logs["hospital-b"].head is None and node.staged == {}
    # The round goes on and trains without b's model.
    assert node.job is not None and node.job_pulled == []


def test_a_second_different_entry_for_a_held_seq_is_a_fork(puller):
    node, pull_from_b, fed, b_key, _ = puller
    flat = b_model(node)
    first = entry(fed, b_key, flat)
    reply(node, fed, pull_from_b(1), [first], flat)
    node.job.result()
    node._finish_round()
    other = b_model(node, shift=3.0)
    forked = entry(fed, b_key, other)  # same (author, seq 1), different content
    reply(node, fed, pull_from_b(2), [forked], other)
    assert node.rejections.counts == {"fork": 1}
    assert node.store.peer_logs["hospital-b"].head.envelope == first.envelope


def test_a_fork_is_kept_as_evidence_quarantines_the_author_and_is_passed_on(puller):
    node, pull_from_b, fed, b_key, _ = puller
    c_inbox = node.transport.network.endpoint("hospital-c")
    flat, other = b_model(node), b_model(node, shift=3.0)
    first = entry(fed, b_key, flat)
    reply(node, fed, pull_from_b(1), [first], flat)
    node.job.result()
    node._finish_round()
    forked = entry(fed, b_key, other)
    reply(node, fed, pull_from_b(2), [forked], other)
    assert node.evidence.quarantined == {"hospital-b"}
    [path] = list(node.store.site.evidence_dir.iterdir())
    assert load_evidence(path, node.manifest).envelopes == tuple(sorted((first.envelope, forked.envelope)))
    passed_on = []
    while (received := c_inbox.receive(0)) is not None:
        passed_on.append(decode_message(received.frames, fed).msg)
    assert any(isinstance(m, Evidence) and set(m.entries) == {first.envelope, forked.envelope} for m in passed_on)
    # No further merges of b's models, even valid new ones; and the quarantine survives a restart.
    node.job.result()
    node._finish_round()
    second = entry(fed, b_key, flat, seq=2, prev=first.hash)
    reply(node, fed, pull_from_b(2), [first, second], flat)
    assert node.rejections.counts["quarantined"] == 1 and "hospital-b" not in node.staged
    assert EvidenceStore(node.store.site.evidence_dir, node.manifest).quarantined == {"hospital-b"}


def test_evidence_from_a_neighbour_is_checked_before_anyone_is_quarantined(puller):
    node, _, fed, b_key, c_key = puller
    flat, other = b_model(node), b_model(node, shift=3.0)
    one, two = entry(fed, b_key, flat), entry(fed, b_key, other)
    not_a_fork = Evidence((one.envelope, entry(fed, c_key, other).envelope))  # two authors
    node._on_received(Received("hospital-c", encode_message(fed, not_a_fork)))
    assert node.rejections.counts == {"bad_evidence": 1} and node.evidence.quarantined == set()
    node._on_received(Received("hospital-c", encode_message(fed, Evidence((one.envelope, two.envelope)))))
    assert node.evidence.quarantined == {"hospital-b"}


def test_replies_nobody_asked_for_are_dropped_before_verification(puller):
    node, pull_from_b, fed, b_key, _ = puller
    flat = b_model(node)
    reply(node, fed, 999, [entry(fed, SigningKey.generate(), flat)], flat)
    assert node.dropped["stale_model_reply"] == 1 and sum(node.rejections.counts.values()) == 0


def test_a_neighbour_that_keeps_sending_garbage_is_ignored_for_a_while(puller):
    node, pull_from_b, fed, b_key, _ = puller
    req = pull_from_b(1)
    for _ in range(node.backoff.limit):
        node._on_received(Received("hospital-b", [b"\xc1 garbage"]))
    assert node.rejections.counts["bad_msgpack"] == node.backoff.limit
    assert node.backoff.blocked("hospital-b", node.clock())
    flat = b_model(node)
    reply(node, fed, req, [entry(fed, b_key, flat)], flat)  # even a valid one
    assert node.rejections.counts["peer_in_backoff"] == 1
    assert node.store.peer_logs["hospital-b"].head is None and node.staged == {}
    assert not node.backoff.blocked("hospital-c", node.clock())


def test_chunks_that_do_not_match_the_signed_hashes_are_refused_until_the_pull_gives_up(puller):
    node, pull_from_b, fed, b_key, _ = puller
    req = pull_from_b(1)
    flat = b_model(node)
    node.transfers.settings = TransferSettings(chunk_bytes=1)  # one chunk per tensor of this small model
    # An honest offer (hashes of the signed model), then other bytes for every chunk.
    reply(node, fed, req, [entry(fed, b_key, flat)], flat, chunks_from=b_model(node, shift=2.0))
    retries = node.transfers.settings.retries
    assert set(node.rejections.counts) == {"chunk_hash_mismatch"}
    assert node.rejections.counts["chunk_hash_mismatch"] >= retries + 1  # each chunk of the window is asked again
    assert node.transfers.counts["paused"] == 1
    assert node.store.peer_logs["hospital-b"].head is None and node.staged == {}
    assert node.job is not None and node.job_pulled == []  # the round goes on without b


def test_chunks_of_an_offer_never_made_are_refused_and_charged_to_their_sender(puller):
    node, _, fed, _, _ = puller
    flat = b_model(node)
    frames = Offered(flat, leaf_hashes(flat), b"").frames(0, 1)
    node._on_received(Received("hospital-b", encode_message(fed, Chunk(bytes(32), 0, 1), frames)))
    assert node.rejections.by_peer == {"hospital-b": {"unknown_transfer": 1}}
    assert node.staged == {} and node.transfers.pulls == {}


def test_a_pull_cut_off_resumes_from_its_verified_chunks_on_the_next_offer(puller):
    node, pull_from_b, fed, b_key, _ = puller
    req = pull_from_b(1)
    flat = flatten_state({k: torch.randn(v.shape) if v.is_floating_point() else v for k, v in node.learner.state().items()}, copy=True)
    signed = [entry(fed, b_key, flat)]
    node.transfers.settings = TransferSettings(chunk_bytes=1)  # one chunk per tensor of this small model
    b_inbox = node.transport.network.endpoint("hospital-b")
    node._on_received(Received("hospital-b", encode_message(fed, ModelReply(req, tuple(e.envelope for e in signed), tuple(leaf_hashes(flat))))))
    pull = node.transfers.pulls["hospital-b"]
    first_request = decode_message(b_inbox.receive(0).frames, fed).msg
    served = Offered(flat, leaf_hashes(flat), b"")
    node._on_received(Received("hospital-b", encode_message(fed, Chunk(first_request.digest, first_request.first, first_request.count), served.frames(first_request.first, first_request.count))))
    kept = pull.transfer.bytes_received
    assert 0 < kept
    node._pull_failed(pull, "transfer_stalled", "the link dropped")  # as after a time-out
    while b_inbox.receive(0) is not None:  # requests lost with the link
        pass
    node.job.result()  # the round went on without b's model
    node._finish_round()
    reply(node, fed, pull_from_b(1), signed, flat)  # offered again: only what is missing travels
    assert node.transfers.counts["resumed"] == 1
    assert node.transfers.counts["chunk_bytes_received"] == flat.total_bytes
    assert node.store.peer_logs["hospital-b"].head.seq == 1 and sum(node.rejections.counts.values()) == 0


def test_each_received_entry_signature_is_checked_once(puller, monkeypatch):
    import swarm.log.entry as entry_module

    node, pull_from_b, fed, b_key, _ = puller
    req = pull_from_b(2)
    flat = b_model(node)
    first = entry(fed, b_key, flat)
    second = entry(fed, b_key, flat, seq=2, prev=first.hash)
    checked = []
    real = entry_module.verify_signature
    monkeypatch.setattr(entry_module, "verify_signature", lambda *args: checked.append(1) or real(*args))
    reply(node, fed, req, [first, second], flat)
    assert node.store.peer_logs["hospital-b"].head.seq == 2 and sum(node.rejections.counts.values()) == 0
    assert len(checked) == 2  # one per entry: opened once, chained and logged without reopening


def test_a_node_restarted_mid_pull_resumes_from_what_it_saved_at_the_stop(small_federation):
    _, federation = small_federation(nodes=3, rounds=5)
    fed = federation.manifest.federation_id
    b_key = load_site_keys(federation.sites["hospital-b"] / "keys").signing

    def start():
        network = InMemoryNetwork()
        node, _ = open_node(federation.sites["hospital-a"], lambda config, links, settings: network.endpoint(config.name))
        node.transfers.settings = TransferSettings(chunk_bytes=1)  # one chunk per tensor of this small model
        node.protocol.start(0.0)
        return node, network.endpoint("hospital-b")

    def ask_b(node) -> int:
        node._execute(node.protocol.tick(node.protocol.next_deadline()))
        polls = dict(node.protocol.pending)
        node._on_received(Received("hospital-b", encode_message(fed, VersionReply(polls["hospital-b"], 1, 100, False))))
        node._on_received(Received("hospital-c", encode_message(fed, VersionReply(polls["hospital-c"], 0, 100, False))))
        return node.protocol.pending["hospital-b"]

    node, b_inbox = start()
    flat = flatten_state({k: torch.randn(v.shape) if v.is_floating_point() else v for k, v in node.learner.state().items()}, copy=True)
    signed = (entry(fed, b_key, flat).envelope,)
    served = Offered(flat, leaf_hashes(flat), b"")
    node._on_received(Received("hospital-b", encode_message(fed, ModelReply(ask_b(node), signed, served.hashes))))
    requests = [decode_message(r.frames, fed).msg for r in iter(lambda: b_inbox.receive(0), None)]
    request = next(m for m in requests if isinstance(m, ChunkRequest))  # b answers one, then the node stops
    node._on_received(Received("hospital-b", encode_message(fed, Chunk(request.digest, request.first, request.count), served.frames(request.first, request.count))))
    kept = node.transfers.pulls["hospital-b"].transfer.bytes_received
    node.executor.shutdown(wait=True)
    node.transfers.save(node.store.site.incoming_dir)  # what Node.run does on its way out
    node.store.close()

    node, b_inbox = start()
    try:
        node._on_received(Received("hospital-b", encode_message(fed, ModelReply(ask_b(node), signed, served.hashes))))
        while (received := b_inbox.receive(0)) is not None:
            msg = decode_message(received.frames, fed).msg
            if isinstance(msg, ChunkRequest):
                node._on_received(Received("hospital-b", encode_message(fed, Chunk(msg.digest, msg.first, msg.count), served.frames(msg.first, msg.count))))
        assert node.transfers.counts["resumed_from_disk_bytes"] == kept > 0
        assert node.transfers.counts["chunk_bytes_received"] == flat.total_bytes - kept
        assert node.store.peer_logs["hospital-b"].head.seq == 1 and sum(node.rejections.counts.values()) == 0
    finally:
        node.executor.shutdown(wait=True)
        node.store.close()
