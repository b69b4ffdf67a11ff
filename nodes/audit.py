"""Auditing update logs: `swarm-node log verify` and `swarm-node log show`.

Each site's own log is checked strictly (records, signatures, chain, sequence numbers,
federation id, manifest membership, and each entry's model digest against the checkpoint
stored for it). Copies of neighbours' entries kept under `peers/` are checked the same way,
minus checkpoints. Across sites, every copy must be byte-identical to the author's own entry
(anything else is a fork) and every parent an entry names must exist with that digest."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from swarm.checkpoint import CheckpointError, checkpoint_digest
from swarm.errors import ConfigError, LogError, SwarmError
from swarm.log import SignedEntry, open_entry, read_records, verify_log_file
from swarm.manifest import Manifest, load_manifest

from .site import SiteDir


@dataclass
class Failure:
    where: str
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class AuditReport:
    logs_checked: int = 0
    entries_checked: int = 0
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def find_sites(paths: Iterable[Path]) -> list[Path]:
    """Site roots named by PATHs: a site directory, a log file inside one, or any directory
    holding site directories (a scenario's output)."""
    roots: list[Path] = []
    for path in map(Path, paths):
        if path.is_file() and path.parent.name == "log":
            roots.append(path.parent.parent)
        elif (path / "site.toml").is_file():
            roots.append(path)
        elif path.is_dir():
            roots += sorted(p.parent.parent for p in path.rglob("log/updates.log"))
        else:
            raise ConfigError(f"{path}: not a log file, a site directory or a directory of sites; check the path")
    unique = list(dict.fromkeys(r.resolve() for r in roots))
    if not unique:
        raise ConfigError("no update logs found under the given paths; pass a site directory or a scenario output directory")
    return unique


def _read_entries(path: Path) -> list[SignedEntry]:
    envelopes, _torn = read_records(path)
    return [open_entry(e) for e in envelopes]


def _stored_digest(site: SiteDir, seq: int) -> bytes | None:
    path = site.checkpoint_path(seq)
    if not path.exists():
        return None
    try:
        return checkpoint_digest(path)
    except CheckpointError:
        return b"unreadable checkpoint"


def verify_sites(paths: Iterable[Path]) -> AuditReport:
    report = AuditReport()
    own_entries: dict[tuple[bytes, int], SignedEntry] = {}
    copies: list[tuple[Path, SignedEntry]] = []
    names: dict[bytes, str] = {}
    for root in find_sites(paths):
        site = SiteDir(root)
        try:
            manifest = load_manifest(site.manifest_path)
            manifest.verify()
            config = site.load_config()
            me = manifest.manifest.member(config.name)
        except SwarmError as exc:
            report.failures.append(Failure(str(site.manifest_path), "manifest", str(exc)))
            continue
        federation = manifest.manifest
        names.update({m.signing_key: m.name for m in federation.members})
        result = _verify_one(report, site.log_path, federation, lambda seq, s=site: _stored_digest(s, seq))
        if result:
            if any(e.author != me.signing_key for e in result):
                report.failures.append(Failure(str(site.log_path), "wrong_author", f"entries not signed by {config.name}, whose site this is"))
            own_entries.update({(e.author, e.seq): e for e in result})
        for peer_log in sorted(site.peers_dir.glob("*.log")) if site.peers_dir.is_dir() else []:
            copies += [(peer_log, e) for e in _verify_one(report, peer_log, federation, None) or []]
    _cross_check(report, own_entries, copies, names)
    return report


def _verify_one(report: AuditReport, path: Path, manifest: Manifest, digests) -> list[SignedEntry] | None:
    report.logs_checked += 1
    result = verify_log_file(path, federation=manifest.federation_id, is_member=manifest.is_member_key, checkpoint_digest=digests)
    report.entries_checked += result.entries_checked
    if not result.ok:
        failure = result.failure
        report.failures.append(Failure(failure.where or str(path), failure.reason, failure.detail))
        return None
    return _read_entries(path)


def _cross_check(report: AuditReport, own: dict, copies: list[tuple[Path, SignedEntry]], names: dict[bytes, str]) -> None:
    authors_present = {author for author, _seq in own}
    for path, copy in copies:
        original = own.get((copy.author, copy.seq))
        if original is not None and original.envelope != copy.envelope:
            report.failures.append(Failure(f"{path} seq {copy.seq}", "fork", f"differs from {names.get(copy.author, '?')}'s own entry {copy.seq}"))
    for (author, seq), entry in own.items():
        for parent in entry.body.parents:
            if parent.author not in authors_present:
                continue  # that author's log was not given to us
            source = own.get((parent.author, parent.seq))
            who = f"{names.get(author, '?')} seq {seq}"
            if source is None:
                report.failures.append(Failure(who, "unknown_parent", f"{names.get(parent.author, '?')} seq {parent.seq} is not in its log"))
            elif source.body.digest != parent.digest:
                report.failures.append(Failure(who, "parent_digest_mismatch", f"{names.get(parent.author, '?')} seq {parent.seq}"))


def describe_log(path: Path) -> list[str]:
    """A readable history of one site's log: who published which version, merged from whom."""
    site = SiteDir(find_sites([path])[0])
    manifest = load_manifest(site.manifest_path).manifest
    names = {m.signing_key: m.name for m in manifest.members}
    lines = [f"federation {manifest.name} ({manifest.federation_id.hex()[:16]}), log {site.log_path}"]
    try:
        entries = _read_entries(site.log_path)
    except LogError as exc:
        raise ConfigError(f"{site.log_path}: cannot read ({exc}); run `swarm-node log verify` for details") from None
    for entry in entries:
        body = entry.body
        when = datetime.fromtimestamp(body.timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        metrics = " ".join(f"{k}={v:.4f}" for k, v in sorted(body.metrics.items()))
        parents = ", ".join(f"{names.get(p.author, p.author.hex()[:8])}#{p.seq}" for p in body.parents) or "initial model"
        lines.append(
            f"#{body.seq:<4} round {body.round:<4} {body.kind} by {names.get(body.author, '?')} at {when}Z "
            f"model {body.digest.hex()[:12]} samples {body.samples} {metrics}\n      merged from: {parents}"
        )
    return lines
