"""Chain rules: which entry may follow which in an author's hash-chained log."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import LogError
from .entry import ZERO_HASH, SignedEntry, open_entry


def link_after(head: SignedEntry | None) -> tuple[int, bytes]:
    """The (seq, prev) a new entry after `head` must carry."""
    return (1, ZERO_HASH) if head is None else (head.seq + 1, head.hash)


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
                     federation: bytes, author: bytes, location: str | None = None) -> list[SignedEntry]:
    """Open and check entries that extend `author`'s chain after `head` (None: from the
    start), sent by a peer or read from a file named `location`. Returns the opened entries;
    raises LogError at the first bad one."""
    if head is not None and (head.author != author or head.federation != federation):
        raise LogError("author_mismatch", "the head is not this author's in this federation")
    out: list[SignedEntry] = []
    prev = head
    for i, envelope in enumerate(envelopes):
        where = f"{location} entry {i + 1}" if location else f"extension entry {i + 1} of {len(envelopes)}"
        try:
            entry = open_entry(envelope)
            if entry.author != author:
                raise LogError("author_mismatch", "entry is not signed by the expected author")
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
