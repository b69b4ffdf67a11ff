"""Auditing: a strict, read-only check of a whole log file."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LogError
from .chain import _located, check_successor
from .entry import SignedEntry, open_entry
from .records import _scan


@dataclass
class VerifyResult:
    """`entries` are the opened entries that passed every check, in file order (all of them
    when `ok`), so an auditor need not read and parse the file again."""

    ok: bool
    entries_checked: int
    failure: LogError | None = None
    entries: list[SignedEntry] = field(default_factory=list)


def verify_log_file(path: Path, *, federation: bytes | None, is_member: Callable[[bytes], bool],
                    checkpoint_digest: Callable[[int], bytes | None] | None = None,
                    key_history: Callable[[bytes], Sequence[bytes]] | None = None
                    ) -> VerifyResult:
    """Audit a log file strictly: every record, signature and link, the federation (when
    given; otherwise all entries must agree), the author's membership and, when
    `checkpoint_digest` is given, that each entry's model checkpoint exists and matches
    (`checkpoint_digest(seq)` returns the checkpoint's digest, None when there is none, or
    raises LogError, e.g. "bad_checkpoint", for a damaged one). `key_history(key)`, when
    given, is the signing keys of the member that had `key`, oldest first: the log may go
    on under a later one (a manifest version rotated it). Any damage, a torn last record
    included, is a failure. Never modifies the file."""
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
            keys = key_history(prev.author) if key_history is not None and prev is not None else ()
            _audit_entry(prev, entry, federation, is_member, checkpoint_digest, keys)
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
                 checkpoint_digest: Callable[[int], bytes | None] | None,
                 keys: Sequence[bytes] = ()) -> None:
    if federation is not None and entry.federation != federation:
        raise LogError("wrong_federation", "entry is for a different federation")
    check_successor(prev, entry, keys)
    if not is_member(entry.author):
        raise LogError("not_member", f"author {entry.author.hex()} is not in the manifest")
    if checkpoint_digest is not None:
        expected = checkpoint_digest(entry.seq)
        if expected is None:
            raise LogError("missing_checkpoint", f"no checkpoint for seq {entry.seq}")
        if expected != entry.digest:
            raise LogError("digest_mismatch", "the checkpoint's digest is not the logged one")
