"""Chunked transfer as pure state (swarm.transfer): the credit window, re-requests on a
fake clock, chunks checked against the signed leaf hashes, resume from verified chunks."""

from __future__ import annotations

import pytest
import torch

from swarm.errors import RejectedMessage
from swarm.tensors import DIGEST_CHUNK_BYTES, flatten_state, leaf_count, leaf_hashes, model_digest, rebuild_state
from swarm.transfer import Incoming, Offered, TransferSettings, TransferStalled, check_offer, chunk_plan

MIB = 1024 * 1024


def model(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # 10 MiB + 4 MiB exactly + a few small tensors + an empty one: leaves of every size.
    return {
        "big": torch.randn(10 * MIB // 4, generator=g),
        "exact": torch.randn(DIGEST_CHUNK_BYTES // 4, generator=g),
        "small.bias": torch.randn(7, generator=g),
        "small.count": torch.tensor(3, dtype=torch.int64),
        "zero": torch.zeros(0),
    }


def sender(seed: int = 0) -> Offered:
    flat = flatten_state(model(seed), copy=True)
    return Offered(flat, leaf_hashes(flat), model_digest(flat))


def pull(offered: Offered, **settings) -> Incoming:
    check_offer(offered.flat.specs, offered.hashes, offered.digest)
    return Incoming(offered.flat.specs, offered.hashes, offered.digest, TransferSettings(**settings))


def deliver(incoming: Incoming, offered: Offered, requests) -> None:
    for first, count in requests:
        assert incoming.accept(first, count, offered.frames(first, count))


def test_leaves_are_the_digest_pieces_and_chunks_group_them() -> None:
    offered = sender()
    assert leaf_count(offered.flat.specs) == 3 + 1 + 1 + 1 == len(offered.hashes)  # "zero" has no leaf
    leaf = DIGEST_CHUNK_BYTES
    assert chunk_plan([leaf, leaf, leaf, leaf, 10, 10], 2 * leaf) == [(0, 2), (2, 2), (4, 2)]
    assert chunk_plan([leaf, 10, 10, leaf], leaf) == [(0, 1), (1, 2), (3, 1)]  # small leaves share a chunk
    assert chunk_plan([1] * 40, leaf) == [(0, 16), (16, 16), (32, 8)]  # at most 16 frames a chunk
    assert chunk_plan([], leaf) == []
    # big: 4 + 4 + 2 MiB; exact: 4 MiB; then the two small tensors together
    assert pull(offered).chunks == [(0, 1), (1, 1), (2, 1), (3, 1), (4, 2)]
    assert pull(offered, chunk_bytes=8 * MIB).chunks == [(0, 2), (2, 4)]  # 8 MiB, then 2 + 4 MiB + 36 bytes


def test_a_whole_transfer_rebuilds_the_same_tensors_within_the_window() -> None:
    offered = sender()
    incoming = pull(offered, window=2)
    now, asked = 0.0, 0
    while not incoming.complete:
        wanted = incoming.requests(now)
        assert len(incoming.inflight) <= 2  # never more than the credit outstanding
        asked += len(wanted)
        deliver(incoming, offered, wanted)
    assert asked == len(incoming.chunks) == 5
    assert incoming.bytes_received == offered.flat.total_bytes
    received = rebuild_state(incoming.model())
    for name, tensor in model().items():
        assert torch.equal(received[name], tensor)
    assert model_digest(incoming.model()) == offered.digest


def test_an_offer_whose_hashes_do_not_make_the_signed_digest_is_refused() -> None:
    offered, other = sender(), sender(seed=1)
    with pytest.raises(RejectedMessage) as refused:
        check_offer(offered.flat.specs, other.hashes, offered.digest)
    assert refused.value.reason == "digest_mismatch"
    with pytest.raises(RejectedMessage) as refused:
        check_offer(offered.flat.specs, offered.hashes[:-1], offered.digest)
    assert refused.value.reason == "offer_mismatch"


def test_a_chunk_that_does_not_match_its_signed_hash_is_refused_and_asked_for_again() -> None:
    offered, other = sender(), sender(seed=1)
    incoming = pull(offered, window=1, retries=2)
    [(first, count)] = incoming.requests(0.0)
    for _ in range(2):
        with pytest.raises(RejectedMessage) as refused:
            incoming.accept(first, count, other.frames(first, count))
        assert refused.value.reason == "chunk_hash_mismatch"
        assert incoming.requests(0.0) == [(first, count)]  # asked again at once
    assert incoming.bytes_received == 0  # nothing of the bad chunk was kept
    with pytest.raises(TransferStalled):
        incoming.accept(first, count, other.frames(first, count))


@pytest.mark.parametrize(
    "first, count, frames, reason",
    [
        (1, 1, "good", "bad_chunk_range"),  # not the start of a chunk of this plan (chunks of 2)
        (99, 2, "two", "bad_chunk_range"),
        (0, 2, "one_frame", "bad_chunk"),
        (0, 2, "short", "bad_chunk"),
        (2, 4, "good", "unrequested_chunk"),  # window 1: only chunk 0 was asked for
    ],
)
def test_malformed_or_unasked_chunks_are_refused(first, count, frames, reason) -> None:
    offered = sender()
    incoming = pull(offered, window=1, chunk_bytes=8 * MIB)
    assert incoming.requests(0.0) == [(0, 2)]
    data = {
        "good": lambda: offered.frames(first, count),
        "two": lambda: offered.frames(0, 2),
        "one_frame": lambda: offered.frames(0, 1),
        "short": lambda: [offered.frames(0, 1)[0], offered.frames(1, 1)[0][:-1]],
    }[frames]()
    with pytest.raises(RejectedMessage) as refused:
        incoming.accept(first, count, data)
    assert refused.value.reason == reason
    assert incoming.bytes_received == 0


def test_a_late_duplicate_is_ignored_and_a_timed_out_chunk_is_asked_for_again() -> None:
    offered = sender()
    incoming = pull(offered, window=2, chunk_timeout=10.0, retries=1)
    first_two = incoming.requests(0.0)
    deliver(incoming, offered, first_two[:1])
    assert incoming.requests(5.0) == [incoming.chunks[2]]  # credit freed by the arrival
    assert not incoming.accept(*first_two[0], offered.frames(*first_two[0]))  # duplicate
    again = incoming.requests(10.0)
    assert first_two[1] in again  # no answer within chunk_timeout: asked for again
    with pytest.raises(TransferStalled):
        incoming.requests(20.0)  # ... and once more is one retry too many


def test_an_interrupted_transfer_resumes_from_its_verified_chunks() -> None:
    offered = sender()
    incoming = pull(offered, window=2)
    deliver(incoming, offered, incoming.requests(0.0))
    asked_before = incoming.requests(1.0)  # in flight when the link drops
    kept = incoming.bytes_received
    incoming.interrupted()
    resumed = []
    while not incoming.complete:
        wanted = incoming.requests(2.0)
        resumed += wanted
        deliver(incoming, offered, wanted)
    assert resumed[: len(asked_before)] == asked_before  # what was in flight is asked first
    assert sum(sum(len(f) for f in offered.frames(*c)) for c in resumed) == offered.flat.total_bytes - kept
    assert model_digest(incoming.model()) == offered.digest


def test_a_sender_refuses_ranges_outside_its_model() -> None:
    offered = sender()
    for first, count in ((6, 1), (5, 2), (-1, 1), (0, 0), (0, 17), ("0", 1)):
        with pytest.raises(RejectedMessage) as refused:
            offered.frames(first, count)
        assert refused.value.reason == "bad_chunk_range"
    frames = offered.frames(0, 1)
    assert frames[0].obj is offered.flat.buffers[0].obj  # a view of the published bytes, no copy


def test_settings_are_checked() -> None:
    for bad in ({"chunk_bytes": 0}, {"chunk_bytes": 65 * 4 * MIB}, {"window": 0}):
        with pytest.raises(ValueError):
            TransferSettings(**bad)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def served_transfers(clock: FakeClock) -> tuple:
    from nodes.transfers import Transfers

    snapshot = {k: v.clone() for k, v in model().items()}
    flat = flatten_state(snapshot)
    transfers = Transfers(flat.specs, TransferSettings(), clock)
    transfers.offer(Offered(flat, leaf_hashes(flat), model_digest(flat), snapshot))
    return transfers, snapshot, model_digest(flat)


def test_a_snapshot_is_reused_only_once_nothing_is_in_transit_from_it() -> None:
    from nodes.transfers import PULLED_RECENTLY_S

    clock = FakeClock()
    transfers, snapshot, digest = served_transfers(clock)
    released = {"now": False}
    assert transfers.serve("hospital-b", digest, 0, 1, lambda frames: lambda: released["now"]) is True
    clock.now += PULLED_RECENTLY_S  # hospital-b went quiet half way
    assert transfers.reclaim() is None  # a chunk still queued in the transport: snapshot afresh
    assert transfers.counts["snapshot_fresh"] == 1
    released["now"] = True
    reclaimed = transfers.reclaim()
    assert reclaimed is not None and all(reclaimed[k] is snapshot[k] for k in snapshot)
    # From now on the old version is not served: its bytes are about to change.
    assert transfers.serve("hospital-b", digest, 0, 1, lambda frames: lambda: True) is None
    assert transfers.reclaim() is None


def test_a_snapshot_a_neighbour_pulled_whole_is_reused_at_once() -> None:
    clock = FakeClock()
    transfers, snapshot, digest = served_transfers(clock)
    for first, count in pull(transfers.offered[digest]).chunks:
        assert transfers.serve("hospital-b", digest, first, count, lambda frames: lambda: True)
    assert transfers.reclaim() is not None  # its pull is complete: nothing waits for the old bytes


def test_a_version_just_offered_is_not_overwritten_before_its_first_chunk_is_asked_for() -> None:
    from nodes.transfers import PULLED_RECENTLY_S

    clock = FakeClock()
    transfers, snapshot, digest = served_transfers(clock)
    transfers.offered_to("hospital-b", digest)
    assert transfers.reclaim() is None  # b has the offer and will ask any moment
    assert transfers.serve("hospital-b", digest, 0, 1, lambda frames: lambda: True)
    clock.now += PULLED_RECENTLY_S  # b went quiet
    assert transfers.reclaim() is not None


def test_a_version_a_neighbour_is_still_pulling_stays_served_beside_the_next() -> None:
    from nodes.transfers import PULLED_RECENTLY_S

    clock = FakeClock()
    transfers, snapshot, old = served_transfers(clock)
    assert transfers.serve("hospital-b", old, 0, 1, lambda frames: lambda: True)
    clock.now += 1.0
    assert transfers.reclaim() is None  # hospital-b is half way: the next snapshot gets new memory
    newer = sender(seed=5)
    transfers.offer(Offered(newer.flat, newer.hashes, newer.digest, {}))
    assert list(transfers.offered) == [old, newer.digest]
    assert transfers.serve("hospital-b", old, 1, 1, lambda frames: lambda: True)  # the slow neighbour goes on
    clock.now += PULLED_RECENTLY_S
    newest = sender(seed=6)
    transfers.offer(Offered(newest.flat, newest.hashes, newest.digest, {}))
    assert list(transfers.offered) == [newest.digest]  # quiet versions are let go


def test_a_send_that_was_not_queued_holds_nothing() -> None:
    from nodes.transfers import Transfers

    offered = sender()
    transfers = Transfers(offered.flat.specs, TransferSettings())
    transfers.offer(Offered(offered.flat, offered.hashes, offered.digest, {}))
    assert transfers.serve("hospital-b", offered.digest, 0, 1, lambda frames: None) is False
    assert transfers.counts["chunks_sent"] == 0
    with pytest.raises(RejectedMessage):
        transfers.serve("hospital-b", offered.digest, 99, 1, lambda frames: lambda: True)


def test_an_offer_of_a_16_gib_model_fits_the_wire_limits_a_node_sets() -> None:
    """No 16 GiB tensor is allocated: the limits follow from the specs alone."""
    from types import SimpleNamespace

    from nodes.launch import limits_for
    from swarm.codec import decode_message, encode_message
    from swarm.messages import ModelReply
    from swarm.tensors import TensorSpec, digest_from_leaves

    specs = tuple(TensorSpec(f"layer{i:02d}.weight", "bfloat16", (2**30,)) for i in range(8))  # 8 x 2 GiB
    assert sum(spec.nbytes for spec in specs) == 16 * 2**30
    hashes = tuple(bytes([i % 256]) * 32 for i in range(leaf_count(specs)))
    assert len(hashes) == 4096
    limits, zmq_settings = limits_for(SimpleNamespace(specs=specs), TransferSettings())
    entries = tuple(bytes(3000) for _ in range(1024))  # the most entries an offer carries
    frames = encode_message(bytes(32), ModelReply(1, entries, hashes), limits=limits)
    assert len(frames[0]) <= zmq_settings.max_frame_bytes <= 8 * MIB  # libzmq refuses anything larger
    assert decode_message(frames, bytes(32), limits).msg.leaves == hashes
    check_offer(specs, hashes, digest_from_leaves(specs, hashes))


def _signed_last(offered: Offered):
    """A stand-in for the verified log entry that signs `offered`'s digest."""
    from types import SimpleNamespace

    return SimpleNamespace(seq=1, body=SimpleNamespace(digest=offered.digest))


def test_a_pull_saved_at_a_stop_resumes_after_the_receiver_restarts(tmp_path) -> None:
    from nodes.transfers import Transfers
    from swarm.messages import Chunk

    offered = sender()
    incoming_dir = tmp_path / "incoming"
    before = Transfers(offered.flat.specs, TransferSettings(window=2))
    pull = before.start("hospital-b", 1, [], _signed_last(offered), offered.hashes)
    for first, count in pull.transfer.requests(0.0):
        before.accept("hospital-b", Chunk(offered.digest, first, count), offered.frames(first, count))
    kept = pull.transfer.bytes_received
    before.save(incoming_dir)  # the node stops
    assert kept > 0 and (incoming_dir / "hospital-b.part").stat().st_size == offered.flat.total_bytes

    after = Transfers(offered.flat.specs, TransferSettings(window=2))
    after.load(incoming_dir, ["hospital-b", "hospital-c"])
    pull = after.start("hospital-b", 2, [], _signed_last(offered), offered.hashes)
    assert after.counts["resumed_from_disk_bytes"] == kept == pull.transfer.bytes_received
    assert list(incoming_dir.iterdir()) == []  # read once, then gone
    done = None
    while done is None:
        for first, count in pull.transfer.requests(1.0):
            done = after.accept("hospital-b", Chunk(offered.digest, first, count), offered.frames(first, count)) or done
    assert after.counts["chunk_bytes_received"] == offered.flat.total_bytes - kept  # only the rest travelled
    assert model_digest(done.transfer.model()) == offered.digest


def test_a_saved_pull_is_trusted_only_leaf_by_leaf_and_only_for_its_version(tmp_path) -> None:
    from nodes.transfers import Transfers
    from swarm.messages import Chunk

    old, new = sender(seed=1), sender(seed=2)
    transfers = Transfers(old.flat.specs, TransferSettings(window=3))  # 3 of 6 chunks arrive
    pull = transfers.start("hospital-b", 1, [], _signed_last(old), old.hashes)
    for first, count in pull.transfer.requests(0.0):
        transfers.accept("hospital-b", Chunk(old.digest, first, count), old.frames(first, count))
    transfers.save(tmp_path)
    (tmp_path / "hospital-x.json").write_text("{}")  # a stranger's leftover: removed on load
    again = Transfers(old.flat.specs, TransferSettings())
    again.load(tmp_path, ["hospital-b"])
    assert not (tmp_path / "hospital-x.json").exists()
    pull = again.start("hospital-b", 2, [], _signed_last(new), new.hashes)  # another version now
    assert again.counts["resumed_from_disk_bytes"] == 0 and pull.transfer.bytes_received == 0
    assert list(tmp_path.iterdir()) == []
    # A file whose bytes were damaged: only the leaves that still match count.
    transfers.save(tmp_path)
    with open(tmp_path / "hospital-b.part", "r+b") as handle:
        handle.write(b"\xff" * 16)  # the first leaf
    third = Transfers(old.flat.specs, TransferSettings())
    third.load(tmp_path, ["hospital-b"])
    pull = third.start("hospital-b", 3, [], _signed_last(old), old.hashes)
    assert 0 < pull.transfer.bytes_received < transfers.pulls["hospital-b"].transfer.bytes_received
    assert 0 not in pull.transfer.done


def test_a_pull_that_cannot_be_saved_costs_only_its_resume(tmp_path, caplog) -> None:
    from nodes.transfers import Transfers
    from swarm.messages import Chunk

    offered = sender()
    transfers = Transfers(offered.flat.specs, TransferSettings())
    pull = transfers.start("hospital-b", 1, [], _signed_last(offered), offered.hashes)
    first, count = pull.transfer.requests(0.0)[0]
    transfers.accept("hospital-b", Chunk(offered.digest, first, count), offered.frames(first, count))
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the incoming directory should be")
    transfers.save(blocked)
    assert "cannot save the pull from hospital-b" in caplog.text and str(blocked) in caplog.text


def test_a_request_that_could_not_be_sent_is_asked_again_without_a_retry() -> None:
    offered = sender()
    incoming = pull(offered, window=2, retries=0)
    first_two = incoming.requests(0.0)
    for first, _ in reversed(first_two):
        incoming.not_sent(first)
    assert incoming.requests(1.0) == first_two  # same order, and retries=0 did not stall it


def test_a_sites_transfer_table_round_trips_and_mistakes_name_the_field(tmp_path) -> None:
    from nodes.site import SiteConfig
    from swarm.config import read_toml
    from swarm.errors import ConfigError

    base = {"site": {"name": "hospital-a"}, "node": {"endpoint": "tcp://127.0.0.1:7000"}}
    config = SiteConfig.from_dict(base | {"transfer": {"chunk_mib": 16, "window": 8, "chunk_timeout": 120, "retries": 10}})
    assert config.transfer == TransferSettings(chunk_bytes=16 * MIB, window=8, chunk_timeout=120.0, retries=10)
    (tmp_path / "site.toml").write_text(config.to_toml())
    assert SiteConfig.from_dict(read_toml(tmp_path / "site.toml")).transfer == config.transfer
    assert "[transfer]" not in SiteConfig.from_dict(base).to_toml()  # defaults are not written out
    for table, field in (({"chunk_mib": 0}, "transfer.chunk_mib"), ({"chunk_mib": 65}, "transfer.chunk_mib"),
                         ({"window": 0}, "transfer.window"), ({"chunk_timeout": -1}, "transfer.chunk_timeout"),
                         ({"speed": 1}, "transfer.speed")):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            SiteConfig.from_dict(base | {"transfer": table})
