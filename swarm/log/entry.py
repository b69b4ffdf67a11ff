"""Signed log entries: what an entry says, and signing and opening its canonical encoding.

Formats (fixed by docs/ARCHITECTURE.md):

    envelope  msgpack {"t": ENTRY_TYPE, "a": author key, "p": payload bytes, "s": signature}
              signature over b"swarm.log.entry/1\\0" + payload; entry hash = SHA-256(envelope)
    payload   msgpack {fed, author, seq, prev, kind, digest, samples, parents, round,
              metrics, ts}

Both msgpack maps must be in canonical form (the exact bytes this module writes: fixed key
order, minimal integer encodings, float64, metrics sorted by name). Otherwise one signed
entry could be re-encoded into many envelopes with different hashes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any

import msgpack

from ..errors import LogError, brief
from ..identity import SIGNATURE_BYTES, SigningKey, verify_signature

ENTRY_TYPE = "swarm.log.entry/1"
SIGNING_DOMAIN = ENTRY_TYPE.encode() + b"\0"
ZERO_HASH = bytes(32)
KINDS = ("update", "merge", "checkpoint", "key_rotation")
MAX_ENTRY_BYTES = 256 * 1024  # one envelope; swarm.messages uses this limit too
MAX_PARENTS = 1024
MAX_METRICS = 256
MAX_METRIC_NAME = 128
_U63 = 2**63  # seq, samples and round must fit a signed 64-bit integer everywhere

_ENVELOPE_KEYS = ("t", "a", "p", "s")
_PAYLOAD_KEYS = ("fed", "author", "seq", "prev", "kind", "digest", "samples", "parents",
                 "round", "metrics", "ts")


@dataclass(frozen=True)
class ParentRef:
    """A model this entry was built from: (author, seq) names a log entry, digest its model."""

    author: bytes
    seq: int
    digest: bytes


@dataclass(frozen=True)
class EntryBody:
    """What an entry says. `metrics` is stored read-only and sorted by name."""

    federation: bytes
    author: bytes
    seq: int
    prev: bytes
    kind: str
    digest: bytes
    samples: int
    parents: tuple[ParentRef, ...]
    round: int
    metrics: Mapping[str, float]
    timestamp: float

    def __post_init__(self) -> None:
        # Freeze the containers so a body cannot change after it was signed or verified.
        if isinstance(self.parents, (list, tuple)):
            object.__setattr__(self, "parents", tuple(self.parents))
        if isinstance(self.metrics, Mapping):
            ordered = dict(sorted(self.metrics.items(), key=lambda kv: str(kv[0])))
            object.__setattr__(self, "metrics", MappingProxyType(ordered))


@dataclass(frozen=True, eq=False)
class SignedEntry:
    """A verified entry: the exact envelope bytes and the body they carry. Build one with
    `sign_entry` or `open_entry`, never directly."""

    envelope: bytes
    body: EntryBody = field(repr=False)

    @cached_property
    def hash(self) -> bytes:
        """SHA-256 of the envelope: what the next entry's `prev` names."""
        return hashlib.sha256(self.envelope).digest()

    @property
    def federation(self) -> bytes:
        return self.body.federation

    @property
    def author(self) -> bytes:
        return self.body.author

    @property
    def seq(self) -> int:
        return self.body.seq

    @property
    def prev(self) -> bytes:
        return self.body.prev

    @property
    def kind(self) -> str:
        return self.body.kind

    @property
    def digest(self) -> bytes:
        return self.body.digest

    @property
    def parents(self) -> tuple[ParentRef, ...]:
        return self.body.parents

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SignedEntry) and other.envelope == self.envelope

    def __hash__(self) -> int:
        return hash(self.envelope)

    def __repr__(self) -> str:
        return (f"SignedEntry(author={self.author.hex()[:16]}, seq={self.seq}, "
                f"kind={self.kind}, hash={self.hash.hex()[:16]})")


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, use_single_float=False)


def _payload_map(body: EntryBody) -> dict[str, Any]:
    return {
        "fed": body.federation,
        "author": body.author,
        "seq": body.seq,
        "prev": body.prev,
        "kind": body.kind,
        "digest": body.digest,
        "samples": body.samples,
        "parents": [[p.author, p.seq, p.digest] for p in body.parents],
        "round": body.round,
        "metrics": dict(body.metrics),
        "ts": body.timestamp,
    }


def _envelope_bytes(author: bytes, payload: bytes, signature: bytes) -> bytes:
    return _pack({"t": ENTRY_TYPE, "a": author, "p": payload, "s": signature})


def _is_int(value: Any, low: int, high: int = _U63) -> bool:
    # bool is an int subclass; msgpack decodes true/false to bool, which is never a count.
    return type(value) is int and low <= value < high


def _is_hash(value: Any) -> bool:
    return type(value) is bytes and len(value) == 32


def _body_problem(body: EntryBody) -> str | None:
    """Why `body` is not a valid entry body, or None. Shared by signing and opening, so a
    site can never sign an entry that its peers would refuse."""
    for name in ("federation", "author", "prev", "digest"):
        if not _is_hash(getattr(body, name)):
            return f"{name} must be 32 bytes"
    if not _is_int(body.seq, 1):
        return "seq must be an integer >= 1"
    if (body.seq == 1) != (body.prev == ZERO_HASH):
        return "prev must be 32 zero bytes exactly when seq is 1"
    if type(body.kind) is not str or body.kind not in KINDS:
        return f"kind must be one of {', '.join(KINDS)}"
    if not _is_int(body.samples, 0):
        return "samples must be an integer >= 0"
    if not _is_int(body.round, 0):
        return "round must be an integer >= 0"
    if type(body.timestamp) is not float or not math.isfinite(body.timestamp):
        return "timestamp must be a finite float (time.time())"
    return _parents_problem(body.parents) or _metrics_problem(body.metrics)


def _parents_problem(parents: Any) -> str | None:
    if type(parents) is not tuple or len(parents) > MAX_PARENTS:
        return f"parents must be a sequence of at most {MAX_PARENTS} ParentRef"
    for ref in parents:
        if type(ref) is not ParentRef:
            return "parents must hold ParentRef values"
        if not (_is_hash(ref.author) and _is_int(ref.seq, 1) and _is_hash(ref.digest)):
            return "a parent is [author (32 bytes), seq >= 1, digest (32 bytes)]"
    return None


def _metrics_problem(metrics: Any) -> str | None:
    if not isinstance(metrics, Mapping) or len(metrics) > MAX_METRICS:
        return f"metrics must map at most {MAX_METRICS} names to floats"
    for name, value in metrics.items():
        if type(name) is not str or not 0 < len(name) <= MAX_METRIC_NAME:
            return f"metric names must be non-empty text of at most {MAX_METRIC_NAME} characters"
        if type(value) is not float:
            return f"metric {name!r} must be a float, got {type(value).__name__}"
    return None


def sign_entry(body: EntryBody, key: SigningKey) -> SignedEntry:
    """Sign `body` with `key`. ValueError if the body is invalid or not `key`'s."""
    if body.author != key.public:
        raise ValueError("body.author must be the signing key's public key (key.public)")
    problem = _body_problem(body)
    if problem:
        raise ValueError(f"invalid log entry: {problem}")
    payload = _pack(_payload_map(body))
    envelope = _envelope_bytes(body.author, payload, key.sign(SIGNING_DOMAIN + payload))
    if len(envelope) > MAX_ENTRY_BYTES:
        raise ValueError(f"log entry is {len(envelope)} bytes, the limit is {MAX_ENTRY_BYTES}; "
                         "record fewer parents or metrics")
    return SignedEntry(envelope, body)


def refuse_ext(code: int, data: bytes) -> Any:
    """msgpack `ext_hook` for untrusted input (shared with swarm.codec): no extension types."""
    raise ValueError(f"msgpack ext type {code} is not allowed")


def _unpack(data: bytes, max_bin: int, max_str: int, max_array: int, max_map: int) -> Any:
    """Strict msgpack decoding of untrusted bytes; every failure becomes ValueError."""
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True, timestamp=0,
            ext_hook=refuse_ext, max_bin_len=max_bin, max_str_len=max_str,
            max_array_len=max_array, max_map_len=max_map, max_ext_len=0,
        )
    except Exception as exc:  # noqa: BLE001 -- msgpack raises many types on bad input
        raise ValueError(f"{type(exc).__name__}: {exc}") from None


def open_entry(envelope: bytes) -> SignedEntry:
    """Check and parse an envelope received from anywhere (disk, a peer). The signature is
    checked before the payload is even parsed, so unsigned bytes never reach the parser."""
    if not isinstance(envelope, (bytes, bytearray, memoryview)):
        raise LogError("bad_envelope", f"expected bytes, got {type(envelope).__name__}")
    envelope = bytes(envelope)
    if len(envelope) > MAX_ENTRY_BYTES:
        raise LogError("too_large", f"{len(envelope)} bytes, the limit is {MAX_ENTRY_BYTES}")
    author, payload, signature = _parse_envelope(envelope)
    if not verify_signature(author, signature, SIGNING_DOMAIN + payload):
        raise LogError("bad_signature", "the signature does not match the envelope's author key")
    body = _parse_payload(payload)
    if body.author != author:
        raise LogError("author_mismatch", "the payload's author is not the envelope's signer")
    return SignedEntry(envelope, body)


def _parse_envelope(envelope: bytes) -> tuple[bytes, bytes, bytes]:
    try:
        env = _unpack(envelope, MAX_ENTRY_BYTES, len(ENTRY_TYPE), 0, len(_ENVELOPE_KEYS))
    except ValueError as exc:
        raise LogError("bad_envelope", str(exc)) from None
    if type(env) is not dict or tuple(env) != _ENVELOPE_KEYS:
        raise LogError("bad_envelope", f"expected a map with keys {list(_ENVELOPE_KEYS)}")
    if env["t"] != ENTRY_TYPE:
        raise LogError("bad_envelope", f"unknown entry type {brief(env['t'])}")
    author, payload, signature = env["a"], env["p"], env["s"]
    if not (_is_hash(author) and type(payload) is bytes and type(signature) is bytes
            and len(signature) == SIGNATURE_BYTES):
        raise LogError("bad_envelope", "a, p, s must be 32, any and 64 bytes")
    if _envelope_bytes(author, payload, signature) != envelope:
        raise LogError("bad_envelope", "not in canonical encoding")
    return author, payload, signature


def _parse_payload(payload: bytes) -> EntryBody:
    try:
        p = _unpack(payload, 32, max(MAX_METRIC_NAME * 4, 16), MAX_PARENTS,
                    max(MAX_METRICS, len(_PAYLOAD_KEYS)))
    except ValueError as exc:
        raise LogError("bad_payload", str(exc)) from None
    if type(p) is not dict or set(p) != set(_PAYLOAD_KEYS) or len(p) != len(_PAYLOAD_KEYS):
        raise LogError("bad_payload", f"expected a map with keys {list(_PAYLOAD_KEYS)}")
    parents = p["parents"]
    if type(parents) is not list or not all(type(r) is list and len(r) == 3 for r in parents):
        raise LogError("bad_payload", "parents must be a list of [author, seq, digest]")
    metrics = p["metrics"]
    if type(metrics) is not dict:
        raise LogError("bad_payload", "metrics must be a map of names to floats")
    body = EntryBody(
        federation=p["fed"], author=p["author"], seq=p["seq"], prev=p["prev"],
        kind=p["kind"], digest=p["digest"], samples=p["samples"],
        parents=tuple(ParentRef(a, s, d) for a, s, d in parents), round=p["round"],
        metrics=metrics, timestamp=p["ts"],
    )
    problem = _body_problem(body)
    if problem:
        raise LogError("bad_payload", problem)
    if _pack(_payload_map(body)) != payload:
        raise LogError("bad_payload", "not in canonical encoding")
    return body
