"""Equivocation: two validly signed entries by one author for the same position in its log.

A member can only produce such a pair by signing two histories, so the pair itself is the
proof; anyone holding the manifest can check it without trusting whoever passes it on.
Evidence travels between nodes and is kept on disk as the two envelopes, nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import msgpack

from .atomic import write_atomic
from .errors import LogError
from .log import SignedEntry, open_entry
from .manifest import Manifest

EVIDENCE_TAG = "swarm.evidence.fork/1"


@dataclass(frozen=True)
class ForkEvidence:
    author: str  # member name
    seq: int
    first: SignedEntry
    second: SignedEntry

    @property
    def envelopes(self) -> tuple[bytes, bytes]:
        return self.first.envelope, self.second.envelope


def check_fork(first: bytes, second: bytes, manifest: Manifest) -> ForkEvidence:
    """The evidence in two envelopes, or LogError("bad_evidence") saying why it is none."""
    try:
        a, b = open_entry(first), open_entry(second)
    except LogError as exc:
        raise LogError("bad_evidence", f"an entry does not verify: {exc.reason}") from None
    if a.envelope == b.envelope:
        raise LogError("bad_evidence", "the two entries are the same")
    if a.body.author != b.body.author:
        raise LogError("bad_evidence", "the entries have different authors")
    member = manifest.member_by_signing_key(a.body.author)
    if member is None:
        raise LogError("bad_evidence", "the author is not a member of this federation")
    if a.body.federation != manifest.federation_id or b.body.federation != manifest.federation_id:
        raise LogError("bad_evidence", "an entry belongs to another federation")
    if a.seq != b.seq:
        raise LogError("bad_evidence", f"the entries are for different positions ({a.seq}, {b.seq})")
    # Order the pair so that the same fork always has the same evidence.
    first_entry, second_entry = sorted((a, b), key=lambda e: e.envelope)
    return ForkEvidence(member.name, a.seq, first_entry, second_entry)


class EvidenceStore:
    """SITE/evidence/<author>-<seq>.fork: the two envelopes, written atomically. The authors
    found there are quarantined again when a node restarts."""

    def __init__(self, directory: Path, manifest: Manifest) -> None:
        """`manifest` checks the evidence kept on disk; it is not kept (a running node checks
        new evidence against the manifest version it runs under)."""
        self.directory = Path(directory)
        self.forks: dict[tuple[str, int], ForkEvidence] = {}
        if self.directory.is_dir():
            for path in sorted(self.directory.glob("*.fork")):
                evidence = load_evidence(path, manifest)
                self.forks[(evidence.author, evidence.seq)] = evidence

    @property
    def quarantined(self) -> set[str]:
        return {author for author, _ in self.forks}

    def record(self, evidence: ForkEvidence) -> bool:
        """Keep `evidence`; False when this fork was known already."""
        key = (evidence.author, evidence.seq)
        if key in self.forks:
            return False
        self.directory.mkdir(parents=True, exist_ok=True)
        document = {"t": EVIDENCE_TAG, "entries": list(evidence.envelopes)}
        write_atomic(self.directory / f"{evidence.author}-{evidence.seq}.fork", msgpack.packb(document, use_bin_type=True))
        self.forks[key] = evidence
        return True


def load_evidence(path: Path, manifest: Manifest) -> ForkEvidence:
    try:
        document = msgpack.unpackb(Path(path).read_bytes(), raw=False, max_bin_len=1 << 20, max_str_len=1024, max_array_len=4, max_map_len=4)
        if not isinstance(document, dict) or document.get("t") != EVIDENCE_TAG or len(document.get("entries", ())) != 2:
            raise ValueError("not a fork evidence file")
        first, second = document["entries"]
        return check_fork(first, second, manifest)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise LogError("bad_evidence", str(exc), where=str(path)) from None
    except LogError as exc:
        raise LogError(exc.reason, exc.detail, where=str(path)) from None
