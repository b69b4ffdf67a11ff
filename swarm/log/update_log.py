"""UpdateLog: one site's own log file, verified on open and appended to durably."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from ..atomic import fsync_dir
from ..errors import LogError
from .chain import _located, check_successor, verify_history
from .entry import SignedEntry, _is_hash, _is_int, open_entry
from .records import _Scan, _scan, encode_record

log = logging.getLogger("swarm.log")  # the name it had before swarm.log became a package


class UpdateLog:
    """One site's own log file, open for appending.

    Opening verifies the whole file. A torn last record (a crash mid-append) is cut off,
    but only when no sound record can be found at any later byte offset; any other damage
    (a damaged length field inside the file included) is refused and the file is left
    exactly as it was, for a human to look at. The file is locked so that two processes cannot append to one chain and fork it."""

    def __init__(self, path: Path, fd: int, federation: bytes, author: bytes,
                 entries: list[SignedEntry], size: int, repaired_bytes: int,
                 pending_dir_syncs: list[Path], earlier_keys: tuple[bytes, ...] = ()) -> None:
        self.path = path
        self.federation = federation
        self.author = author  # the current key: every new entry is signed with it
        self.keys = (*earlier_keys, author)  # the author's key history, oldest first
        self.repaired_bytes = repaired_bytes
        self._fd: int | None = fd
        self._entries = entries
        self._size = size
        self._pending_dir_syncs = pending_dir_syncs
        self._lock = threading.Lock()
        self._failed: str | None = None

    @classmethod
    def open(cls, path: Path, federation: bytes, author: bytes,
             earlier_keys: tuple[bytes, ...] = ()) -> UpdateLog:
        """`earlier_keys`: the signing keys the author had before `author` (manifest
        versions that rotated its key), oldest first; older entries may be signed with them."""
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
            entries, scan = _verify_own(data, str(path), federation, (*earlier_keys, author))
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
        return cls(path, fd, federation, author, entries, scan.good_end, repaired, pending, tuple(earlier_keys))

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

    def rotate_to(self, author: bytes) -> None:
        """From now on entries are signed with `author`, the author's new key (a manifest
        version rotated it); the chain goes on."""
        if not _is_hash(author):
            raise ValueError("author must be 32 bytes")
        with self._lock:
            if author not in self.keys:
                self.keys = (*self.keys, author)
            self.author = author

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
                check_successor(self.head, entry, self.keys)
            except LogError as exc:
                raise _located(exc, f"{self.path} append seq {entry.seq}") from None
            self._write(fd, encode_record(entry.envelope))
            self._entries.append(entry)

    def extend(self, entries: Sequence[SignedEntry]) -> None:
        """Append a neighbour's entries, as verify_extension took them, durably and in one
        write. Across a key rotation the first of them may be signed with an earlier key of
        the author's history, as long as the last one is signed with the current key (only
        that key vouches for older entries; `append` takes current-key entries only).
        Their signatures were checked when they were opened (a SignedEntry comes only from
        open_entry or sign_entry), so only the chain is checked again here."""
        with self._lock:
            fd = self._writable_fd()
            opened = list(entries)
            if not all(isinstance(entry, SignedEntry) for entry in opened):
                raise TypeError("extend takes SignedEntry objects (from open_entry or verify_extension)")
            if not opened:
                return
            if opened[-1].author != self.author:
                raise LogError("revoked_key", "the last entry is not signed with the author's current key",
                               str(self.path))
            prev = self.head
            for entry in opened:
                if entry.author not in self.keys:
                    raise LogError("author_mismatch", "entry is not by this log's author", str(self.path))
                if entry.federation != self.federation:
                    raise LogError("wrong_federation", "entry is for a different federation", str(self.path))
                try:
                    check_successor(prev, entry, self.keys)
                except LogError as exc:
                    raise _located(exc, f"{self.path} append seq {entry.seq}") from None
                prev = entry
            self._write(fd, b"".join(encode_record(entry.envelope) for entry in opened))
            self._entries.extend(opened)

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
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc
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
                keys: tuple[bytes, ...]) -> tuple[list[SignedEntry], _Scan]:
    scan = _scan(data, name)
    if scan.damage is not None:
        raise scan.damage
    return verify_history(scan.envelopes, federation, keys, location=name), scan
