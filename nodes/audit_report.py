"""`swarm-node audit`: one report over a set of sites' logs and checkpoints.

It puts together what nodes.audit verified (per author: entries seen, head, chain valid or
the first failure, whose logs and copies were read), the forks nodes.forks found, and,
when asked, a model's provenance (nodes.provenance). Nothing is read or verified twice."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from swarm.log import SignedEntry

from .audit import AuditReport, Failure, LogSeen, verify_sites
from .forks import Fork, find_forks
from .provenance import ModelRef, Provenance, Version, parse_model_ref, trace


@dataclass
class AuthorSummary:
    name: str
    own_log: LogSeen | None  # None when the author's site was not given
    copies: list[LogSeen]  # neighbours' copies of its entries
    failures: list[Failure]  # everything verification blamed on this author's logs or entries
    forked_seqs: list[int]

    @property
    def logs(self) -> list[LogSeen]:
        return ([self.own_log] if self.own_log else []) + self.copies

    @property
    def seqs(self) -> set[int]:
        return {entry.seq for log in self.logs for entry in log.entries}

    @property
    def ok(self) -> bool:
        return not self.failures and not self.forked_seqs


@dataclass(frozen=True)
class Republished:
    """A version whose model is exactly a parent's by another member: published as its own
    work without training on it (free riding), or the same model arrived twice by chance
    (practically impossible once anyone trains). A suspicion, not a failure."""

    author: str
    seq: int
    source: str
    source_seq: int


@dataclass(frozen=True)
class ModelFile:
    """An exported model file given to --model: the digest of its own tensors and what its
    card claims; `logged` is the label of the log entry holding that digest (None: none)."""

    path: Path
    format: str
    digest: bytes
    claimed: str  # "author#seq (model digest)" from the card
    logged: str | None


@dataclass
class Audit:
    verification: AuditReport
    authors: list[AuthorSummary]
    forks: list[Fork]
    other_failures: list[Failure]  # not tied to one author: a site's manifest, bad evidence
    provenance: Provenance | None
    republished: list[Republished] = field(default_factory=list)
    model_file: ModelFile | None = None

    @property
    def ok(self) -> bool:
        """Every chain valid, no forks, the model's provenance (if asked for) complete, and a
        model file's tensors (if given) a logged version."""
        problems = self.provenance.problems if self.provenance else []
        unlogged = self.model_file is not None and self.model_file.logged is None
        return all(a.ok for a in self.authors) and not self.forks and not self.other_failures and not problems and not unlogged


def run_audit(paths: Iterable[Path], model: str | None = None) -> Audit:
    """`model`: a digest prefix, AUTHOR#SEQ, or the path of a file `swarm-node export` wrote."""
    model_file = None
    if model is not None and Path(model).is_file():
        from .export import digest_of_export

        digest, card = digest_of_export(Path(model))
        version = card.get("version", {})
        claimed = f"{version.get('author')}#{version.get('seq')} (model {str(version.get('model_digest', ''))[:16]})"
        model_file = ModelFile(Path(model), str(card.get("format", "?")), digest, claimed, None)
        ref = ModelRef(model, digest_prefix=digest.hex())
    else:
        ref = parse_model_ref(model) if model is not None else None  # a typo fails before any work
    report = verify_sites(paths)
    forks, bad_evidence = find_forks(report)
    authors = _summarise_authors(report, forks)
    known = {a.name for a in authors}
    others = [f for f in report.failures if f.author not in known] + bad_evidence
    forked = frozenset((fork.author, fork.seq) for fork in forks)
    provenance = None
    if model_file is not None:
        if any(e.digest == model_file.digest for log in report.logs for e in log.entries):
            provenance = trace(report, ref, forked)
            model_file = replace(model_file, logged=provenance.model.label)
    elif ref is not None:
        provenance = trace(report, ref, forked)
    return Audit(report, authors, forks, others, provenance, find_republished(report), model_file)


def find_republished(report: AuditReport) -> list[Republished]:
    seen: dict[tuple[str, int], SignedEntry] = {(log.author, e.seq): e for log in report.logs for e in log.entries}
    found = []
    for (author, seq), entry in sorted(seen.items()):
        for parent in entry.body.parents:
            if parent.author != entry.author and parent.digest == entry.body.digest:
                found.append(Republished(author, seq, report.names.get(parent.author, parent.author.hex()[:8]), parent.seq))
    return found


def _summarise_authors(report: AuditReport, forks: list[Fork]) -> list[AuthorSummary]:
    names = sorted({log.author for log in report.logs})
    return [
        AuthorSummary(
            name,
            next((log for log in report.logs if log.author == name and log.own), None),
            [log for log in report.logs if log.author == name and not log.own],
            [f for f in report.failures if f.author == name],
            sorted(fork.seq for fork in forks if fork.author == name),
        )
        for name in names
    ]


# --------------------------------------------------------------------------- text


def audit_lines(audit: Audit) -> list[str]:
    report = audit.verification
    lines = [f"audited {len(report.sites)} sites: {report.logs_checked} logs, {report.entries_checked} entries", "authors:"]
    lines += [_author_line(author) for author in audit.authors]
    lines.append(f"forks: {len(audit.forks) or 'none'}")
    for fork in audit.forks:
        lines += _fork_lines(fork)
    if audit.other_failures:
        lines.append("other failures:")
        lines += [f"  FAIL {failure}" for failure in audit.other_failures]
    if audit.republished:
        lines.append(f"republished models (possible free riding; not counted as a failure): {len(audit.republished)}")
        lines += [f"  {r.author}#{r.seq} is {r.source}#{r.source_seq}'s model unchanged" for r in audit.republished[:20]]
        if len(audit.republished) > 20:
            lines.append(f"  ... and {len(audit.republished) - 20} more (see --json)")
    if audit.model_file:
        lines.append(_model_file_line(audit.model_file))
    if audit.provenance:
        lines += _provenance_lines(audit.provenance)
    lines.append("result: OK" if audit.ok else "result: PROBLEMS FOUND")
    return lines


def _model_file_line(found: ModelFile) -> str:
    where = f"model file {found.path} ({found.format}): its tensors have digest {found.digest.hex()[:16]}"
    if found.logged is None:
        return f"{where}, which is NOT any logged version (its card claims {found.claimed}): FAIL"
    return f"{where} = {found.logged} as logged (its card claims {found.claimed})"


def _author_line(author: AuthorSummary) -> str:
    seqs = author.seqs
    if author.failures:
        state = f"FAILED: {author.failures[0]}" + (f" (+{len(author.failures) - 1} more)" if len(author.failures) > 1 else "")
    else:
        state = "chain valid"
    if author.forked_seqs:
        state += f"; FORKED at seq {', '.join(map(str, author.forked_seqs))}"
    own = f"own log at {author.own_log.site}" if author.own_log else "own log not given"
    copies = ", ".join(f"{log.site} ({len(log.entries)})" for log in author.copies) or "none"
    return f"  {author.name:<14} {len(seqs):>4} entries, head #{max(seqs, default=0):<4} {state}; {own}; copies at {copies}"


def _fork_lines(fork: Fork) -> list[str]:
    lines = [f"  FORK {fork.author}#{fork.seq}: {len(fork.entries)} signed entries"]
    for forked in fork.entries:
        body = forked.entry.body
        lines.append(f"    entry {forked.entry.hash.hex()[:16]} model {body.digest.hex()[:16]} round {body.round} samples {body.samples}")
        lines += [f"      in {path}" for path in forked.logs] or ["      in no given log"]
    lines += [f"    evidence at {site}: {path}" for site, path in fork.evidence] or ["    evidence: no site holds an evidence file for it"]
    return lines


def _provenance_lines(provenance: Provenance) -> list[str]:
    model = provenance.model
    lines = [f"provenance of {model.label} (model {model.digest.hex()[:16]}): {len(provenance.versions)} versions"]
    lines += [_version_line(version) for version in provenance.versions]
    lines.append("contributions:")
    for author, share in provenance.contributions().items():
        per = "-".join(map(str, sorted({min(share.samples_per_version), max(share.samples_per_version)})))
        lines.append(f"  {author:<14} {share.versions:>4} versions {share.samples:>7} samples ({per} per version)")
    problems = provenance.problems
    if problems:
        lines.append(f"  {len(problems)} ancestors missing or mismatched")
    return lines


def _version_line(version: Version) -> str:
    marks = " FORKED" if version.forked else ""
    if version.status == "missing":
        return f"  {version.label:<16} MISSING: in none of the given logs (model {version.digest.hex()[:12]}){marks}"
    if version.status == "digest_mismatch":
        return f"  {version.label:<16} DIGEST MISMATCH: its child names model {version.digest.hex()[:12]}, its entry holds another{marks}"
    body = version.entry.body
    parents = ", ".join(f"{author}#{seq}" for author, seq in version.parents) or "initial model"
    return f"  {version.label:<16} round {body.round:<4} {body.kind} samples {body.samples:<6} model {body.digest.hex()[:12]}{marks} <- {parents}"


# --------------------------------------------------------------------------- JSON


def audit_json(audit: Audit) -> dict[str, Any]:
    report = audit.verification
    document: dict[str, Any] = {
        "ok": audit.ok,
        "sites": [site.name for site in report.sites],
        "logs_checked": report.logs_checked,
        "entries_checked": report.entries_checked,
        "authors": [_author_json(author) for author in audit.authors],
        "forks": [_fork_json(fork) for fork in audit.forks],
        "other_failures": [_failure_json(failure) for failure in audit.other_failures],
        "republished": [{"author": r.author, "seq": r.seq, "source": r.source, "source_seq": r.source_seq} for r in audit.republished],
    }
    if audit.model_file:
        found = audit.model_file
        document["model_file"] = {"path": str(found.path), "format": found.format, "digest": found.digest.hex(),
                                  "claimed": found.claimed, "logged": found.logged}
    if audit.provenance:
        document["provenance"] = _provenance_json(audit.provenance)
    return document


def _failure_json(failure: Failure) -> dict[str, str]:
    return {"where": failure.where, "reason": failure.reason, "detail": failure.detail}


def _log_json(log: LogSeen) -> dict[str, Any]:
    return {"site": log.site, "path": str(log.path), "entries": len(log.entries), "ok": log.ok}


def _author_json(author: AuthorSummary) -> dict[str, Any]:
    seqs = author.seqs
    return {
        "name": author.name,
        "entries": len(seqs),
        "head_seq": max(seqs, default=0),
        "chain_valid": not author.failures,
        "first_failure": _failure_json(author.failures[0]) if author.failures else None,
        "failures": [_failure_json(f) for f in author.failures],
        "forked_seqs": author.forked_seqs,
        "own_log": _log_json(author.own_log) if author.own_log else None,
        "copies": [_log_json(log) for log in author.copies],
    }


def _entry_json(entry: SignedEntry) -> dict[str, Any]:
    body = entry.body
    return {"hash": entry.hash.hex(), "digest": body.digest.hex(), "kind": body.kind, "round": body.round, "samples": body.samples}


def _fork_json(fork: Fork) -> dict[str, Any]:
    entries = [_entry_json(f.entry) | {"logs": [str(p) for p in f.logs], "evidence": [_evidence_json(e) for e in f.evidence]} for f in fork.entries]
    return {"author": fork.author, "seq": fork.seq, "entries": entries, "evidence": [_evidence_json(e) for e in fork.evidence]}


def _evidence_json(held: tuple[str, Path]) -> dict[str, str]:
    site, path = held
    return {"site": site, "path": str(path)}


def _provenance_json(provenance: Provenance) -> dict[str, Any]:
    versions = []
    for version in provenance.versions:
        item: dict[str, Any] = {"author": version.author, "seq": version.seq, "digest": version.digest.hex(), "status": version.status, "forked": version.forked}
        if version.entry is not None:
            body = version.entry.body
            item |= {"round": body.round, "kind": body.kind, "samples": body.samples, "parents": [{"author": a, "seq": s} for a, s in version.parents]}
        versions.append(item)
    contributions = {
        author: {"versions": share.versions, "samples": share.samples, "samples_per_version": sorted(share.samples_per_version)}
        for author, share in provenance.contributions().items()
    }
    model = provenance.model
    return {"model": {"author": model.author, "seq": model.seq, "digest": model.digest.hex()}, "versions": versions, "contributions": contributions, "problems": len(provenance.problems)}
