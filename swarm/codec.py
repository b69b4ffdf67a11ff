"""The wire codec (docs/ARCHITECTURE.md, "Wire format").

Frame 0 is a msgpack header; every further frame is one tensor's raw bytes. Encoding and
decoding never copy tensor bytes: outgoing frames are the FlatModel's views, incoming tensor
buffers are views of the received frames. Every peer is untrusted, so `decode_message`
checks sizes before parsing anything and maps every failure to `RejectedMessage(reason)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from .errors import RejectedMessage, brief
from .log import refuse_ext
from .messages import MAX_ENTRIES, MESSAGE_TYPES, Message, from_body, to_body
from .tensors import FlatModel, TensorSpec, byte_view, validate_spec

WIRE_VERSION = 1
FEDERATION_ID_BYTES = 32
HEADER_KEYS = frozenset({"v", "fed", "kind", "body", "tensors"})


@dataclass(frozen=True)
class Limits:
    # A ModelReply carries up to MAX_ENTRIES log entries of a few KB each (an entry lists up
    # to degree + 1 parents), which overflowed 1 MiB on dense graphs.
    max_header_bytes: int = 16 * 1024 * 1024
    max_frames: int = 4097  # the header and up to max_tensors tensors
    max_frame_bytes: int = 1024**3
    max_model_bytes: int = 4 * 1024**3
    max_tensors: int = 4096
    max_map_len: int = 64  # the header and bodies are small fixed maps
    # Elements and containers in the whole header. A header of nothing but empty arrays
    # turns each byte into a Python object (about 64 bytes held per byte received); a real
    # one holds at most MAX_ENTRIES entries and max_tensors specs of up to 12 objects each.
    max_header_objects: int = 2**17
    max_ndim: int = 8
    max_name_chars: int = 256


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Decoded:
    msg: Message
    model: FlatModel | None


def encode_message(
    federation: bytes, msg: Message, model: FlatModel | None = None, limits: Limits = DEFAULT_LIMITS
) -> list[bytes | memoryview]:
    """The frames of `msg` (and its model), ready for `send_multipart(..., copy=False)`.

    Raises ValueError for a message the receiver would reject, so a bug shows up at the
    sender rather than as a silent refusal at every peer."""
    if type(federation) is not bytes or len(federation) != FEDERATION_ID_BYTES:
        raise ValueError(f"federation id must be {FEDERATION_ID_BYTES} bytes")
    if MESSAGE_TYPES.get(getattr(msg, "KIND", None)) is not type(msg):
        raise ValueError(f"not a wire message: {type(msg).__name__}")
    if msg.CARRIES_MODEL != (model is not None and len(model.specs) > 0):
        raise ValueError(f"{msg.KIND} {'needs' if msg.CARRIES_MODEL else 'cannot carry'} a model")
    specs = model.specs if model is not None else ()
    header = msgpack.packb(
        {
            "v": WIRE_VERSION,
            "fed": federation,
            "kind": msg.KIND,
            "body": to_body(msg),
            "tensors": [[spec.name, spec.dtype, list(spec.shape)] for spec in specs],
        },
        use_bin_type=True,
    )
    buffers = list(model.buffers) if model is not None else []
    try:
        _check_frame_sizes(len(header), [len(buffer) for buffer in buffers], limits)
    except RejectedMessage as error:
        raise ValueError(f"message exceeds wire limits: {error}") from None
    return [header, *buffers]


def decode_message(frames: Sequence[Any], federation: bytes, limits: Limits = DEFAULT_LIMITS) -> Decoded:
    """Parse and check a received multipart message, or raise RejectedMessage.

    `frames` are bytes-like objects or zmq.Frame-like objects with a `.buffer`. The decoded
    model's buffers are views of those frames: keep them (not copies) alive as long as the
    model is used, which the views themselves do."""
    if len(frames) == 0:
        raise RejectedMessage("no_frames")
    _check_frame_count(len(frames), limits)  # before touching what may be a flood of frames
    views = [byte_view(getattr(frame, "buffer", frame)) for frame in frames]
    _check_frame_sizes(len(views[0]), [len(view) for view in views[1:]], limits)
    header = _unpack_header(views[0], limits)
    msg = _check_header(header, federation)
    specs = _parse_specs(header["tensors"], limits)
    return Decoded(msg, _attach_tensors(msg, specs, views[1:]))


def _check_frame_count(count: int, limits: Limits) -> None:
    if count > limits.max_frames:
        raise RejectedMessage("too_many_frames", f"{count} > {limits.max_frames}")


def _check_frame_sizes(header_bytes: int, tensor_bytes: list[int], limits: Limits) -> None:
    """The size checks that need no parsing, shared by the encoder and the decoder."""
    _check_frame_count(1 + len(tensor_bytes), limits)
    if header_bytes > limits.max_header_bytes:
        raise RejectedMessage("header_too_large", f"{header_bytes} > {limits.max_header_bytes}")
    if any(size > limits.max_frame_bytes for size in tensor_bytes):
        raise RejectedMessage("model_too_large", f"a tensor frame exceeds {limits.max_frame_bytes} bytes")
    if sum(tensor_bytes) > limits.max_model_bytes:
        raise RejectedMessage("model_too_large", f"{sum(tensor_bytes)} > {limits.max_model_bytes}")


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
            max_array_len=max(limits.max_tensors, MAX_ENTRIES, limits.max_ndim),
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
    if not isinstance(header["tensors"], list):
        raise RejectedMessage("bad_header", "tensors must be a list")
    return from_body(header["kind"], header["body"])


def _parse_specs(items: list[Any], limits: Limits) -> tuple[TensorSpec, ...]:
    if len(items) > limits.max_tensors:
        raise RejectedMessage("bad_tensor_spec", f"{len(items)} tensors > {limits.max_tensors}")
    specs = tuple(_parse_spec(item, limits) for item in items)
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise RejectedMessage("duplicate_tensor")
    if names != sorted(names):  # the digest and FlatModel order tensors by name
        raise RejectedMessage("bad_tensor_spec", "tensors are not sorted by name")
    declared = sum(spec.nbytes for spec in specs)
    if declared > limits.max_model_bytes or any(spec.nbytes > limits.max_frame_bytes for spec in specs):
        raise RejectedMessage("model_too_large", f"tensors declare {declared} bytes")
    return specs


def _parse_spec(item: Any, limits: Limits) -> TensorSpec:
    if not isinstance(item, list) or len(item) != 3:
        raise RejectedMessage("bad_tensor_spec", "a tensor spec is [name, dtype, shape]")
    try:
        return validate_spec(*item, max_ndim=limits.max_ndim, max_name_chars=limits.max_name_chars)
    except ValueError as error:
        raise RejectedMessage("bad_tensor_spec", str(error)[:200]) from None


def _attach_tensors(msg: Message, specs: tuple[TensorSpec, ...], buffers: list[memoryview]) -> FlatModel | None:
    if not msg.CARRIES_MODEL:
        if specs or buffers:
            raise RejectedMessage("unexpected_tensors", f"{msg.KIND} carries no model")
        return None
    if not specs:
        raise RejectedMessage("missing_tensors", f"{msg.KIND} must carry a model")
    if len(buffers) < len(specs):
        raise RejectedMessage("missing_tensors", f"{len(specs)} tensors declared, {len(buffers)} frames")
    if len(buffers) > len(specs):
        raise RejectedMessage("unexpected_tensors", f"{len(specs)} tensors declared, {len(buffers)} frames")
    for spec, buffer in zip(specs, buffers):
        if len(buffer) != spec.nbytes:
            raise RejectedMessage("frame_size_mismatch", f"{spec.name!r}: {len(buffer)} bytes, spec needs {spec.nbytes}")
    return FlatModel(specs, tuple(buffers))
