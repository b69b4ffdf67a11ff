"""The signed, hash-chained, append-only update log.

Every model a site publishes is recorded as an entry signed with the site's Ed25519 key. An
entry names the hash of the author's previous entry, so a site's log is a chain that anyone
holding the public key can audit, and two different entries with the same (author, seq) are
a signed proof that the author forked its history.

Formats (fixed by docs/ARCHITECTURE.md):

    envelope  msgpack {"t": ENTRY_TYPE, "a": author key, "p": payload bytes, "s": signature}
              signature over b"swarm.log.entry/1\\0" + payload; entry hash = SHA-256(envelope)
    payload   msgpack {fed, author, seq, prev, kind, digest, samples, parents, round,
              metrics, ts}
    record    b"SWLE" | u32 length | u32 crc32(envelope) | envelope   (big-endian)

Both msgpack maps must be in canonical form (the exact bytes this module writes: fixed key
order, minimal integer encodings, float64, metrics sorted by name). Otherwise one signed
entry could be re-encoded into many envelopes with different hashes.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import os
import struct
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

import msgpack

from .atomic import fsync_dir
from .errors import LogError
from .identity import SIGNATURE_BYTES, SigningKey, verify_signature

log = logging.getLogger(__name__)

ENTRY_TYPE = "swarm.log.entry/1"
SIGNING_DOMAIN = ENTRY_TYPE.encode() + b"\0"
ZERO_HASH = bytes(32)
KINDS = ("update", "merge", "checkpoint", "key_rotation")
MAX_ENTRY_BYTES = 256 * 1024  # one envelope; swarm.messages uses this limit too
MAX_PARENTS = 1024
MAX_METRICS = 256
MAX_METRIC_NAME = 128
_U63 = 2**63  # seq, samples and round must fit a signed 64-bit integer everywhere

RECORD_MAGIC = b"SWLE"
_HEADER = struct.Struct(">4sII")
RECORD_HEADER_BYTES = _HEADER.size

_ENVELOPE_KEYS = ("t", "a", "p", "s")
_PAYLOAD_KEYS = ("fed", "author", "seq", "prev", "kind", "digest", "samples", "parents",
                 "round", "metrics", "ts")


# --------------------------------------------------------------------------- entries


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


def link_after(head: SignedEntry | None) -> tuple[int, bytes]:
    """The (seq, prev) a new entry after `head` must carry."""
    return (1, ZERO_HASH) if head is None else (head.seq + 1, head.hash)


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
        raise LogError("bad_envelope", f"unknown entry type {env['t']!r}")
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


# --------------------------------------------------------------------------- chains


def check_successor(prev: SignedEntry | None, entry: SignedEntry) -> None:
    """Raise LogError unless `entry` is the one entry that may follow `prev` (None: `entry`
    must be its author's first). A different entry at a seq already taken is a fork."""
    if prev is None:
        if entry.seq != 1:
            raise LogError("bad_seq", f"the first entry must have seq 1, got {entry.seq}")
        if entry.prev != ZERO_HASH:
            raise LogError("broken_chain", "the first entry's prev must be 32 zero bytes")
        return
    if entry.author != prev.author:
        raise LogError("author_mismatch", "entry is by a different author than its predecessor")
    if entry.federation != prev.federation:
        raise LogError("wrong_federation", "entry is for a different federation than its "
                                           "predecessor")
    if entry.seq != prev.seq + 1:
        raise LogError("bad_seq", _seq_problem(prev, entry))
    if entry.prev != prev.hash:
        raise LogError("broken_chain", f"seq {entry.seq} does not name seq {prev.seq}'s hash")


def _seq_problem(prev: SignedEntry, entry: SignedEntry) -> str:
    expected = f"expected seq {prev.seq + 1}, got {entry.seq}"
    if entry.seq == prev.seq and entry != prev:
        return f"{expected}: a second, different entry for seq {entry.seq} (fork)"
    if entry.seq <= prev.seq:
        return f"{expected}: an old seq (replay)"
    return f"{expected}: entries are missing"


def verify_extension(head: SignedEntry | None, envelopes: Sequence[bytes],
                     federation: bytes, author: bytes) -> list[SignedEntry]:
    """Open and check entries a peer sent to extend `author`'s chain after `head` (None: from
    the start). Returns the opened entries; raises LogError at the first bad one."""
    if head is not None and (head.author != author or head.federation != federation):
        raise LogError("author_mismatch", "the head is not this author's in this federation")
    out: list[SignedEntry] = []
    prev = head
    for i, envelope in enumerate(envelopes):
        where = f"extension entry {i + 1} of {len(envelopes)}"
        try:
            entry = open_entry(envelope)
            if entry.author != author:
                raise LogError("author_mismatch", "entry is signed by a different author")
            if entry.federation != federation:
                raise LogError("wrong_federation", "entry is for a different federation")
            check_successor(prev, entry)
        except LogError as exc:
            raise _located(exc, where) from None
        out.append(entry)
        prev = entry
    return out


def _located(exc: LogError, where: str) -> LogError:
    return LogError(exc.reason, exc.detail, where)


# --------------------------------------------------------------------------- records


def encode_record(envelope: bytes) -> bytes:
    """The on-disk record for one envelope."""
    return _HEADER.pack(RECORD_MAGIC, len(envelope), zlib.crc32(envelope)) + envelope


@dataclass
class _Scan:
    envelopes: list[bytes]
    good_end: int  # byte offset just past the last good record
    torn: LogError | None = None  # a torn last record: safe to cut off
    damage: LogError | None = None  # anything else: refuse


def _scan(data: bytes, name: str) -> _Scan:
    """Split a log file into envelopes. Stops at the first bad record and says whether it is
    a torn last write (repairable) or damage (not)."""
    scan = _Scan([], 0)
    pos, size = 0, len(data)
    while pos < size:
        where = f"{name} entry {len(scan.envelopes) + 1} at byte {pos}"
        problem = _record_problem(data, pos, size)
        if problem is not None:
            torn, reason, detail = problem
            later = _find_valid_record(data, pos + 1) if torn else None
            if later is not None:
                # A crash can only tear the last record: a sound record after this one means
                # this is damage inside the file (say, to a length field), never to be cut.
                torn, reason = False, "bad_record"
                detail = (f"{detail}, but a valid record starts at byte {later}: damage "
                          "inside the file, not a torn last write")
            error = LogError(reason, detail, where)
            if torn:
                scan.torn = error
            else:
                scan.damage = error
            break
        length = _HEADER.unpack_from(data, pos)[1]
        scan.envelopes.append(data[pos + RECORD_HEADER_BYTES:pos + RECORD_HEADER_BYTES + length])
        pos += RECORD_HEADER_BYTES + length
    scan.good_end = pos
    return scan


def _record_problem(data: bytes, pos: int, size: int) -> tuple[bool, str, str] | None:
    """(torn, reason, detail) for the record at `pos`, or None when it is sound."""
    rest = data[pos:pos + RECORD_HEADER_BYTES]
    if len(rest) < RECORD_HEADER_BYTES:
        if RECORD_MAGIC.startswith(rest[:4]) or not any(rest):
            return True, "torn_tail", f"file ends inside a record header ({len(rest)} bytes)"
        return False, "bad_record", "trailing bytes that are not a record header"
    magic, length, crc = _HEADER.unpack(rest)
    if magic != RECORD_MAGIC:
        # A crash after the file grew but before its data reached the disk leaves zeros.
        if not any(data[pos:]) and size - pos <= RECORD_HEADER_BYTES + MAX_ENTRY_BYTES:
            return True, "torn_tail", "file ends in zeros where a record should start"
        return False, "bad_record", f"bad record magic {magic!r}"
    if length > MAX_ENTRY_BYTES:
        return False, "too_large", f"declared length {length} exceeds {MAX_ENTRY_BYTES}"
    start, end = pos + RECORD_HEADER_BYTES, pos + RECORD_HEADER_BYTES + length
    if end > size:
        if zlib.crc32(data[start:]) == crc:
            # The bytes present are the whole envelope: the length field was damaged.
            return False, "bad_record", "record length field is damaged"
        return True, "torn_tail", f"file ends inside a record ({size - start} of {length} bytes)"
    if zlib.crc32(data[start:end]) != crc:
        if end == size:
            return True, "torn_tail", "checksum fails on the last record"
        return False, "bad_checksum", "record checksum does not match"
    return None


def _find_valid_record(data: bytes, start: int) -> int | None:
    """The offset of the first sound record (magic, plausible length, matching crc32, an
    envelope that opens) at or after `start`, at any byte offset; None if there is none."""
    pos = data.find(RECORD_MAGIC, start)
    while pos != -1:
        if _is_valid_record(data, pos):
            return pos
        pos = data.find(RECORD_MAGIC, pos + 1)
    return None


def _is_valid_record(data: bytes, pos: int) -> bool:
    if pos + RECORD_HEADER_BYTES > len(data):
        return False
    _magic, length, crc = _HEADER.unpack_from(data, pos)
    start, end = pos + RECORD_HEADER_BYTES, pos + RECORD_HEADER_BYTES + length
    if not 0 < length <= MAX_ENTRY_BYTES or end > len(data):
        return False
    envelope = data[start:end]
    if zlib.crc32(envelope) != crc:
        return False
    try:
        open_entry(envelope)
    except LogError:
        return False
    return True


def read_records(path: Path) -> tuple[list[bytes], str | None]:
    """The envelopes in a log file and a description of a torn last record (None if there is
    none). Any other damage raises LogError naming the file and record. OSError passes."""
    scan = _scan(Path(path).read_bytes(), str(path))
    if scan.damage is not None:
        raise scan.damage
    return scan.envelopes, None if scan.torn is None else str(scan.torn)


# --------------------------------------------------------------------------- the log


class UpdateLog:
    """One site's own log file, open for appending.

    Opening verifies the whole file. A torn last record (a crash mid-append) is cut off,
    but only when no sound record can be found at any later byte offset; any other damage
    (a damaged length field inside the file included) is refused and the file is left
    exactly as it was, for a human to look at. The file is locked so that two processes cannot append to one chain and fork it."""

    def __init__(self, path: Path, fd: int, federation: bytes, author: bytes,
                 entries: list[SignedEntry], size: int, repaired_bytes: int,
                 pending_dir_syncs: list[Path]) -> None:
        self.path = path
        self.federation = federation
        self.author = author
        self.repaired_bytes = repaired_bytes
        self._fd: int | None = fd
        self._entries = entries
        self._size = size
        self._pending_dir_syncs = pending_dir_syncs
        self._lock = threading.Lock()
        self._failed: str | None = None

    @classmethod
    def open(cls, path: Path, federation: bytes, author: bytes) -> UpdateLog:
        path = Path(path)
        if not (_is_hash(federation) and _is_hash(author)):
            raise ValueError("federation and author must be 32 bytes each")
        new_dirs = _make_dirs(path.parent)
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         0o644)
            created = True
        except FileExistsError:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            created = False
        try:
            _lock_file(fd, path)
            data = _read_all(fd)
            entries, scan = _verify_own(data, str(path), federation, author)
            repaired = 0
            if scan.torn is not None:
                os.ftruncate(fd, scan.good_end)
                os.fsync(fd)
                repaired = len(data) - scan.good_end
                log.warning("update log: cut off a torn last record (%d bytes) -- %s",
                            repaired, scan.torn)
        except BaseException:
            os.close(fd)
            raise
        # The new file (and any new directories) become durable with the first append.
        pending = [path.parent, *[d.parent for d in new_dirs]] if created else []
        return cls(path, fd, federation, author, entries, scan.good_end, repaired, pending)

    @property
    def entries(self) -> list[SignedEntry]:
        return list(self._entries)

    @property
    def head(self) -> SignedEntry | None:
        return self._entries[-1] if self._entries else None

    def __len__(self) -> int:
        return len(self._entries)

    def since(self, seq: int) -> list[SignedEntry]:
        """The entries after `seq` (all of them for 0): what a peer at `seq` is missing."""
        if not _is_int(seq, 0):
            raise ValueError("seq must be an integer >= 0")
        return self._entries[seq:]

    def find(self, seq: int) -> SignedEntry | None:
        """The entry with `seq`, or None."""
        return self._entries[seq - 1] if _is_int(seq, 1) and seq <= len(self._entries) else None

    def append(self, entry: SignedEntry) -> None:
        """Append `entry` durably: when this returns, the entry survives a crash."""
        with self._lock:
            fd = self._writable_fd()
            # Re-open the envelope: what goes to disk is exactly what was verified.
            entry = open_entry(entry.envelope)
            if entry.author != self.author:
                raise LogError("author_mismatch", "entry is not by this log's author",
                               str(self.path))
            if entry.federation != self.federation:
                raise LogError("wrong_federation", "entry is for a different federation",
                               str(self.path))
            try:
                check_successor(self.head, entry)
            except LogError as exc:
                raise _located(exc, f"{self.path} append seq {entry.seq}") from None
            self._write(fd, encode_record(entry.envelope))
            self._entries.append(entry)

    def _writable_fd(self) -> int:
        if self._fd is None:
            raise LogError("closed", "the log is closed; open it again", str(self.path))
        if self._failed:
            raise LogError("write_failed", f"an earlier write failed ({self._failed}); restart "
                           "the node, which re-checks the log", str(self.path))
        return self._fd

    def _write(self, fd: int, record: bytes) -> None:
        try:
            written = os.write(fd, record)  # one write: a crash leaves a prefix, never a mix
            if written != len(record):
                raise OSError(f"short write ({written} of {len(record)} bytes)")
            os.fsync(fd)
            while self._pending_dir_syncs:
                fsync_dir(self._pending_dir_syncs[0])
                self._pending_dir_syncs.pop(0)
        except OSError as exc:
            # After a failed write or fsync the file's state is unknown: stop appending.
            self._failed = str(exc)
            try:
                os.ftruncate(fd, self._size)
            except OSError:
                pass
            raise
        self._size += len(record)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)  # also releases the lock
                self._fd = None

    def __enter__(self) -> UpdateLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"UpdateLog({str(self.path)!r}, entries={len(self._entries)})"


def _make_dirs(directory: Path) -> list[Path]:
    """mkdir -p, returning the directories it created (their parents need an fsync)."""
    missing = []
    d = directory
    while not d.exists():
        missing.append(d)
        d = d.parent
    directory.mkdir(parents=True, exist_ok=True)
    return missing


def _lock_file(fd: int, path: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise LogError("in_use", "another process (or UpdateLog) has this log open; stop the "
                       "other swarm-node for this site first", str(path)) from None


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks, pos = [], 0
    while pos < size:
        chunk = os.pread(fd, size - pos, pos)
        if not chunk:
            break
        chunks.append(chunk)
        pos += len(chunk)
    return b"".join(chunks)


def _verify_own(data: bytes, name: str, federation: bytes,
                author: bytes) -> tuple[list[SignedEntry], _Scan]:
    scan = _scan(data, name)
    if scan.damage is not None:
        raise scan.damage
    entries: list[SignedEntry] = []
    prev = None
    for i, envelope in enumerate(scan.envelopes, 1):
        try:
            entry = open_entry(envelope)
            if entry.author != author:
                raise LogError("author_mismatch", "entry is not by this site's signing key")
            if entry.federation != federation:
                raise LogError("wrong_federation", "entry is for a different federation")
            check_successor(prev, entry)
        except LogError as exc:
            raise _located(exc, f"{name} entry {i}") from None
        entries.append(entry)
        prev = entry
    return entries, scan


# --------------------------------------------------------------------------- auditing


@dataclass
class VerifyResult:
    """`entries` are the opened entries that passed every check, in file order (all of them
    when `ok`), so an auditor need not read and parse the file again."""

    ok: bool
    entries_checked: int
    failure: LogError | None = None
    entries: list[SignedEntry] = field(default_factory=list)


def verify_log_file(path: Path, *, federation: bytes | None, is_member: Callable[[bytes], bool],
                    checkpoint_digest: Callable[[int], bytes | None] | None = None
                    ) -> VerifyResult:
    """Audit a log file strictly: every record, signature and link, the federation (when
    given; otherwise all entries must agree), the author's membership and, when
    `checkpoint_digest` is given, that each entry's model checkpoint exists and matches
    (`checkpoint_digest(seq)` returns the checkpoint's digest, None when there is none, or
    raises LogError, e.g. "bad_checkpoint", for a damaged one). Any damage, a torn last
    record included, is a failure. Never modifies the file."""
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return VerifyResult(False, 0, LogError("unreadable", exc.strerror or str(exc), name))
    scan = _scan(data, name)
    entries: list[SignedEntry] = []
    prev: SignedEntry | None = None
    for i, envelope in enumerate(scan.envelopes, 1):
        where = f"{name} entry {i}"
        try:
            entry = open_entry(envelope)
            where = f"{name} entry {i} (seq {entry.seq})"
            _audit_entry(prev, entry, federation, is_member, checkpoint_digest)
        except LogError as exc:
            return VerifyResult(False, i - 1, _located(exc, where), entries)
        entries.append(entry)
        prev = entry
    checked = len(scan.envelopes)
    if scan.damage is not None:
        return VerifyResult(False, checked, scan.damage, entries)
    if scan.torn is not None:
        return VerifyResult(False, checked, scan.torn, entries)
    return VerifyResult(True, checked, None, entries)


def _audit_entry(prev: SignedEntry | None, entry: SignedEntry, federation: bytes | None,
                 is_member: Callable[[bytes], bool],
                 checkpoint_digest: Callable[[int], bytes | None] | None) -> None:
    if federation is not None and entry.federation != federation:
        raise LogError("wrong_federation", "entry is for a different federation")
    check_successor(prev, entry)
    if not is_member(entry.author):
        raise LogError("not_member", f"author {entry.author.hex()} is not in the manifest")
    if checkpoint_digest is not None:
        expected = checkpoint_digest(entry.seq)
        if expected is None:
            raise LogError("missing_checkpoint", f"no checkpoint for seq {entry.seq}")
        if expected != entry.digest:
            raise LogError("digest_mismatch", "the checkpoint's digest is not the logged one")
