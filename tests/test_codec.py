from __future__ import annotations

import hashlib
import os
import pickle
import string
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarm.codec import Decoded, Limits, decode_message, encode_message
from swarm.errors import RejectedMessage
from swarm.messages import (
    MAX_CHUNK_LEAVES,
    MAX_ENTRIES,
    MAX_LEAVES,
    MESSAGE_TYPES,
    Chunk,
    ChunkRefusal,
    ChunkRequest,
    Evidence,
    ManifestUpdate,
    Message,
    ModelPush,
    ModelReply,
    ModelRequest,
    PushAck,
    Refusal,
    VersionReply,
    VersionRequest,
    from_body,
    to_body,
)
from swarm.tensors import DIGEST_CHUNK_BYTES, DTYPES, FlatModel, TensorSpec, leaf_hashes, model_digest, rebuild_state
from swarm.transfer import Incoming, Offered, TransferSettings

FED = hashlib.sha256(b"test federation").digest()
OTHER_FED = hashlib.sha256(b"another federation").digest()

uints = st.integers(0, 2**63 - 1)
entries = st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=4).map(tuple)
reasons = st.text(alphabet=string.ascii_letters + string.digits + "_ -.:", min_size=1, max_size=200)
hashes = st.binary(min_size=32, max_size=32)
leaves = st.lists(hashes, min_size=1, max_size=4).map(tuple)
chunk_counts = st.integers(1, MAX_CHUNK_LEAVES)
messages = st.one_of(
    st.builds(VersionRequest, uints),
    st.builds(VersionReply, uints, uints, uints, st.booleans()),
    st.builds(ModelRequest, uints, uints),
    st.builds(ModelReply, uints, entries, leaves),
    st.builds(ModelPush, entries, leaves),
    st.builds(ChunkRequest, hashes, uints, chunk_counts),
    st.builds(Chunk, hashes, uints, chunk_counts),
    st.builds(ChunkRefusal, hashes, reasons),
    st.builds(PushAck, uints),
    st.builds(Evidence, st.lists(st.binary(min_size=1, max_size=64), min_size=2, max_size=2).map(tuple)),
    st.builds(ManifestUpdate, st.binary(min_size=1, max_size=64), st.binary(min_size=1, max_size=64)),
    st.builds(Refusal, uints, reasons),
)


@st.composite
def with_data(draw: st.DrawFn, msgs: st.SearchStrategy[Message] = messages) -> tuple[Message, tuple[bytes, ...]]:
    """A message and its data frames: one per leaf for a Chunk, none for any other kind."""
    msg = draw(msgs)
    count = msg.count if msg.DATA_FRAMES else 0  # type: ignore[attr-defined]
    return msg, tuple(draw(st.lists(st.binary(max_size=64), min_size=count, max_size=count)))


@st.composite
def flat_models(draw: st.DrawFn) -> FlatModel:
    names = sorted(draw(st.sets(st.text(min_size=1, max_size=8).filter(lambda s: "\0" not in s), min_size=1, max_size=4)))
    specs, buffers = [], []
    for name in names:
        dtype = draw(st.sampled_from(sorted(DTYPES)))
        shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
        spec = TensorSpec(name, dtype, shape)
        data = bytes(spec.nbytes) if dtype == "bool" else draw(st.binary(min_size=spec.nbytes, max_size=spec.nbytes))
        specs.append(spec)
        buffers.append(data)
    return FlatModel(tuple(specs), tuple(buffers))


def sample_model() -> FlatModel:
    return FlatModel(
        (TensorSpec("a", "float32", (2, 3)), TensorSpec("b", "int8", (4,))),
        (bytes(range(24)), bytes(range(4))),
    )


DIGEST = model_digest(sample_model())
LEAF = leaf_hashes(sample_model())[0]


def sample_offer() -> ModelReply:
    return ModelReply(7, (b"entry-1", b"entry-2"), tuple(leaf_hashes(sample_model())))


def sample_chunk() -> tuple[Chunk, tuple[bytes, ...]]:
    """Both leaves of sample_model() (each tensor is one leaf), as a sender serves them."""
    return Chunk(DIGEST, 0, 2), tuple(bytes(b) for b in sample_model().buffers)


def as_network(frames: list[Any]) -> list[bytes]:
    """What a peer receives: plain bytes per frame."""
    return [bytes(frame) for frame in frames]


def assert_rejected(frames: list[Any], reason: str, limits: Limits = Limits()) -> None:
    # pytest.raises(RejectedMessage) lets any other exception fail the test.
    with pytest.raises(RejectedMessage) as info:
        decode_message(frames, FED, limits)
    assert info.value.reason == reason, info.value


def header(**overrides: Any) -> dict[str, Any]:
    base = {"v": 2, "fed": FED, "kind": "version_req", "body": {"req": 1}}
    base.update(overrides)
    return base


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


# A valid body of each kind the hostile cases below change one field of.
BODIES: dict[str, dict[str, Any]] = {
    "model_reply": {"req": 1, "entries": [b"e"], "leaves": [LEAF]},
    "model_push": {"entries": [b"e"], "leaves": [LEAF]},
    "chunk_req": {"digest": DIGEST, "first": 0, "count": 1},
    "chunk": {"digest": DIGEST, "first": 0, "count": 1},
    "chunk_refusal": {"digest": DIGEST, "reason": "version_gone"},
}


def frames_of(kind: str, *data: bytes, **body: Any) -> list[bytes]:
    """A `kind` message whose body is BODIES[kind] with `body` swapped in, then `data` frames."""
    return [pack(header(kind=kind, body=BODIES[kind] | body)), *data]


# -- round trips ---------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=with_data())
def test_round_trip_every_message(case: tuple[Message, tuple[bytes, ...]]) -> None:
    msg, data = case
    decoded = decode_message(as_network(encode_message(FED, msg, data)), FED)
    assert decoded == Decoded(msg, data)
    assert from_body(msg.KIND, to_body(msg)) == msg


@settings(max_examples=30, deadline=None)
@given(model=flat_models())
def test_a_model_round_trips_in_chunks_through_zmq_frames(model: FlatModel) -> None:
    # Tensors travel as the leaves of Chunks: serve every chunk a receiver asks for
    # as zmq frames, and the leaves it decodes rebuild the model.
    model_leaves, digest = leaf_hashes(model), model_digest(model)
    served = Offered(model, model_leaves, digest)
    incoming = Incoming(model.specs, model_leaves, digest, TransferSettings())
    while not incoming.complete:
        for first, count in incoming.requests(0.0):
            sent = encode_message(FED, Chunk(digest, first, count), served.frames(first, count))
            decoded = decode_message([zmq.Frame(bytes(f)) for f in sent], FED)
            assert incoming.accept(decoded.msg.first, decoded.msg.count, decoded.data)  # type: ignore[attr-defined]
    assert incoming.model() == model
    for spec, tensor in zip(model.specs, rebuild_state(incoming.model()).values()):
        assert tuple(tensor.shape) == spec.shape


def test_round_trip_over_a_real_socket_without_copies() -> None:
    ctx = zmq.Context.instance()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    msg, data = sample_chunk()
    try:
        a.bind("inproc://codec-test")
        b.connect("inproc://codec-test")
        a.send_multipart(encode_message(FED, msg, data), copy=False)
        decoded = decode_message(b.recv_multipart(copy=False), FED)
    finally:
        a.close(linger=0)
        b.close(linger=0)
    assert decoded == Decoded(msg, data)


def test_encode_and_decode_share_data_frame_memory() -> None:
    published = bytearray(range(24))
    leaf = memoryview(published)[:16]  # a sender's leaves are views of its published model
    frames = encode_message(FED, Chunk(DIGEST, 0, 1), [leaf])
    received = [bytes(frames[0]), bytearray(frames[1])]
    published[0] = 99
    assert frames[1][0] == 99  # the outgoing frame is a view of the model
    decoded = decode_message(received, FED)
    received[1][1] = 42
    assert decoded.data[0][1] == 42  # a view of the frame
    frame = zmq.Frame(bytes(16))
    assert decode_message([frames[0], frame], FED).data[0].obj is frame.buffer.obj  # zmq's buffer, not a copy


def test_encoder_refuses_what_a_peer_would_reject() -> None:
    msg, data = sample_chunk()
    with pytest.raises(ValueError, match="one frame per leaf"):
        encode_message(FED, msg)
    with pytest.raises(ValueError, match="one frame per leaf"):
        encode_message(FED, msg, data[:1])
    with pytest.raises(ValueError, match="no data frames"):
        encode_message(FED, VersionRequest(1), data[:1])
    with pytest.raises(ValueError, match="no data frames"):
        encode_message(FED, sample_offer(), data)  # an offer carries hashes, never tensors
    with pytest.raises(ValueError, match="federation"):
        encode_message(FED[:31], VersionRequest(1))
    with pytest.raises(ValueError, match="wire message"):
        encode_message(FED, "hello")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="header_too_large"):
        encode_message(FED, Refusal(1, "x" * 200), limits=Limits(max_header_bytes=64))
    with pytest.raises(ValueError, match="frame_too_large"):
        encode_message(FED, msg, data, limits=Limits(max_frame_bytes=23))
    with pytest.raises(ValueError, match="too_many_frames"):
        encode_message(FED, msg, data, limits=Limits(max_frames=2))
    # A leaf is at most 4 MiB: one byte more is refused under the default limits too.
    encode_message(FED, Chunk(DIGEST, 0, 1), [bytes(DIGEST_CHUNK_BYTES)])
    with pytest.raises(ValueError, match="frame_too_large"):
        encode_message(FED, Chunk(DIGEST, 0, 1), [bytes(DIGEST_CHUNK_BYTES + 1)])


@pytest.mark.parametrize(
    "make",
    [
        lambda: VersionRequest(True),
        lambda: VersionRequest(-1),
        lambda: VersionRequest(2**63),
        lambda: VersionReply(1, 1, 1, 1),
        lambda: ModelReply(1, (), (LEAF,)),
        lambda: ModelReply(1, [b"x"], (LEAF,)),
        lambda: ModelReply(1, (b"",), (LEAF,)),
        lambda: ModelReply(1, (b"x",), ()),
        lambda: ModelReply(1, (b"x",), [LEAF]),
        lambda: ModelReply(1, (b"x",), (LEAF[:31],)),
        lambda: ModelReply(1, (b"x",), (LEAF, LEAF + b"\0")),
        lambda: ModelReply(1, (b"x",), (LEAF.hex()[:32],)),
        lambda: ModelReply(1, (b"x",), (LEAF,) * (MAX_LEAVES + 1)),
        lambda: ModelPush((), (LEAF,)),
        lambda: ModelPush((b"x",), ()),
        lambda: ChunkRequest(DIGEST[:31], 0, 1),
        lambda: ChunkRequest(DIGEST, 0, 0),
        lambda: ChunkRequest(DIGEST, 0, MAX_CHUNK_LEAVES + 1),
        lambda: ChunkRequest(DIGEST, -1, 1),
        lambda: ChunkRequest(DIGEST, 0, True),
        lambda: Chunk(DIGEST + b"\0", 0, 1),
        lambda: Chunk(DIGEST, 0, 0),
        lambda: Chunk(DIGEST, 0, MAX_CHUNK_LEAVES + 1),
        lambda: Chunk(DIGEST, True, 1),
        lambda: ChunkRefusal(b"", "version_gone"),
        lambda: ChunkRefusal(DIGEST, ""),
        lambda: ChunkRefusal(DIGEST, "a\x1b[2J"),
        lambda: PushAck(-1),
        lambda: Refusal(1, ""),
        lambda: Refusal(1, "line\nbreak"),
    ],
)
def test_messages_refuse_invalid_fields(make: Any) -> None:
    with pytest.raises(ValueError):
        make()


def test_message_table() -> None:
    assert set(MESSAGE_TYPES) == {
        "version_req", "version_reply", "model_req", "model_reply", "model_push", "chunk_req", "chunk", "chunk_refusal",
        "push_ack", "evidence", "manifest", "refusal",
    }
    assert [kind for kind, cls in MESSAGE_TYPES.items() if cls.DATA_FRAMES] == ["chunk"]


# -- hostile input -------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=4))
def test_random_frames_are_rejected(frames: list[bytes]) -> None:
    with pytest.raises(RejectedMessage):
        decode_message(frames, FED)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8) | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "fed", "kind", "body", "tensors", "x"]), msgpack_values))
def test_random_headers_are_rejected(fields: dict[str, Any]) -> None:
    with pytest.raises(RejectedMessage):
        decode_message([pack(fields), b"\0" * 4], FED)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_corrupted_valid_messages_decode_or_are_rejected(data: st.DataObject) -> None:
    msg, leaves_data = data.draw(st.sampled_from([(sample_offer(), ()), sample_chunk()]))
    frames = as_network(encode_message(FED, msg, leaves_data))
    raw = bytearray(frames[0])
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        decoded = decode_message([bytes(raw), *frames[1:]], FED)
    except RejectedMessage:
        return
    assert type(decoded.msg) is type(msg)  # a flip can leave a valid message
    assert decoded.data == leaves_data


def nested(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"


def malicious_pickle() -> bytes:
    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, ("echo pwned",))

    return pickle.dumps(Exploit())


MAX_FRAME_BYTES = Limits().max_frame_bytes
# A whole message of wire version 1: the model rode inside, its tensors declared in the header.
VERSION_1_REPLY = {"v": 1, "fed": FED, "kind": "model_reply", "body": {"req": 1, "entries": [b"e"]}, "tensors": [["a", "uint8", [1]]]}

HOSTILE: list[tuple[str, Any, str]] = [
    ("no_frames", lambda: [], "no_frames"),
    ("too_many_frames", lambda: [pack(header())] + [b""] * 17, "too_many_frames"),
    # Frames are counted before the header says how many a chunk has.
    ("chunk_of_17_leaves", lambda: frames_of("chunk", *[b"\0"] * 17, count=17), "too_many_frames"),
    # Content that would be bad msgpack shows that size is checked before parsing.
    ("header_over_limit", lambda: [b"\xc1" * (Limits().max_header_bytes + 1)], "header_too_large"),
    ("frame_over_limit", lambda: [b"\xc1", bytes(MAX_FRAME_BYTES + 1)], "frame_too_large"),
    ("chunk_leaf_over_limit", lambda: frames_of("chunk", bytes(MAX_FRAME_BYTES + 1)), "frame_too_large"),
    ("truncated_header", lambda: [pack(header())[:-1]], "bad_msgpack"),
    ("empty_header", lambda: [b""], "bad_msgpack"),
    ("trailing_bytes", lambda: [pack(header()) + b"\x00"], "bad_msgpack"),
    ("ext_type", lambda: [pack(header(body={"req": msgpack.ExtType(5, b"x")}))], "bad_msgpack"),
    ("timestamp_ext", lambda: [pack(header(body={"req": msgpack.Timestamp(1, 0)}))], "bad_msgpack"),
    ("deep_nesting", lambda: [nested(100_000)], "bad_msgpack"),
    ("array_bomb", lambda: [b"\xdd\xff\xff\xff\xff"], "bad_msgpack"),
    ("map_bomb", lambda: [b"\xdf\xff\xff\xff\xff"], "bad_msgpack"),
    ("bin_bomb", lambda: [b"\xc6\xff\xff\xff\xff"], "bad_msgpack"),
    ("str_bomb", lambda: [b"\xdb\xff\xff\xff\xff"], "bad_msgpack"),
    ("bad_utf8", lambda: [b"\x81\xa1v\xa2\xff\xfe"], "bad_msgpack"),
    ("int_map_key", lambda: [pack({1: 1})], "bad_msgpack"),
    ("pickle_header", lambda: [malicious_pickle()], "bad_msgpack"),
    ("pickle_protocol_0", lambda: [pickle.dumps({"v": 2}, protocol=0)], "bad_msgpack"),
    # msgpack's array limit (MAX_LEAVES) stops this before the leaves check would.
    ("too_many_leaves", lambda: frames_of("model_reply", leaves=[LEAF] * (MAX_LEAVES + 1)), "bad_msgpack"),
    ("header_is_list", lambda: [pack([2, FED])], "bad_header"),
    ("header_no_version", lambda: [pack({"fed": FED})], "bad_header"),
    ("extra_header_key", lambda: [pack(header(x=1))], "bad_header"),
    ("missing_header_key", lambda: [pack({k: v for k, v in header().items() if k != "body"})], "bad_header"),
    ("tensors_key_of_version_1", lambda: [pack(header(tensors=[]))], "bad_header"),
    ("short_fed", lambda: [pack(header(fed=FED[:31]))], "bad_header"),
    ("fed_as_str", lambda: [pack(header(fed=FED.hex()))], "bad_header"),
    ("kind_not_str", lambda: [pack(header(kind=3))], "bad_header"),
    ("wrong_version", lambda: [pack(header(v=3))], "wrong_version"),
    ("version_1", lambda: [pack(header(v=1))], "wrong_version"),
    ("version_1_model_reply", lambda: [pack(VERSION_1_REPLY), b"\0"], "wrong_version"),
    ("version_as_bool", lambda: [pack(header(v=True))], "wrong_version"),
    ("version_as_str", lambda: [pack(header(v="2"))], "wrong_version"),
    ("wrong_federation", lambda: [pack(header(fed=OTHER_FED))], "wrong_federation"),
    ("unknown_kind", lambda: [pack(header(kind="exec"))], "unknown_kind"),
    ("bool_for_int", lambda: [pack(header(body={"req": True}))], "bad_body"),
    ("float_for_int", lambda: [pack(header(body={"req": 1.0}))], "bad_body"),
    ("negative_int", lambda: [pack(header(body={"req": -1}))], "bad_body"),
    ("int_too_large", lambda: [pack(header(body={"req": 2**63}))], "bad_body"),
    ("missing_field", lambda: [pack(header(body={}))], "bad_body"),
    ("extra_field", lambda: [pack(header(body={"req": 1, "x": 2}))], "bad_body"),
    ("bytes_field_name", lambda: [pack(header(body={b"req": 1}))], "bad_body"),
    ("body_not_map", lambda: [pack(header(body=[1]))], "bad_body"),
    ("int_for_bool", lambda: [pack(header(kind="version_reply", body={"req": 1, "seq": 1, "samples": 1, "done": 1}))], "bad_body"),
    ("reason_too_long", lambda: [pack(header(kind="refusal", body={"req": 1, "reason": "x" * 201}))], "bad_body"),
    ("reason_control_chars", lambda: [pack(header(kind="refusal", body={"req": 1, "reason": "a\x1b[2J"}))], "bad_body"),
    ("entry_not_bytes", lambda: frames_of("model_reply", entries=["e"]), "bad_body"),
    ("entry_too_large", lambda: frames_of("model_reply", entries=[bytes(256 * 1024 + 1)]), "bad_body"),
    ("too_many_entries", lambda: frames_of("model_reply", entries=[b"e"] * 1025), "bad_body"),
    ("no_entries", lambda: frames_of("model_reply", entries=[]), "bad_body"),
    ("leaf_hash_31_bytes", lambda: frames_of("model_reply", leaves=[LEAF[:31]]), "bad_body"),
    ("leaf_hash_33_bytes", lambda: frames_of("model_reply", leaves=[LEAF, LEAF + b"\0"]), "bad_body"),
    ("leaf_hash_as_str", lambda: frames_of("model_reply", leaves=[LEAF.hex()[:32]]), "bad_body"),
    ("leaves_not_list", lambda: frames_of("model_reply", leaves=LEAF), "bad_body"),
    ("no_leaves", lambda: frames_of("model_reply", leaves=[]), "bad_body"),
    ("push_leaf_hash_31_bytes", lambda: frames_of("model_push", leaves=[LEAF[:31]]), "bad_body"),
    ("push_without_leaves", lambda: [pack(header(kind="model_push", body={"entries": [b"e"]}))], "bad_body"),  # a version 1 body
    ("chunk_req_count_0", lambda: frames_of("chunk_req", count=0), "bad_body"),
    ("chunk_req_count_17", lambda: frames_of("chunk_req", count=17), "bad_body"),
    ("chunk_req_count_bool", lambda: frames_of("chunk_req", count=True), "bad_body"),
    ("chunk_req_first_negative", lambda: frames_of("chunk_req", first=-1), "bad_body"),
    ("chunk_req_digest_31_bytes", lambda: frames_of("chunk_req", digest=DIGEST[:31]), "bad_body"),
    ("chunk_req_digest_as_str", lambda: frames_of("chunk_req", digest=DIGEST.hex()), "bad_body"),
    # The body is checked before the frames are counted against it.
    ("chunk_count_0", lambda: frames_of("chunk", count=0), "bad_body"),
    ("chunk_count_17", lambda: frames_of("chunk", *[b"\0"] * 16, count=17), "bad_body"),  # 17 frames: within the limit
    ("chunk_digest_33_bytes", lambda: frames_of("chunk", b"\0", digest=DIGEST + b"\0"), "bad_body"),
    ("chunk_first_over_int64", lambda: frames_of("chunk", b"\0", first=2**63), "bad_body"),
    ("chunk_refusal_empty_digest", lambda: frames_of("chunk_refusal", digest=b""), "bad_body"),
    ("chunk_refusal_control_chars", lambda: frames_of("chunk_refusal", reason="a\x1b[2J"), "bad_body"),
    ("frames_on_version_req", lambda: [pack(header()), b"\0"], "unexpected_frames"),
    ("empty_frame_on_version_req", lambda: [pack(header()), b""], "unexpected_frames"),
    ("frames_on_an_offer", lambda: frames_of("model_reply", b"\0" * 4), "unexpected_frames"),  # offers carry only hashes
    ("frames_on_a_push", lambda: frames_of("model_push", b"\0" * 4), "unexpected_frames"),
    ("frames_on_chunk_req", lambda: frames_of("chunk_req", b"\0"), "unexpected_frames"),
    ("frames_on_chunk_refusal", lambda: frames_of("chunk_refusal", b"\0"), "unexpected_frames"),
    ("chunk_without_frames", lambda: frames_of("chunk"), "bad_chunk"),
    ("chunk_fewer_frames_than_count", lambda: frames_of("chunk", b"\0", b"\0", count=3), "bad_chunk"),
    ("chunk_more_frames_than_count", lambda: frames_of("chunk", b"\0", b"\0"), "bad_chunk"),
    ("chunk_of_16_with_15_frames", lambda: frames_of("chunk", *[b"\0"] * 15, count=16), "bad_chunk"),
]


@pytest.mark.parametrize("make, reason", [(make, reason) for _, make, reason in HOSTILE], ids=[case for case, _, _ in HOSTILE])
def test_hostile_input_is_rejected(make: Any, reason: str) -> None:
    assert_rejected(make(), reason)


def test_hostile_cases_start_from_a_valid_message() -> None:
    # Guards the table above: each case differs from these by the one thing it tests.
    assert decode_message([pack(header())], FED).msg == VersionRequest(1)
    assert decode_message(frames_of("model_reply"), FED).msg == ModelReply(1, (b"e",), (LEAF,))
    assert decode_message(frames_of("model_push"), FED).msg == ModelPush((b"e",), (LEAF,))
    assert decode_message(frames_of("chunk_req"), FED).msg == ChunkRequest(DIGEST, 0, 1)
    assert decode_message(frames_of("chunk_refusal"), FED).msg == ChunkRefusal(DIGEST, "version_gone")
    assert decode_message(frames_of("chunk", b"\0"), FED) == Decoded(Chunk(DIGEST, 0, 1), (b"\0",))
    full = [bytes([i]) for i in range(MAX_CHUNK_LEAVES)]  # the most frames a message may have
    assert decode_message(frames_of("chunk", *full, count=MAX_CHUNK_LEAVES), FED).data == tuple(full)
    decoded = decode_message(frames_of("chunk", bytes(MAX_FRAME_BYTES)), FED)  # a leaf at the limit
    assert len(decoded.data[0]) == MAX_FRAME_BYTES


def test_pickle_header_is_never_unpickled(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("unpickled a network header")

    payload = malicious_pickle()
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(os, "system", forbidden)
    assert_rejected([payload], "bad_msgpack")


@pytest.mark.parametrize(
    "limits, reason",
    [
        (Limits(max_frames=2), "too_many_frames"),
        (Limits(max_header_bytes=32), "header_too_large"),
        (Limits(max_frame_bytes=23), "frame_too_large"),
        (Limits(max_map_len=3), "bad_msgpack"),  # the header is a map of 4
        (Limits(max_header_objects=8), "bad_msgpack"),  # the header and body: 4 + 3 keys, 2 maps
    ],
)
def test_limits_are_enforced(limits: Limits, reason: str) -> None:
    frames = as_network(encode_message(FED, *sample_chunk()))
    decode_message(frames, FED)  # fine under the default limits
    assert_rejected(frames, reason, limits)


def test_frame_sizes_are_checked_before_the_header_is_parsed() -> None:
    # An oversized leaf is refused as such, whatever the header says or whether it parses.
    limits = Limits(max_frame_bytes=100)
    assert_rejected(frames_of("chunk", bytes(101), count=2), "frame_too_large", limits)
    assert_rejected([b"\xc1", bytes(101)], "frame_too_large", limits)
    assert_rejected(frames_of("chunk", bytes(100), count=2), "bad_chunk", limits)


def test_wrong_federation_on_an_offer_and_a_chunk() -> None:
    assert_rejected(as_network(encode_message(OTHER_FED, sample_offer())), "wrong_federation")
    assert_rejected(as_network(encode_message(OTHER_FED, *sample_chunk())), "wrong_federation")


def test_limits_default_values() -> None:
    limits = Limits()
    assert (limits.max_header_bytes, limits.max_frames, limits.max_frame_bytes) == (16 * 2**20, 17, 4 * 2**20)
    assert (limits.max_map_len, limits.max_header_objects) == (64, 2**17)
    # The frame limits are one chunk's worth of leaves, whatever the model's size.
    assert limits.max_frames == 1 + MAX_CHUNK_LEAVES and limits.max_frame_bytes == DIGEST_CHUNK_BYTES


def test_a_full_offer_of_dense_graph_entries_fits_the_default_limits() -> None:
    # MAX_ENTRIES log entries of a few KB each (an entry on a dense graph lists many parents)
    # once overflowed the 1 MiB header limit, so a node could not answer a far-behind peer.
    # An offer adds the leaf hashes of the largest model, MAX_LEAVES of them (2 MiB).
    big_entries = tuple(bytes([i % 251]) * 6000 for i in range(MAX_ENTRIES))
    big_leaves = tuple(i.to_bytes(32, "big") for i in range(MAX_LEAVES))
    for big in (ModelReply(3, big_entries, big_leaves), ModelPush(big_entries, big_leaves)):
        frames = encode_message(FED, big)
        assert len(frames) == 1 and len(frames[0]) > 2**20
        assert decode_message(as_network(frames), FED).msg == big
        # Past the limit, the encoder still refuses (the node catches the ValueError).
        with pytest.raises(ValueError, match="header_too_large"):
            encode_message(FED, big, limits=Limits(max_header_bytes=2**20))


def test_one_definition_of_shared_limits_and_hooks() -> None:
    import inspect

    import swarm.codec
    import swarm.log
    import swarm.messages

    assert swarm.messages.MAX_ENTRY_BYTES is swarm.log.MAX_ENTRY_BYTES
    assert "MAX_ENTRY_BYTES =" not in inspect.getsource(swarm.messages)
    assert not hasattr(swarm.codec, "_refuse_ext") and not hasattr(swarm.log, "_refuse_ext")
    assert swarm.codec.refuse_ext is swarm.log.refuse_ext


def test_zero_length_ext_type_is_refused() -> None:
    assert_rejected([pack(header(body={"req": msgpack.ExtType(5, b"")}))], "bad_msgpack")
