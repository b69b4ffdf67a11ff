"""A site's manifest versions on disk, and which one is current.

    federation/manifest.json (+ .sigs.json)   version 1, the genesis; its SHA-256 is the federation id
    federation/v0002.json (+ .sigs.json)      each later version, valid after the one before it
    evidence/manifest-v0002-<sha256 prefix>.json (+ .sigs.json)
                                              two different valid manifests with one version number

The current version is the highest whose chain back to the genesis verifies
(swarm.manifest_chain). Versions are only ever added, in order, after they verify; the
signatures file is written before the manifest, so a reader that finds a manifest finds its
signatures. A second valid manifest for a version already held is equivocation by its
signers: the first stays, both are kept as evidence, and ManifestEquivocation is raised."""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .atomic import write_atomic
from .errors import ManifestError, SwarmError
from .manifest import Manifest, SignedManifest, load_manifest, save_manifest, signatures_document, signatures_path
from .manifest_chain import approval, check_keys_not_reused, check_next_version

log = logging.getLogger("swarm.manifest")


class ManifestEquivocation(SwarmError):
    """Two different manifests for one version, both signed by enough members: some members
    signed two futures for the federation. The first one stays; both are kept as evidence."""

    def __init__(self, version: int, held: SignedManifest, received: SignedManifest, signed_both: list[str], evidence: Path) -> None:
        self.version = version
        self.held = held
        self.received = received
        self.signed_both = signed_both
        super().__init__(
            f"two different valid manifests for version {version} (keeping {held.manifest.digest.hex()[:12]}, refusing "
            f"{received.manifest.digest.hex()[:12]}); signed both: {', '.join(signed_both) or 'nobody'}; evidence in {evidence}"
        )


@dataclass(frozen=True)
class Members:
    """Everyone any version listed: what logs written over the federation's life are
    checked against (an entry was signed while its author was a member)."""

    federation_id: bytes
    names: dict[bytes, str]  # every signing key any version listed -> member name
    keys: dict[str, tuple[bytes, ...]]  # member name -> its signing keys, oldest first

    def is_member_key(self, key: bytes) -> bool:
        return key in self.names

    def key_history(self, key: bytes) -> tuple[bytes, ...]:
        return self.keys.get(self.names.get(key, ""), ())


class ManifestHistory:
    def __init__(self, genesis_path: Path, evidence_dir: Path, versions: list[SignedManifest]) -> None:
        self.genesis_path = Path(genesis_path)
        self.directory = self.genesis_path.parent
        self.evidence_dir = Path(evidence_dir)
        self.versions = versions  # 1..current, each valid after the one before

    @classmethod
    def open(cls, genesis_path: Path, evidence_dir: Path) -> ManifestHistory:
        genesis = load_manifest(genesis_path)
        genesis.verify()
        history = cls(genesis_path, evidence_dir, [genesis])
        history.read_new()
        return history

    @property
    def current(self) -> SignedManifest:
        return self.versions[-1]

    def version(self, number: int) -> SignedManifest | None:
        return self.versions[number - 1] if 1 <= number <= len(self.versions) else None

    def members(self) -> Members:
        names: dict[bytes, str] = {}
        keys: dict[str, tuple[bytes, ...]] = {}
        for version in self.versions:
            for member in version.manifest.members:
                names[member.signing_key] = member.name
                if member.signing_key not in keys.get(member.name, ()):
                    keys[member.name] = (*keys.get(member.name, ()), member.signing_key)
        return Members(self.current.manifest.federation_id, names, keys)

    def last_member(self, name: str) -> Manifest | None:
        """The latest version that lists `name` (a removed site's log was written under it)."""
        return next((v.manifest for v in reversed(self.versions) if v.manifest.member_or_none(name) is not None), None)

    def path(self, number: int) -> Path:
        return self.genesis_path if number == 1 else self.directory / f"v{number:04d}.json"

    def read_new(self) -> list[SignedManifest]:
        """Versions after the current one that another process (`swarm-node federation
        install`) put on disk, checked in order; stops at the first missing or invalid one."""
        found = []
        while (path := self.path(len(self.versions) + 1)).exists():
            try:
                signed = load_manifest(path)
                self._check_next(signed)
            except ManifestError as exc:
                log.warning("%s: not a valid next version, ignored: %s", path, exc)
                break
            self.versions.append(signed)
            found.append(signed)
        return found

    def _check_next(self, signed: SignedManifest) -> None:
        check_keys_not_reused([v.manifest for v in self.versions], signed.manifest)
        check_next_version(self.current.manifest, signed)

    def add(self, signed: SignedManifest) -> bool:
        """Add the next version after checking it; False when it is held already. Raises
        ManifestError when it is not valid here, ManifestEquivocation when another valid
        manifest holds its version."""
        with self._locked():
            self.read_new()
            number = signed.manifest.version
            held = self.version(number)
            if held is not None:
                if held.manifest.raw == signed.manifest.raw:
                    return False
                raise self._conflict(held, signed)
            self._check_next(signed)  # also names a gap or a foreign federation
            path = self.path(number)
            write_atomic(signatures_path(path), signatures_document(signed))
            write_atomic(path, signed.manifest.raw)
            self.versions.append(signed)
            return True

    def _conflict(self, held: SignedManifest, received: SignedManifest) -> SwarmError:
        number = held.manifest.version
        if number == 1:
            return ManifestError("manifest: a different version 1 is another federation (another federation id); this site belongs to the installed one")
        previous = self.versions[number - 2].manifest
        second = check_next_version(previous, received)  # raises ManifestError when not valid
        first = approval(previous, held)
        self.evidence_dir.mkdir(parents=True, exist_ok=True)
        for signed in (held, received):
            save_manifest(self.evidence_dir / f"manifest-v{number:04d}-{signed.manifest.digest.hex()[:16]}.json", signed)
        signed_both = sorted(set(first.approvers) & set(second.approvers))
        return ManifestEquivocation(number, held, received, signed_both, self.evidence_dir)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time: a running node and `swarm-node federation install`."""
        fd = os.open(self.directory / ".versions.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def changed_since(self, stamp: int | None) -> tuple[bool, int | None]:
        """(whether the manifests directory changed since `stamp`, the new stamp): a cheap
        test for a version installed while the node runs."""
        try:
            now = os.stat(self.directory).st_mtime_ns
        except OSError:
            return False, stamp
        return now != stamp, now


def load_versions(paths: list[Path]) -> list[SignedManifest]:
    """Manifests from files or directories (every *.json that is not a .sigs.json), one per
    version, sorted by version: the history a later version is checked against."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.glob("*.json") if not p.name.endswith(".sigs.json"))
        else:
            files.append(path)
    by_version: dict[int, tuple[Path, SignedManifest]] = {}
    for path in files:
        signed = load_manifest(path)
        number = signed.manifest.version
        if number in by_version and by_version[number][1].manifest.raw != signed.manifest.raw:
            raise ManifestError(f"--history: {by_version[number][0]} and {path} are two different manifests for version {number}; pass only the installed one")
        by_version.setdefault(number, (path, signed))
    return [signed for _, (_, signed) in sorted(by_version.items())]
