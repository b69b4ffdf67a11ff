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
    MESSAGE_TYPES,
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
from swarm.tensors import DTYPES, FlatModel, TensorSpec, rebuild_state

FED = hashlib.sha256(b"test federation").digest()
OTHER_FED = hashlib.sha256(b"another federation").digest()

uints = st.integers(0, 2**63 - 1)
entries = st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=4).map(tuple)
reasons = st.text(alphabet=string.ascii_letters + string.digits + "_ -.:", min_size=1, max_size=200)
messages = st.one_of(
    st.builds(VersionRequest, uints),
    st.builds(VersionReply, uints, uints, uints, st.booleans()),
    st.builds(ModelRequest, uints, uints),
    st.builds(ModelReply, uints, entries),
    st.builds(Refusal, uints, reasons),
)


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


def sample_reply() -> ModelReply:
    return ModelReply(7, (b"entry-1", b"entry-2"))


def as_network(frames: list[Any]) -> list[bytes]:
    """What a peer receives: plain bytes per frame."""
    return [bytes(frame) for frame in frames]


def assert_rejected(frames: list[Any], reason: str, limits: Limits = Limits()) -> None:
    # pytest.raises(RejectedMessage) lets any other exception fail the test.
    with pytest.raises(RejectedMessage) as info:
        decode_message(frames, FED, limits)
    assert info.value.reason == reason, info.value


def header(**overrides: Any) -> dict[str, Any]:
    base = {"v": 1, "fed": FED, "kind": "version_req", "body": {"req": 1}, "tensors": []}
    base.update(overrides)
    return base


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def reply_frames(tensors: list[Any], *frames: bytes) -> list[bytes]:
    body = {"req": 1, "entries": [b"e"]}
    return [pack(header(kind="model_reply", body=body, tensors=tensors)), *frames]


# -- round trips ---------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msg=messages, model=flat_models())
def test_round_trip_every_message(msg: Message, model: FlatModel) -> None:
    attached = model if msg.CARRIES_MODEL else None
    decoded = decode_message(as_network(encode_message(FED, msg, attached)), FED)
    assert decoded == Decoded(msg, attached)
    assert from_body(msg.KIND, to_body(msg)) == msg


@settings(max_examples=30, deadline=None)
@given(model=flat_models())
def test_round_trip_through_zmq_frames(model: FlatModel) -> None:
    frames = [zmq.Frame(bytes(f)) for f in encode_message(FED, sample_reply(), model)]
    decoded = decode_message(frames, FED)
    assert decoded.model == model
    for spec, tensor in zip(model.specs, rebuild_state(decoded.model).values()):
        assert tuple(tensor.shape) == spec.shape


def test_round_trip_over_a_real_socket_without_copies() -> None:
    ctx = zmq.Context.instance()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        a.bind("inproc://codec-test")
        b.connect("inproc://codec-test")
        model = sample_model()
        a.send_multipart(encode_message(FED, sample_reply(), model), copy=False)
        decoded = decode_message(b.recv_multipart(copy=False), FED)
    finally:
        a.close(linger=0)
        b.close(linger=0)
    assert decoded == Decoded(sample_reply(), model)


def test_encode_and_decode_share_tensor_memory() -> None:
    data = bytearray(range(24))
    model = FlatModel((TensorSpec("a", "float32", (2, 3)),), (data,))
    frames = encode_message(FED, sample_reply(), model)
    received = [bytes(frames[0]), bytearray(frames[1])]
    data[0] = 99
    assert frames[1][0] == 99  # the outgoing frame is a view of the model
    decoded = decode_message(received, FED)
    received[1][1] = 42
    assert decoded.model is not None and decoded.model.buffers[0][1] == 42  # a view of the frame


def test_encoder_refuses_what_a_peer_would_reject() -> None:
    with pytest.raises(ValueError, match="needs a model"):
        encode_message(FED, sample_reply())
    with pytest.raises(ValueError, match="cannot carry"):
        encode_message(FED, VersionRequest(1), sample_model())
    with pytest.raises(ValueError, match="federation"):
        encode_message(FED[:31], VersionRequest(1))
    with pytest.raises(ValueError, match="wire message"):
        encode_message(FED, "hello")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="header_too_large"):
        encode_message(FED, Refusal(1, "x" * 200), limits=Limits(max_header_bytes=64))
    with pytest.raises(ValueError, match="model_too_large"):
        encode_message(FED, sample_reply(), sample_model(), limits=Limits(max_model_bytes=10))


@pytest.mark.parametrize(
    "make",
    [
        lambda: VersionRequest(True),
        lambda: VersionRequest(-1),
        lambda: VersionRequest(2**63),
        lambda: VersionReply(1, 1, 1, 1),
        lambda: ModelReply(1, ()),
        lambda: ModelReply(1, [b"x"]),
        lambda: ModelReply(1, (b"",)),
        lambda: ModelPush(()),
        lambda: PushAck(-1),
        lambda: Refusal(1, ""),
        lambda: Refusal(1, "line\nbreak"),
    ],
)
def test_messages_refuse_invalid_fields(make: Any) -> None:
    with pytest.raises(ValueError):
        make()


def test_message_table() -> None:
    assert set(MESSAGE_TYPES) == {"version_req", "version_reply", "model_req", "model_reply", "model_push", "push_ack", "evidence", "manifest", "refusal"}
    assert sorted(kind for kind, cls in MESSAGE_TYPES.items() if cls.CARRIES_MODEL) == ["model_push", "model_reply"]


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
    frames = as_network(encode_message(FED, sample_reply(), sample_model()))
    raw = bytearray(frames[0])
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        decoded = decode_message([bytes(raw), *frames[1:]], FED)
    except RejectedMessage:
        return
    assert isinstance(decoded.msg, ModelReply)  # a flip can leave a valid message


def nested(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"


def malicious_pickle() -> bytes:
    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, ("echo pwned",))

    return pickle.dumps(Exploit())


HOSTILE: list[tuple[str, Any, str]] = [
    ("no_frames", lambda: [], "no_frames"),
    ("too_many_frames", lambda: [pack(header())] + [b""] * 4097, "too_many_frames"),
    # Content that would be bad msgpack shows that size is checked before parsing.
    ("header_over_limit", lambda: [b"\xc1" * (Limits().max_header_bytes + 1)], "header_too_large"),
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
    ("pickle_protocol_0", lambda: [pickle.dumps({"v": 1}, protocol=0)], "bad_msgpack"),
    ("header_is_list", lambda: [pack([1, FED])], "bad_header"),
    ("header_no_version", lambda: [pack({"fed": FED})], "bad_header"),
    ("extra_header_key", lambda: [pack(header(x=1))], "bad_header"),
    ("missing_header_key", lambda: [pack({k: v for k, v in header().items() if k != "tensors"})], "bad_header"),
    ("short_fed", lambda: [pack(header(fed=FED[:31]))], "bad_header"),
    ("fed_as_str", lambda: [pack(header(fed=FED.hex()))], "bad_header"),
    ("kind_not_str", lambda: [pack(header(kind=3))], "bad_header"),
    ("tensors_not_list", lambda: [pack(header(tensors={}))], "bad_header"),
    ("wrong_version", lambda: [pack(header(v=2))], "wrong_version"),
    ("version_as_bool", lambda: [pack(header(v=True))], "wrong_version"),
    ("version_as_str", lambda: [pack(header(v="1"))], "wrong_version"),
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
    ("entry_not_bytes", lambda: [pack(header(kind="model_reply", body={"req": 1, "entries": ["e"]}))], "bad_body"),
    ("entry_too_large", lambda: [pack(header(kind="model_reply", body={"req": 1, "entries": [bytes(256 * 1024 + 1)]}))], "bad_body"),
    ("too_many_entries", lambda: [pack(header(kind="model_reply", body={"req": 1, "entries": [b"e"] * 1025}))], "bad_body"),
    ("no_entries", lambda: [pack(header(kind="model_reply", body={"req": 1, "entries": []}))], "bad_body"),
    ("unknown_dtype", lambda: reply_frames([["a", "complex64", [1]]], b"\0" * 8), "bad_tensor_spec"),
    ("negative_dim", lambda: reply_frames([["a", "uint8", [-1]]], b""), "bad_tensor_spec"),
    ("dim_over_int64", lambda: reply_frames([["a", "uint8", [2**64 - 1]]], b""), "bad_tensor_spec"),
    ("bool_dim", lambda: reply_frames([["a", "uint8", [True]]], b"\0"), "bad_tensor_spec"),
    ("too_many_dims", lambda: reply_frames([["a", "uint8", [1] * 9]], b"\0"), "bad_tensor_spec"),
    ("empty_name", lambda: reply_frames([["", "uint8", [1]]], b"\0"), "bad_tensor_spec"),
    ("nul_in_name", lambda: reply_frames([["a\0b", "uint8", [1]]], b"\0"), "bad_tensor_spec"),
    ("spec_not_triple", lambda: reply_frames([["a", "uint8"]], b"\0"), "bad_tensor_spec"),
    ("unsorted_tensors", lambda: reply_frames([["b", "uint8", [1]], ["a", "uint8", [1]]], b"\0", b"\0"), "bad_tensor_spec"),
    ("duplicate_tensor", lambda: reply_frames([["a", "uint8", [1]], ["a", "uint8", [1]]], b"\0", b"\0"), "duplicate_tensor"),
    ("huge_declared_shape", lambda: reply_frames([["a", "float32", [2**40, 2**20]]], b"\0"), "model_too_large"),
    ("frame_too_short", lambda: reply_frames([["a", "float32", [2]]], b"\0" * 7), "frame_size_mismatch"),
    ("frame_too_long", lambda: reply_frames([["a", "float32", [2]]], b"\0" * 9), "frame_size_mismatch"),
    ("frames_but_no_model_kind", lambda: [pack(header()), b"\0"], "unexpected_tensors"),
    ("tensors_on_version_req", lambda: [pack(header(tensors=[["a", "uint8", [1]]])), b"\0"], "unexpected_tensors"),
    ("reply_without_model", lambda: reply_frames([]), "missing_tensors"),
    ("fewer_frames_than_tensors", lambda: reply_frames([["a", "uint8", [1]], ["b", "uint8", [1]]], b"\0"), "missing_tensors"),
    ("more_frames_than_tensors", lambda: reply_frames([["a", "uint8", [1]]], b"\0", b"\0"), "unexpected_tensors"),
]


@pytest.mark.parametrize("make, reason", [(make, reason) for _, make, reason in HOSTILE], ids=[case for case, _, _ in HOSTILE])
def test_hostile_input_is_rejected(make: Any, reason: str) -> None:
    assert_rejected(make(), reason)


def test_hostile_cases_start_from_a_valid_message() -> None:
    # Guards the table above: each case differs from these by the one thing it tests.
    assert decode_message([pack(header())], FED).msg == VersionRequest(1)
    decoded = decode_message(reply_frames([["a", "float32", [2]]], b"\0" * 8), FED)
    assert decoded.model is not None and decoded.model.specs == (TensorSpec("a", "float32", (2,)),)


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
        (Limits(max_model_bytes=27), "model_too_large"),
        (Limits(max_frame_bytes=23), "model_too_large"),
        (Limits(max_tensors=1), "bad_tensor_spec"),
    ],
)
def test_limits_are_enforced(limits: Limits, reason: str) -> None:
    frames = as_network(encode_message(FED, sample_reply(), sample_model()))
    decode_message(frames, FED)  # fine under the default limits
    assert_rejected(frames, reason, limits)


def test_declared_size_is_bounded_before_frames_are_compared() -> None:
    limits = Limits(max_model_bytes=100)
    assert_rejected(reply_frames([["a", "uint8", [101]]], b"\0"), "model_too_large", limits)


def test_wrong_federation_on_a_model_reply() -> None:
    frames = as_network(encode_message(OTHER_FED, sample_reply(), sample_model()))
    assert_rejected(frames, "wrong_federation")


def test_limits_default_values() -> None:
    limits = Limits()
    assert (limits.max_header_bytes, limits.max_frames, limits.max_tensors) == (16 * 2**20, 4097, 4096)
    assert (limits.max_frame_bytes, limits.max_model_bytes) == (2**30, 4 * 2**30)


def test_a_full_model_reply_of_dense_graph_entries_fits_the_default_limits() -> None:
    # MAX_ENTRIES log entries of a few KB each (an entry on a dense graph lists many parents)
    # once overflowed the 1 MiB header limit, so a node could not answer a far-behind peer.
    from swarm.messages import MAX_ENTRIES

    big = ModelReply(3, tuple(bytes([i % 251]) * 6000 for i in range(MAX_ENTRIES)))
    frames = encode_message(FED, big, sample_model())
    assert len(frames[0]) > 2**20
    decoded = decode_message(as_network(frames), FED)
    assert decoded.msg == big
    # Past the limit, the encoder still refuses (the node catches the ValueError).
    with pytest.raises(ValueError, match="header_too_large"):
        encode_message(FED, big, sample_model(), limits=Limits(max_header_bytes=2**20))


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
    header = msgpack.packb(
        {"v": 1, "fed": FED, "kind": "version_req", "body": {"req": msgpack.ExtType(5, b"")}, "tensors": []},
        use_bin_type=True,
    )
    assert_rejected([header], "bad_msgpack")
