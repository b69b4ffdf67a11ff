"""The wire codec (docs/ARCHITECTURE.md, "Wire format").

Frame 0 is a msgpack header; only a Chunk has further frames, one per leaf of the model
(raw tensor bytes, at most 4 MiB each; swarm.transfer). Encoding and decoding never copy
those bytes: outgoing frames are views of the published model, incoming ones views of the
received frames. Every peer is untrusted, so `decode_message` checks sizes before parsing
anything and maps every failure to `RejectedMessage(reason)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import msgpack

from .errors import RejectedMessage, brief
from .log import refuse_ext
from .messages import MAX_CHUNK_LEAVES, MAX_ENTRIES, MAX_LEAVES, MESSAGE_TYPES, Message, from_body, to_body
from .tensors import DIGEST_CHUNK_BYTES, byte_view

WIRE_VERSION = 2  # 2: models travel in chunks (swarm.transfer), never inside one message
FEDERATION_ID_BYTES = 32
HEADER_KEYS = frozenset({"v", "fed", "kind", "body"})


@dataclass(frozen=True)
class Limits:
    # An offer carries up to MAX_ENTRIES log entries of a few KB each (an entry lists up to
    # degree + 1 parents), which overflowed 1 MiB on dense graphs, and up to MAX_LEAVES
    # 32-byte leaf hashes (2 MiB).
    max_header_bytes: int = 16 * 1024 * 1024
    max_frames: int = 1 + MAX_CHUNK_LEAVES  # the header and one chunk's leaves
    max_frame_bytes: int = DIGEST_CHUNK_BYTES  # a leaf
    max_map_len: int = 64  # the header and bodies are small fixed maps
    # Elements and containers in the whole header. A header of nothing but empty arrays
    # turns each byte into a Python object (about 64 bytes held per byte received); a real
    # one holds at most MAX_ENTRIES entries and MAX_LEAVES leaf hashes.
    max_header_objects: int = 2**17


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Decoded:
    msg: Message
    data: tuple[memoryview, ...] = ()  # a Chunk's leaves, views of the received frames


def encode_message(
    federation: bytes, msg: Message, data: Sequence[Any] = (), limits: Limits = DEFAULT_LIMITS
) -> list[bytes | memoryview]:
    """The frames of `msg` (and a Chunk's leaves), ready for `send_multipart(..., copy=False)`.

    Raises ValueError for a message the receiver would reject, so a bug shows up at the
    sender rather than as a silent refusal at every peer."""
    if type(federation) is not bytes or len(federation) != FEDERATION_ID_BYTES:
        raise ValueError(f"federation id must be {FEDERATION_ID_BYTES} bytes")
    if MESSAGE_TYPES.get(getattr(msg, "KIND", None)) is not type(msg):
        raise ValueError(f"not a wire message: {type(msg).__name__}")
    if len(data) != (msg.count if msg.DATA_FRAMES else 0):  # type: ignore[attr-defined]
        raise ValueError(f"{msg.KIND} carries {'one frame per leaf' if msg.DATA_FRAMES else 'no data frames'}, got {len(data)}")
    header = msgpack.packb({"v": WIRE_VERSION, "fed": federation, "kind": msg.KIND, "body": to_body(msg)}, use_bin_type=True)
    try:
        _check_frame_sizes(len(header), [memoryview(frame).nbytes for frame in data], limits)
    except RejectedMessage as error:
        raise ValueError(f"message exceeds wire limits: {error}") from None
    return [header, *data]


def decode_message(frames: Sequence[Any], federation: bytes, limits: Limits = DEFAULT_LIMITS) -> Decoded:
    """Parse and check a received multipart message, or raise RejectedMessage.

    `frames` are bytes-like objects or zmq.Frame-like objects with a `.buffer`. A Chunk's
    data are views of those frames."""
    if len(frames) == 0:
        raise RejectedMessage("no_frames")
    _check_frame_count(len(frames), limits)  # before touching what may be a flood of frames
    views = [byte_view(getattr(frame, "buffer", frame)) for frame in frames]
    _check_frame_sizes(len(views[0]), [len(view) for view in views[1:]], limits)
    header = _unpack_header(views[0], limits)
    msg = _check_header(header, federation)
    data = tuple(views[1:])
    if not msg.DATA_FRAMES and data:
        raise RejectedMessage("unexpected_frames", f"{msg.KIND} carries no data frames")
    if msg.DATA_FRAMES and len(data) != msg.count:  # type: ignore[attr-defined]
        raise RejectedMessage("bad_chunk", f"{len(data)} data frames for {msg.count} leaves")  # type: ignore[attr-defined]
    return Decoded(msg, data)


def _check_frame_count(count: int, limits: Limits) -> None:
    if count > limits.max_frames:
        raise RejectedMessage("too_many_frames", f"{count} > {limits.max_frames}")


def _check_frame_sizes(header_bytes: int, data_bytes: list[int], limits: Limits) -> None:
    """The size checks that need no parsing, shared by the encoder and the decoder."""
    _check_frame_count(1 + len(data_bytes), limits)
    if header_bytes > limits.max_header_bytes:
        raise RejectedMessage("header_too_large", f"{header_bytes} > {limits.max_header_bytes}")
    if any(size > limits.max_frame_bytes for size in data_bytes):
        raise RejectedMessage("frame_too_large", f"a data frame exceeds {limits.max_frame_bytes} bytes")


def _object_budget(limit: int) -> Callable[[Any], Any]:
    """A list/object hook that counts every container and its elements, and aborts the
    unpacking once the header holds more than `limit` of them."""
    left = limit

    def count(container: Any) -> Any:
        nonlocal left
        left -= len(container) + 1
        if left < 0:
            raise ValueError(f"more than {limit} objects in the header")
        return container

    return count


def _unpack_header(raw: memoryview, limits: Limits) -> Any:
    budget = _object_budget(limits.max_header_objects)
    try:
        return msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=refuse_ext,
            max_str_len=limits.max_header_bytes,
            max_bin_len=limits.max_header_bytes,
            max_array_len=max(MAX_LEAVES, MAX_ENTRIES),
            max_map_len=limits.max_map_len,
            max_ext_len=0,
            list_hook=budget,
            object_hook=budget,
        )
    # StackError and ExtraData are ValueErrors; deep nesting in the pure-Python fallback
    # raises RecursionError.
    except (msgpack.UnpackException, ValueError, TypeError, OverflowError, RecursionError) as error:
        raise RejectedMessage("bad_msgpack", f"{type(error).__name__}: {error}"[:200]) from None


def _check_header(header: Any, federation: bytes) -> Message:
    """Check the envelope fields in the order that gives the most useful reason."""
    if not isinstance(header, dict) or "v" not in header:
        raise RejectedMessage("bad_header", "not a map with a version")
    # Version first: a future version may change every other key.
    if type(header["v"]) is not int or header["v"] != WIRE_VERSION:
        raise RejectedMessage("wrong_version", brief(header["v"]))
    if set(header) != HEADER_KEYS:
        raise RejectedMessage("bad_header", f"keys must be exactly {sorted(HEADER_KEYS)}")
    fed = header["fed"]
    if type(fed) is not bytes or len(fed) != FEDERATION_ID_BYTES:
        raise RejectedMessage("bad_header", f"fed must be {FEDERATION_ID_BYTES} bytes")
    if fed != federation:
        raise RejectedMessage("wrong_federation", fed.hex()[:16])
    if not isinstance(header["kind"], str):
        raise RejectedMessage("bad_header", "kind must be a str")
    return from_body(header["kind"], header["body"])
