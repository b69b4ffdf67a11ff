"""Forks found by an audit: an author's position in its log for which more than one validly
signed entry exists.

Two places show them: the logs themselves (a site's own log and its neighbours' copies of
it, already verified by nodes.audit.verify_sites, disagreeing about one seq), and the fork
evidence files that nodes keep under SITE/evidence/ (checked again here with
swarm.evidence: both signatures, one author, one seq, this federation). A fork is reported
once however many logs and evidence files show it, with where each of its entries was seen."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from swarm.errors import LogError
from swarm.evidence import load_evidence
from swarm.log import SignedEntry

from .audit import AuditReport, Failure

ForkKey = tuple[bytes, bytes, int]  # (federation, author key, seq)


@dataclass
class ForkedEntry:
    entry: SignedEntry
    logs: list[Path] = field(default_factory=list)  # log files holding this entry
    evidence: list[tuple[str, Path]] = field(default_factory=list)  # (site, evidence file) holding it


@dataclass
class Fork:
    author: str
    seq: int
    entries: list[ForkedEntry]  # two or more, ordered by envelope bytes

    @property
    def evidence(self) -> list[tuple[str, Path]]:
        """(site, file) of every evidence file that proves this fork."""
        return sorted({held for forked in self.entries for held in forked.evidence})


def find_forks(report: AuditReport) -> tuple[list[Fork], list[Failure]]:
    """Every fork in the logs and evidence files `report` covers, and a failure for each
    evidence file that proves nothing (bad signatures, not a fork, unreadable)."""
    seen: dict[ForkKey, dict[bytes, ForkedEntry]] = {}

    def note(entry: SignedEntry) -> ForkedEntry:
        versions = seen.setdefault((entry.federation, entry.author, entry.seq), {})
        return versions.setdefault(entry.envelope, ForkedEntry(entry))

    for log in report.logs:
        for entry in log.entries:
            note(entry).logs.append(log.path)
    bad_evidence: list[Failure] = []
    for site in report.sites:
        for path in sorted(site.site.evidence_dir.glob("*.fork")) if site.site.evidence_dir.is_dir() else []:
            try:
                evidence = load_evidence(path, site.manifest)
            except LogError as exc:
                bad_evidence.append(Failure(str(path), exc.reason, exc.detail))
                continue
            for entry in (evidence.first, evidence.second):
                note(entry).evidence.append((site.name, path))
    forks = [
        Fork(report.names.get(author, author.hex()[:16]), seq, [versions[e] for e in sorted(versions)])
        for (_federation, author, seq), versions in seen.items()
        if len(versions) > 1
    ]
    return sorted(forks, key=lambda fork: (fork.author, fork.seq)), bad_evidence
