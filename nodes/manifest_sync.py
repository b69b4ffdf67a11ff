"""Keeping a running node on the newest valid manifest version.

A new version reaches a node two ways: `swarm-node federation install` puts it in the site
directory (the node looks at the directory's modification time at most once a second), or
a neighbour sends it (`manifest` messages). Either way it is checked against the version
before it (swarm.manifest_chain) and written to the site before the node adopts it.

What goes out is bounded: a node sends its current version to its neighbours when it adopts
it and every `announce_interval` seconds while its version is above 1 (so a neighbour that
was down catches up); to a neighbour whose message shows it is behind, the versions it lacks;
to one that sent a version too new to place, its own current one (the neighbour answers with
what is missing). Each neighbour gets such an answer at most once per `reply_interval`.

No sockets here: `receive` and `poll_disk` say what happened and what to send."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from swarm.errors import ManifestError
from swarm.manifest import Manifest, SignedManifest, parse_manifest, signatures_document, with_signatures
from swarm.manifest_history import ManifestEquivocation, ManifestHistory
from swarm.messages import ManifestUpdate

log = logging.getLogger("swarm.node")


@dataclass
class SyncResult:
    adopted: list[SignedManifest] = field(default_factory=list)
    reply: list[SignedManifest] = field(default_factory=list)  # to send back to the sender, in order
    rejected: tuple[str, str] | None = None  # (reason, detail)
    equivocation: ManifestEquivocation | None = None
    dropped: str | None = None  # not an offence, e.g. "manifest_gap"


def update_message(signed: SignedManifest) -> ManifestUpdate:
    return ManifestUpdate(signed.manifest.raw, signatures_document(signed))


PLAN_SECTIONS = ("rounds", "protocol", "topology", "model", "training", "task", "merge")


@dataclass(frozen=True)
class VersionChange:
    """What version `new` changes for the node of site `me` running under `old`. Applied at
    once: removals (the members' messages refused, their keys off the allow-list) and the
    neighbours' new keys and endpoints. Not while running: this site's own card (the node
    stops: `halt`), new neighbour lists and plan changes (`later`: from the next start)."""

    version: int
    removed: tuple[str, ...]
    joined: tuple[str, ...]
    rotated: tuple[str, ...]  # members with a new signing key
    halt: str | None  # "removed" or "own_card_changed": the node stops
    later: tuple[str, ...]  # what applies from the next start, one sentence each

    def summary(self) -> str:
        parts = [f"{what}: {', '.join(names)}" for what, names in (("removed", self.removed), ("joined", self.joined), ("new signing key", self.rotated)) if names]
        return "; ".join(parts) or "no member changes"


def version_change(old: Manifest, new: Manifest, me: str) -> VersionChange:
    old_names, new_names = {m.name for m in old.members}, {m.name for m in new.members}
    rotated = tuple(sorted(m.name for m in new.members if (o := old.member_or_none(m.name)) is not None and o.signing_key != m.signing_key))
    mine = new.member_or_none(me)
    halt = "removed" if mine is None else "own_card_changed" if mine != old.member(me) else None
    later = []
    if mine is not None:
        old_peers, new_peers = set(old.plan.neighbours[me]), set(new.plan.neighbours[me])
        if old_peers != new_peers or old.plan.schedule != new.plan.schedule:
            later.append(f"new neighbours ({', '.join(sorted(new_peers))}): members it removes are refused at once; the new neighbour lists apply from the next start")
        sections = [key for key in PLAN_SECTIONS if getattr(old.plan, key, None) != getattr(new.plan, key, None)]
        if sections:
            later.append(f"a new training plan ({', '.join(sections)}): this run keeps its plan; the new one applies from the next start")
    return VersionChange(new.version, tuple(sorted(old_names - new_names)), tuple(sorted(new_names - old_names)), rotated, halt, tuple(later))


class ManifestSync:
    def __init__(
        self,
        history: ManifestHistory,
        clock: Callable[[], float],
        announce_interval: float = 60.0,
        reply_interval: float = 10.0,
        disk_interval: float = 1.0,
    ) -> None:
        self.history = history
        self.clock = clock
        self.announce_interval = announce_interval
        self.reply_interval = reply_interval
        self.disk_interval = disk_interval
        self._last_announce = clock()
        self._last_reply: dict[str, float] = {}
        self._last_disk_check = -1e18
        _, self._disk_stamp = history.changed_since(None)
        self._refused: set[bytes] = set()  # digests of manifests already refused as equivocation
        self._adopted = len(history.versions)  # versions the node has been told to adopt

    @property
    def current(self) -> SignedManifest:
        return self.history.current

    def poll_disk(self) -> list[SignedManifest]:
        """Versions installed in the site since the last look (cheap: one stat a second)."""
        now = self.clock()
        if now - self._last_disk_check < self.disk_interval:
            return []
        self._last_disk_check = now
        changed, self._disk_stamp = self.history.changed_since(self._disk_stamp)
        if changed:
            self.history.read_new()
        return self._fresh()

    def _fresh(self) -> list[SignedManifest]:
        """Versions the history gained since the node last adopted, however they came: from
        disk, from a peer, or read from disk while a peer's version was being added."""
        fresh = self.history.versions[self._adopted :]
        self._adopted = len(self.history.versions)
        return fresh

    def announce_due(self) -> bool:
        """Time to send the current version to every neighbour again."""
        now = self.clock()
        if self.current.manifest.version == 1 or now - self._last_announce < self.announce_interval:
            return False
        self._last_announce = now
        return True

    def adopted_now(self) -> None:
        """The node just sent its new version to everyone: the next announcement can wait."""
        self._last_announce = self.clock()

    def receive(self, peer: str, msg: ManifestUpdate) -> SyncResult:
        versions = self.history.versions
        held = next((v for v in versions if v.manifest.raw == msg.manifest), None)
        if held is not None:
            behind = held.manifest.version < self.current.manifest.version
            return SyncResult(reply=self._reply(peer, versions[held.manifest.version :]) if behind else [])
        try:
            manifest = parse_manifest(msg.manifest)
            signed = with_signatures(manifest, msg.signatures, f"signatures from {peer}")
        except ManifestError as exc:
            return SyncResult(rejected=("bad_manifest", str(exc)))
        if manifest.digest in self._refused:
            return SyncResult(dropped="known_manifest_equivocation")
        if manifest.version > self.current.manifest.version + 1 and manifest.federation_id == self.current.manifest.federation_id:
            # We lack the versions in between: our own current one makes the peer send them.
            return SyncResult(reply=self._reply(peer, [self.current]), dropped="manifest_gap")
        try:
            self.history.add(signed)
        except ManifestEquivocation as exc:
            self._refused.add(manifest.digest)
            return SyncResult(equivocation=exc, adopted=self._fresh())
        except ManifestError as exc:
            return SyncResult(rejected=("bad_manifest", str(exc)), adopted=self._fresh())
        return SyncResult(adopted=self._fresh())

    def _reply(self, peer: str, versions: list[SignedManifest]) -> list[SignedManifest]:
        now = self.clock()
        if now - self._last_reply.get(peer, -1e18) < self.reply_interval:
            return []
        self._last_reply[peer] = now
        return versions
