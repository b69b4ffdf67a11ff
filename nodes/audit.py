"""Auditing update logs: `swarm-node log verify`, `swarm-node log show`, and the
verification step of `swarm-node audit` (nodes.audit_report).

Each site's own log is checked strictly (records, signatures, chain, sequence numbers,
federation id, membership in any of the site's manifest versions (a log may go on under a
member's rotated key), and each entry's model digest against the checkpoint
stored for it, loaded as strictly as the node loads it on restart). Copies of neighbours'
entries kept under `peers/` are checked the same way, minus checkpoints. Across sites, every
copy must be byte-identical to the author's own entry (anything else is a fork), must be in
the author's own log when that log is audited too, and every parent an entry names must
exist with that digest.

Failure reasons, besides swarm.log's: `manifest`, `wrong_author`, `bad_checkpoint` (damaged
checkpoint file), `digest_mismatch` (checkpoint tensors differ from the stored or the logged
digest), `missing_checkpoint`, `fork`, `missing_in_author_log`, `unknown_parent`,
`parent_digest_mismatch`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from swarm.checkpoint import CheckpointError, load_checkpoint
from swarm.errors import ConfigError, LogError, SwarmError
from swarm.log import SignedEntry, open_entry, read_records, verify_log_file
from swarm.manifest import Manifest, load_manifest
from swarm.manifest_history import ManifestHistory, Members

from .site import SiteDir


@dataclass
class Failure:
    where: str
    reason: str
    detail: str = ""
    author: str = ""  # the member whose log or entry is at fault, when known

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class LogSeen:
    """One log file the audit read: at which site, holding whose entries."""

    path: Path
    site: str  # the site whose directory holds the file
    author: str  # whose entries it holds: the site itself for its own log
    entries: list[SignedEntry]  # those that passed every check, in file order
    ok: bool

    @property
    def own(self) -> bool:
        return self.site == self.author


@dataclass
class SiteSeen:
    site: SiteDir
    name: str
    manifest: Manifest


@dataclass
class AuditReport:
    """What `verify_sites` found, and what it read (so that later steps of an audit need not
    read or verify anything again)."""

    logs_checked: int = 0
    entries_checked: int = 0
    failures: list[Failure] = field(default_factory=list)
    logs: list[LogSeen] = field(default_factory=list)
    sites: list[SiteSeen] = field(default_factory=list)
    names: dict[bytes, str] = field(default_factory=dict)  # signing key -> member name

    @property
    def ok(self) -> bool:
        return not self.failures


def find_sites(paths: Iterable[Path]) -> list[Path]:
    """Site roots named by PATHs: a site directory, a log file inside one (`log/updates.log`
    or `peers/<name>.log`), or any directory holding site directories (a scenario's output)."""
    roots: list[Path] = []
    for path in map(Path, paths):
        if path.is_file() and path.parent.name in ("log", "peers"):
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
    """The digest of checkpoint `seq`, checked exactly as the node checks it on restart
    (`load_checkpoint(verify=True)`: structure, header crc, zero padding, and tensors against
    the stored digest); None if there is no checkpoint. LogError if it is damaged."""
    path = site.checkpoint_path(seq)
    if not path.exists():
        return None
    try:
        _flat, digest, _meta = load_checkpoint(path, verify=True)
    except CheckpointError as exc:
        raise LogError(exc.reason, str(exc)) from None
    except OSError as exc:
        raise LogError("bad_checkpoint", f"{path}: {exc.strerror or exc}") from None
    return digest


def verify_sites(paths: Iterable[Path]) -> AuditReport:
    report = AuditReport()
    own_entries: dict[tuple[bytes, int], SignedEntry] = {}
    audited: set[bytes] = set()  # authors whose own log verified: their whole history is here
    copies: list[tuple[Path, SignedEntry]] = []
    names = report.names
    for root in find_sites(paths):
        site = SiteDir(root)
        try:
            history = ManifestHistory.open(site.manifest_path, site.evidence_dir)  # versions 1..current
            config = site.load_config()
            (history.last_member(config.name) or history.current.manifest).member(config.name)
        except SwarmError as exc:
            report.failures.append(Failure(str(site.manifest_path), "manifest", str(exc)))
            continue
        federation = history.current.manifest
        members = history.members()
        my_keys = members.keys[config.name]
        names.update(members.names)
        report.sites.append(SiteSeen(site, config.name, federation))
        own = LogSeen(site.log_path, config.name, config.name, [], False)
        result = _verify_one(report, own, members, lambda seq, s=site: _stored_digest(s, seq))
        if result is not None:
            if any(e.author not in my_keys for e in result):
                report.failures.append(Failure(str(site.log_path), "wrong_author", f"entries not signed by {config.name}, whose site this is", config.name))
            else:
                audited.update(my_keys)
            own_entries.update({(e.author, e.seq): e for e in result})
        for peer_log in sorted(site.peers_dir.glob("*.log")) if site.peers_dir.is_dir() else []:
            seen = LogSeen(peer_log, config.name, peer_log.stem, [], False)
            copies += [(peer_log, e) for e in _verify_one(report, seen, members, None) or []]
    _cross_check(report, own_entries, audited, copies, names)
    return report


def _verify_one(report: AuditReport, seen: LogSeen, members: Members, digests) -> list[SignedEntry] | None:
    report.logs_checked += 1
    result = verify_log_file(seen.path, federation=members.federation_id, is_member=members.is_member_key, checkpoint_digest=digests, key_history=members.key_history)
    report.entries_checked += result.entries_checked
    seen.entries, seen.ok = result.entries, result.ok
    report.logs.append(seen)
    if not result.ok:
        failure = result.failure
        report.failures.append(Failure(failure.where or str(seen.path), failure.reason, failure.detail, seen.author))
        return None
    return result.entries


def _cross_check(
    report: AuditReport,
    own: dict[tuple[bytes, int], SignedEntry],
    audited: set[bytes],
    copies: list[tuple[Path, SignedEntry]],
    names: dict[bytes, str],
) -> None:
    for path, copy in copies:
        original = own.get((copy.author, copy.seq))
        if original is not None and original.envelope != copy.envelope:
            report.failures.append(Failure(f"{path} seq {copy.seq}", "fork", f"differs from {names.get(copy.author, '?')}'s own entry {copy.seq}", names.get(copy.author, "")))
        elif original is None and copy.author in audited:
            # A neighbour holds a signed, published version that its author's log lacks: the
            # author lost (or cut) history, and could re-publish other entries under that seq.
            report.failures.append(
                Failure(f"{path} seq {copy.seq}", "missing_in_author_log", f"{names.get(copy.author, '?')}'s own log has no entry {copy.seq}", names.get(copy.author, ""))
            )
    for (author, seq), entry in own.items():
        for parent in entry.body.parents:
            if parent.author not in audited:
                continue  # that author's log was not given to us (or failed its own audit)
            source = own.get((parent.author, parent.seq))
            who = f"{names.get(author, '?')} seq {seq}"
            if source is None:
                report.failures.append(Failure(who, "unknown_parent", f"{names.get(parent.author, '?')} seq {parent.seq} is not in its log", names.get(author, "")))
            elif source.body.digest != parent.digest:
                report.failures.append(Failure(who, "parent_digest_mismatch", f"{names.get(parent.author, '?')} seq {parent.seq}", names.get(author, "")))


def describe_log(path: Path) -> list[str]:
    """A readable history of one site's log: who published which version, merged from whom."""
    site = SiteDir(find_sites([path])[0])
    manifest = load_manifest(site.manifest_path).manifest
    names = ManifestHistory.open(site.manifest_path, site.evidence_dir).members().names  # every version's keys
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
