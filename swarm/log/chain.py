"""Chain rules: which entry may follow which in an author's hash-chained log.

A member's log is one chain for the federation's life. When a manifest version gives the
member a new signing key, the chain goes on under the new key: `keys` is the member's key
history, oldest first (swarm.manifest_chain.key_history), and along the chain an entry's key
may only be the same as its predecessor's or a later one. Entries signed with an earlier key
are taken from a peer only when an entry signed with the current key follows them
(verify_extension): whoever holds only a replaced key cannot add to the chain. A file
written over time may hold each key in turn (verify_history)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..errors import LogError
from .entry import ZERO_HASH, SignedEntry, open_entry


def link_after(head: SignedEntry | None) -> tuple[int, bytes]:
    """The (seq, prev) a new entry after `head` must carry."""
    return (1, ZERO_HASH) if head is None else (head.seq + 1, head.hash)


def check_successor(prev: SignedEntry | None, entry: SignedEntry, keys: Sequence[bytes] = ()) -> None:
    """Raise LogError unless `entry` is the one entry that may follow `prev` (None: `entry`
    must be its author's first). A different entry at a seq already taken is a fork. The
    author may change only to a later key of its key history `keys`."""
    if prev is None:
        if entry.seq != 1:
            raise LogError("bad_seq", f"the first entry must have seq 1, got {entry.seq}")
        if entry.prev != ZERO_HASH:
            raise LogError("broken_chain", "the first entry's prev must be 32 zero bytes")
        return
    if entry.author != prev.author and not _later_key(keys, prev.author, entry.author):
        raise LogError("author_mismatch", "entry is by a different author than its predecessor")
    if entry.federation != prev.federation:
        raise LogError("wrong_federation", "entry is for a different federation than its "
                                           "predecessor")
    if entry.seq != prev.seq + 1:
        raise LogError("bad_seq", _seq_problem(prev, entry))
    if entry.prev != prev.hash:
        raise LogError("broken_chain", f"seq {entry.seq} does not name seq {prev.seq}'s hash")


def _later_key(keys: Sequence[bytes], old: bytes, new: bytes) -> bool:
    return old in keys and new in keys and keys.index(new) > keys.index(old)


def _seq_problem(prev: SignedEntry, entry: SignedEntry) -> str:
    expected = f"expected seq {prev.seq + 1}, got {entry.seq}"
    if entry.seq == prev.seq and entry != prev:
        return f"{expected}: a second, different entry for seq {entry.seq} (fork)"
    if entry.seq <= prev.seq:
        return f"{expected}: an old seq (replay)"
    return f"{expected}: entries are missing"


def verify_extension(head: SignedEntry | None, envelopes: Sequence[bytes | SignedEntry],
                     federation: bytes, author: bytes, location: str | None = None,
                     earlier_keys: Sequence[bytes] = ()) -> list[SignedEntry]:
    """Open and check entries that extend `author`'s chain after `head` (None: from the
    start), sent by a peer or read from a file named `location`. They are signed by
    `author`, or by one of the member's `earlier_keys` (oldest first) when a later entry
    signed by `author` follows ("revoked_key" otherwise). Returns the opened entries;
    raises LogError at the first bad one."""
    keys = (*earlier_keys, author)
    if head is not None and (head.author not in keys or head.federation != federation):
        raise LogError("author_mismatch", "the head is not this author's in this federation")
    out = _check_chain(head, envelopes, federation, keys,
                       lambda i: f"{location} entry {i + 1}" if location else f"extension entry {i + 1} of {len(envelopes)}")
    if out and out[-1].author != author:
        raise LogError("revoked_key", "the last entry is signed with a key the author no longer has; "
                       "only its current key can vouch for older entries", location or "")
    return out


def verify_history(envelopes: Sequence[bytes], federation: bytes, keys: Sequence[bytes],
                   location: str) -> list[SignedEntry]:
    """Open and check a whole chain read from a file: signed with the keys of `keys` (the
    author's key history, oldest first), each in turn."""
    return _check_chain(None, envelopes, federation, tuple(keys), lambda i: f"{location} entry {i + 1}")


def _check_chain(prev: SignedEntry | None, envelopes: Sequence[bytes | SignedEntry], federation: bytes,
                 keys: tuple[bytes, ...], where: Callable[[int], str]) -> list[SignedEntry]:
    out: list[SignedEntry] = []
    for i, envelope in enumerate(envelopes):
        try:
            entry = envelope if isinstance(envelope, SignedEntry) else open_entry(envelope)
            if entry.author not in keys:
                raise LogError("author_mismatch", "entry is not signed by the expected author")
            if entry.federation != federation:
                raise LogError("wrong_federation", "entry is for a different federation")
            check_successor(prev, entry, keys)
        except LogError as exc:
            raise _located(exc, where(i)) from None
        out.append(entry)
        prev = entry
    return out


def _located(exc: LogError, where: str) -> LogError:
    return LogError(exc.reason, exc.detail, where)
