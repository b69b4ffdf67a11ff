"""The wire message types.

Each message is a frozen dataclass whose fields are checked on construction, so a message
object is valid wherever it exists: built locally, or decoded from an untrusted peer by
`from_body`, which turns every violation into `RejectedMessage("bad_body")`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from .errors import RejectedMessage, brief
from .log import MAX_ENTRY_BYTES  # one limit for an entry, on disk and on the wire
from .manifest import MAX_MANIFEST_BYTES

MAX_UINT = 2**63 - 1  # everything counted on the wire fits a signed 64-bit int
MAX_ENTRIES = 1024
MAX_REASON_CHARS = 200
MAX_SIGNATURES_BYTES = 1024 * 1024  # a manifest's .sigs.json document
MAX_LEAVES = 65536  # 4 MiB leaves: models up to 256 GiB
MAX_CHUNK_LEAVES = 16
HASH_BYTES = 32


def check_uint(value: Any) -> None:
    # type() rather than isinstance(): bool is an int subclass, and True is not a seq.
    if type(value) is not int or not 0 <= value <= MAX_UINT:
        raise ValueError(f"expected an int in [0, 2**63), got {brief(value)}")


def check_bool(value: Any) -> None:
    if type(value) is not bool:
        raise ValueError(f"expected a bool, got {brief(value)}")


def check_entries(value: Any) -> None:
    if type(value) is not tuple or not 1 <= len(value) <= MAX_ENTRIES:
        raise ValueError(f"expected 1 to {MAX_ENTRIES} log entries")
    for entry in value:
        if type(entry) is not bytes or not 0 < len(entry) <= MAX_ENTRY_BYTES:
            raise ValueError(f"a log entry must be 1 to {MAX_ENTRY_BYTES} bytes")


def check_entry_pair(value: Any) -> None:
    check_entries(value)
    if len(value) != 2:
        raise ValueError("expected exactly 2 log entries")


def check_leaves(value: Any) -> None:
    if type(value) is not tuple or not 1 <= len(value) <= MAX_LEAVES:
        raise ValueError(f"expected 1 to {MAX_LEAVES} leaf hashes")
    if any(type(leaf) is not bytes or len(leaf) != HASH_BYTES for leaf in value):
        raise ValueError(f"a leaf hash is {HASH_BYTES} bytes")


def check_hash(value: Any) -> None:
    if type(value) is not bytes or len(value) != HASH_BYTES:
        raise ValueError(f"expected {HASH_BYTES} bytes")


def check_chunk_count(value: Any) -> None:
    if type(value) is not int or not 1 <= value <= MAX_CHUNK_LEAVES:
        raise ValueError(f"expected 1 to {MAX_CHUNK_LEAVES} leaves")


def _bytes_check(limit: int, what: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if type(value) is not bytes or not 0 < len(value) <= limit:
            raise ValueError(f"{what} must be 1 to {limit} bytes")

    return check


def check_reason(value: Any) -> None:
    # Printable ASCII only: the receiver logs refusal reasons, so no control characters.
    if type(value) is not str or not 0 < len(value) <= MAX_REASON_CHARS or not value.isascii() or not value.isprintable():
        raise ValueError(f"a reason must be 1 to {MAX_REASON_CHARS} printable ASCII characters")


def _field(check: Callable[[Any], None]) -> Any:
    return field(metadata={"check": check})


@dataclass(frozen=True)
class Message:
    """Base class: subclasses declare KIND and give each field a check via `_field`."""

    KIND: ClassVar[str]
    DATA_FRAMES: ClassVar[bool] = False  # whether raw data frames follow the header

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            try:
                f.metadata["check"](getattr(self, f.name))
            except ValueError as error:
                raise ValueError(f"{self.KIND}.{f.name}: {error}") from None


@dataclass(frozen=True)
class VersionRequest(Message):
    """What is your latest published model?"""

    KIND: ClassVar[str] = "version_req"
    req: int = _field(check_uint)


@dataclass(frozen=True)
class VersionReply(Message):
    """The responder's latest published log seq (0 if none), its sample count, and whether
    it has finished training."""

    KIND: ClassVar[str] = "version_reply"
    req: int = _field(check_uint)
    seq: int = _field(check_uint)
    samples: int = _field(check_uint)
    done: bool = _field(check_bool)


@dataclass(frozen=True)
class ModelRequest(Message):
    """Send me your log entries have+1..head and the model of the head entry."""

    KIND: ClassVar[str] = "model_req"
    req: int = _field(check_uint)
    have: int = _field(check_uint)


@dataclass(frozen=True)
class ModelReply(Message):
    """An offer of a model (swarm.transfer): signed log envelopes in ascending seq, the
    last of which signs the model's digest, and the hashes of the model's leaves, which
    combine into that digest. The receiver pulls the tensors with ChunkRequests."""

    KIND: ClassVar[str] = "model_reply"
    req: int = _field(check_uint)
    entries: tuple[bytes, ...] = _field(check_entries)
    leaves: tuple[bytes, ...] = _field(check_leaves)


@dataclass(frozen=True)
class ModelPush(Message):
    """An unasked offer (gossip, D-PSGD, epidemic learning): signed log envelopes in
    ascending seq after what the receiver last acknowledged, and the leaf hashes of the
    model the last one signs."""

    KIND: ClassVar[str] = "model_push"
    entries: tuple[bytes, ...] = _field(check_entries)
    leaves: tuple[bytes, ...] = _field(check_leaves)


@dataclass(frozen=True)
class ChunkRequest(Message):
    """Send me leaves first..first+count-1 of the model with this digest (one credit)."""

    KIND: ClassVar[str] = "chunk_req"
    digest: bytes = _field(check_hash)
    first: int = _field(check_uint)
    count: int = _field(check_chunk_count)


@dataclass(frozen=True)
class Chunk(Message):
    """Leaves first..first+count-1 of the model with this digest, one data frame each."""

    KIND: ClassVar[str] = "chunk"
    DATA_FRAMES: ClassVar[bool] = True
    digest: bytes = _field(check_hash)
    first: int = _field(check_uint)
    count: int = _field(check_chunk_count)


@dataclass(frozen=True)
class ChunkRefusal(Message):
    """The sender will not serve chunks of this digest, e.g. reason "version_gone"."""

    KIND: ClassVar[str] = "chunk_refusal"
    digest: bytes = _field(check_hash)
    reason: str = _field(check_reason)


@dataclass(frozen=True)
class PushAck(Message):
    """The highest entry of the pusher's log the receiver now holds, so the next push sends
    only what is missing."""

    KIND: ClassVar[str] = "push_ack"
    seq: int = _field(check_uint)


@dataclass(frozen=True)
class Evidence(Message):
    """Two entries signed by one member for the same seq: proof that it equivocated. Passed
    on to the neighbours so that the whole federation quarantines the author."""

    KIND: ClassVar[str] = "evidence"
    entries: tuple[bytes, ...] = _field(check_entry_pair)


@dataclass(frozen=True)
class ManifestUpdate(Message):
    """A manifest version, its exact bytes and its .sigs.json document, sent when a node
    adopts a version, now and then while its version is above 1, and to a neighbour that
    is behind. The receiver checks it against the version before it before adopting it
    (swarm.manifest_chain); a version it cannot place yet it answers with its own."""

    KIND: ClassVar[str] = "manifest"
    manifest: bytes = _field(_bytes_check(MAX_MANIFEST_BYTES, "a manifest"))
    signatures: bytes = _field(_bytes_check(MAX_SIGNATURES_BYTES, "a signatures document"))


@dataclass(frozen=True)
class Refusal(Message):
    """The responder will not answer `req`, e.g. reason "no_model_yet"."""

    KIND: ClassVar[str] = "refusal"
    req: int = _field(check_uint)
    reason: str = _field(check_reason)


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.KIND: cls
    for cls in (VersionRequest, VersionReply, ModelRequest, ModelReply, ModelPush, ChunkRequest, Chunk, ChunkRefusal, PushAck, Evidence, ManifestUpdate, Refusal)
}


def to_body(msg: Message) -> dict[str, Any]:
    """The msgpack-ready body of a message (tuples become lists, as msgpack returns them)."""
    return {f.name: _to_wire(getattr(msg, f.name)) for f in dataclasses.fields(msg)}


def from_body(kind: Any, body: Any) -> Message:
    """Build a message from an untrusted kind and body, or raise RejectedMessage."""
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise RejectedMessage("unknown_kind", brief(kind))
    if not isinstance(body, dict):
        raise RejectedMessage("bad_body", f"{kind}: body is not a map")
    expected = {f.name for f in dataclasses.fields(cls)}
    if set(body) != expected:
        raise RejectedMessage("bad_body", f"{kind}: fields must be exactly {sorted(expected)}")
    try:
        return cls(**{name: _from_wire(value) for name, value in body.items()})
    except ValueError as error:
        raise RejectedMessage("bad_body", str(error)) from None


def _to_wire(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _from_wire(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
