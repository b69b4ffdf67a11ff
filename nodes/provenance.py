"""The provenance of one model: every version it was built from, found by following the
parents each log entry names, across every log and neighbour copy an audit read.

A model is named by a prefix of its digest (at least 8 hex digits) or as AUTHOR#SEQ
(`hospital-a#12`). Each version appears once, keyed by the (author, seq, digest) a child
names; a parent no given log holds is `missing`, one whose entry carries another model is
`digest_mismatch`, and the walk stops at both. A version for whose (author, seq) several
signed entries exist is marked `forked`."""

from __future__ import annotations

import heapq
import re
from collections import deque
from dataclasses import dataclass, field

from swarm.errors import UsageError
from swarm.log import SignedEntry

from .audit import AuditReport

MIN_PREFIX = 8
_DIGEST_PREFIX = re.compile(rf"^[0-9a-f]{{{MIN_PREFIX},64}}$")
_AUTHOR_SEQ = re.compile(r"^(?P<author>[^#\s]+)#(?P<seq>[0-9]+)$")


@dataclass(frozen=True)
class ModelRef:
    """What the user typed: an author and seq, or a digest prefix."""

    text: str
    author: str | None = None
    seq: int | None = None
    digest_prefix: str | None = None


def parse_model_ref(text: str) -> ModelRef:
    text = text.strip()
    if match := _AUTHOR_SEQ.match(text):
        return ModelRef(text, author=match["author"], seq=int(match["seq"]))
    if _DIGEST_PREFIX.match(text.lower()):
        return ModelRef(text, digest_prefix=text.lower())
    raise UsageError(f"--model {text!r}: give a model digest prefix of at least {MIN_PREFIX} hex digits or AUTHOR#SEQ (example: hospital-a#12)")


@dataclass
class Version:
    """One version in a model's ancestry. `entry` is None when it is missing; `parents` are
    the (author, seq) the entry names, in its order."""

    author: str
    seq: int
    digest: bytes  # the model digest the child names (the entry's own for the model itself)
    entry: SignedEntry | None
    status: str = "ok"  # "ok", "missing" or "digest_mismatch"
    forked: bool = False
    parents: list[tuple[str, int]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.author}#{self.seq}"


@dataclass
class Contribution:
    versions: int = 0
    samples: int = 0  # summed over its versions
    samples_per_version: set[int] = field(default_factory=set)


@dataclass
class Provenance:
    model: Version
    versions: list[Version]  # each after every version built from it: the model first

    @property
    def problems(self) -> list[Version]:
        return [v for v in self.versions if v.status != "ok"]

    def contributions(self) -> dict[str, Contribution]:
        totals: dict[str, Contribution] = {}
        for version in self.versions:
            if version.entry is None:
                continue
            contribution = totals.setdefault(version.author, Contribution())
            contribution.versions += 1
            contribution.samples += version.entry.body.samples
            contribution.samples_per_version.add(version.entry.body.samples)
        return dict(sorted(totals.items()))


class _Index:
    """Every distinct entry the audit read, by (federation, author, seq)."""

    def __init__(self, report: AuditReport) -> None:
        self.names = report.names
        self.by_position: dict[tuple[bytes, bytes, int], dict[bytes, SignedEntry]] = {}
        for log in report.logs:
            for entry in log.entries:
                self.by_position.setdefault((entry.federation, entry.author, entry.seq), {})[entry.envelope] = entry

    def name(self, author: bytes) -> str:
        return self.names.get(author, author.hex()[:16])

    def entries(self) -> list[SignedEntry]:
        return [entry for versions in self.by_position.values() for entry in versions.values()]

    def at(self, federation: bytes, author: bytes, seq: int) -> list[SignedEntry]:
        versions = self.by_position.get((federation, author, seq), {})
        return [versions[envelope] for envelope in sorted(versions)]


def trace(report: AuditReport, ref: ModelRef, forked: frozenset[tuple[str, int]] = frozenset()) -> Provenance:
    """`forked`: (author, seq) of forks known from elsewhere (evidence files)."""
    index = _Index(report)
    root = _resolve(index, ref)
    versions: dict[tuple[bytes, int, bytes], Version] = {}
    queue = deque([(root.federation, root.author, root.seq, root.digest)])
    while queue:
        federation, author, seq, digest = queue.popleft()
        if (author, seq, digest) in versions:
            continue
        candidates = index.at(federation, author, seq)
        matching = [e for e in candidates if e.digest == digest]
        name = index.name(author)
        version = Version(name, seq, digest, matching[0] if matching else None, forked=len(candidates) > 1 or (name, seq) in forked)
        if not candidates:
            version.status = "missing"
        elif not matching:
            version.status = "digest_mismatch"
        else:
            for parent in version.entry.parents:
                version.parents.append((index.name(parent.author), parent.seq))
                queue.append((federation, parent.author, parent.seq, parent.digest))
        versions[(author, seq, digest)] = version
    return Provenance(versions[(root.author, root.seq, root.digest)], _children_first(versions))


def _children_first(versions: dict[tuple[bytes, int, bytes], Version]) -> list[Version]:
    """Every version after all the versions built from it; among those free to go next,
    the latest round first. Versions on a cycle (which only forged entries can make) last."""
    children = {key: 0 for key in versions}
    for version in versions.values():
        for parent in _parent_keys(version, versions):
            children[parent] += 1

    def order(key: tuple[bytes, int, bytes]) -> tuple[int, str, int]:
        version = versions[key]
        return (-(version.entry.body.round if version.entry else -1), version.author, -version.seq)

    ready = [(order(key), key) for key, count in children.items() if count == 0]
    heapq.heapify(ready)
    ordered: list[Version] = []
    while ready:
        _, key = heapq.heappop(ready)
        ordered.append(versions[key])
        for parent in _parent_keys(versions[key], versions):
            children[parent] -= 1
            if children[parent] == 0:
                heapq.heappush(ready, (order(parent), parent))
    placed = {id(v) for v in ordered}
    return ordered + [v for v in versions.values() if id(v) not in placed]


def _parent_keys(version: Version, versions: dict[tuple[bytes, int, bytes], Version]) -> list[tuple[bytes, int, bytes]]:
    parents = version.entry.parents if version.entry else ()
    return [key for key in dict.fromkeys((p.author, p.seq, p.digest) for p in parents) if key in versions]


def _resolve(index: _Index, ref: ModelRef) -> SignedEntry:
    """The one entry `ref` names; UsageError when it names none or several models."""
    if ref.digest_prefix is not None:
        found = [e for e in index.entries() if e.digest.hex().startswith(ref.digest_prefix)]
        what = f"no model with digest {ref.digest_prefix}... in the given logs"
    else:
        keys = [key for key, name in index.names.items() if name == ref.author]
        if not keys:
            members = ", ".join(sorted(set(index.names.values())))
            raise UsageError(f"--model {ref.text}: {ref.author} is not a member of the audited federations ({members})")
        found = [e for e in index.entries() if e.author in keys and e.seq == ref.seq]
        heads = [e.seq for e in index.entries() if e.author in keys]
        what = f"no entry {ref.text} in the given logs ({ref.author}'s entries seen go up to #{max(heads, default=0)})"
    models = {(e.federation, e.author, e.seq, e.digest): e for e in sorted(found, key=lambda e: e.envelope)}
    if not models:
        raise UsageError(f"--model {ref.text}: {what}")
    if len(models) > 1:
        listed = ", ".join(f"{index.name(author)}#{seq} (model {digest.hex()[:16]})" for _f, author, seq, digest in sorted(models, key=lambda m: (index.name(m[1]), m[2]))[:6])
        hint = "a longer digest prefix" if ref.digest_prefix is not None else "its digest (the author forked this seq)"
        raise UsageError(f"--model {ref.text} is ambiguous: it names {len(models)} models: {listed}; give {hint}")
    return next(iter(models.values()))
