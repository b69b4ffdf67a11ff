"""What a node keeps on disk: its own published versions (update log + one checkpoint per
entry) and verified copies of its neighbours' log entries.

Publishing order makes a crash at any moment safe: the checkpoint is written and fsynced
first, then the log entry is appended and fsynced, and only then is the version announced.
On start, a checkpoint newer than the log head is an orphan of an interrupted publish and is
removed; the head's checkpoint must exist and match the head's digest."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from swarm.checkpoint import load_checkpoint, save_checkpoint
from swarm.errors import LogError
from swarm.identity import SigningKey
from swarm.log import EntryBody, ParentRef, SignedEntry, UpdateLog, open_entry, sign_entry, verify_extension
from swarm.manifest import Manifest
from swarm.manifest_chain import key_history
from swarm.tensors import FlatModel, model_digest

from .site import SiteDir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published:
    entry: SignedEntry
    flat: FlatModel  # the shared tensors, as signed and sent
    local_flat: FlatModel | None = None  # tensors that never leave the site


class ForkDetected(LogError):
    """A neighbour sent a validly signed entry that differs from the one we hold for that
    seq: both envelopes are the evidence (see swarm.evidence)."""

    def __init__(self, peer: str, held: bytes, received: bytes, seq: int) -> None:
        super().__init__("fork", f"{peer} sent a different entry for seq {seq} than it sent before")
        self.held = held
        self.received = received


def earlier_keys(versions: Sequence[Manifest]) -> dict[bytes, tuple[bytes, ...]]:
    """Each current member's signing key -> the keys it had before (manifest versions
    1..current, oldest first): its log's older entries are signed with those."""
    out = {}
    for member in versions[-1].members:
        keys = key_history(versions, member.name)
        out[member.signing_key] = tuple(k for k in keys if k != member.signing_key)
    return out


class VersionStore:
    """`history`: the manifest versions 1..current (default: just `manifest`), so that logs
    signed partly with a member's earlier signing key still open."""

    def __init__(self, site: SiteDir, manifest: Manifest, key: SigningKey, neighbours: Sequence[str], history: Sequence[Manifest] = ()) -> None:
        self.site = site
        self.manifest = manifest
        self.key = key
        self._learn_keys(history or [manifest])
        self.own_log = UpdateLog.open(site.log_path, manifest.federation_id, key.public, self.earlier_keys.get(key.public, ()))
        if self.own_log.repaired_bytes:
            log.warning("update log: removed a torn last record (%d bytes) left by a crash", self.own_log.repaired_bytes)
        self.peer_logs: dict[str, UpdateLog] = {}
        try:
            self._remove_orphans()
            self.latest: Published | None = self._load_head()
            for peer in neighbours:
                current = manifest.member(peer).signing_key
                self.peer_logs[peer] = UpdateLog.open(site.peer_log_path(peer), manifest.federation_id, current, self.earlier_keys.get(current, ()))
        except BaseException:
            self.close()  # release the logs' locks for whoever handles the error
            raise

    def _learn_keys(self, versions: Sequence[Manifest]) -> None:
        self.earlier_keys: Mapping[bytes, tuple[bytes, ...]] = earlier_keys(versions)
        self.names = {m.signing_key: m.name for v in versions for m in v.members}  # every key any version listed

    def use_manifest(self, manifest: Manifest, versions: Sequence[Manifest]) -> None:
        """Go on under a new manifest version (versions 1..it): a neighbour whose signing key
        changed continues its log under the new key; entries by the old one are refused."""
        self.manifest = manifest
        self._learn_keys(versions)
        for peer, peer_log in self.peer_logs.items():
            member = manifest.member_or_none(peer)
            if member is not None and member.signing_key != peer_log.author:
                peer_log.rotate_to(member.signing_key)

    # -- own versions --------------------------------------------------------------------------

    @property
    def head(self) -> SignedEntry | None:
        return self.own_log.head

    def _remove_orphans(self) -> None:
        directory = self.site.checkpoints_dir
        directory.mkdir(parents=True, exist_ok=True)
        head_seq = self.head.seq if self.head else 0
        for path in directory.iterdir():
            if path.name.startswith("."):  # a temporary file of an interrupted atomic write
                path.unlink()
        for local in (False, True):
            for seq in self.site.checkpoint_seqs(local):
                if seq > head_seq:
                    log.warning("checkpoint %d was written but never logged (crash while publishing); removing it", seq)
                    (self.site.local_checkpoint_path(seq) if local else self.site.checkpoint_path(seq)).unlink()

    def _load_head(self) -> Published | None:
        head = self.head
        if head is None:
            return None
        path = self.site.checkpoint_path(head.seq)
        if not path.exists():
            raise LogError("missing_checkpoint", f"{path} is gone; restore it from backup", where=str(self.site.log_path))
        flat, digest, _meta = load_checkpoint(path, verify=True)
        if digest != head.body.digest:
            raise LogError("digest_mismatch", f"{path} does not hold the model of the last log entry", where=str(self.site.log_path))
        local_path = self.site.local_checkpoint_path(head.seq)
        local_flat = load_checkpoint(local_path, verify=True)[0] if local_path.exists() else None
        return Published(head, flat, local_flat)

    def publish(
        self,
        round_no: int,
        flat: FlatModel,
        digest: bytes,
        samples: int,
        parents: Sequence[ParentRef],
        metrics: dict[str, float],
        local_flat: FlatModel | None = None,
    ) -> Published:
        head = self.head
        seq = head.seq + 1 if head else 1
        if local_flat is not None:
            save_checkpoint(self.site.local_checkpoint_path(seq), local_flat, model_digest(local_flat), {"seq": seq, "local": True})
        save_checkpoint(self.site.checkpoint_path(seq), flat, digest, {"seq": seq, "round": round_no})
        body = EntryBody(
            federation=self.manifest.federation_id,
            author=self.key.public,
            seq=seq,
            prev=head.hash if head else bytes(32),
            kind="update",
            digest=digest,
            samples=samples,
            parents=tuple(parents),
            round=round_no,
            metrics=metrics,
            timestamp=time.time(),
        )
        entry = sign_entry(body, self.key)
        self.own_log.append(entry)
        self.latest = Published(entry, flat, local_flat)
        return self.latest

    def merged_versions(self) -> dict[str, int]:
        """V_i of BrainTorrent, rebuilt from our own log: neighbour -> last version merged."""
        merged: dict[str, int] = {}
        own = set(self.own_log.keys)
        for entry in self.own_log.entries:
            for parent in entry.body.parents:
                name = self.names.get(parent.author)
                if name is not None and parent.author not in own:
                    merged[name] = max(merged.get(name, 0), parent.seq)
        return merged

    # -- neighbours' entries ---------------------------------------------------------------------

    def peer_heads(self) -> dict[str, int]:
        return {peer: (plog.head.seq if plog.head else 0) for peer, plog in self.peer_logs.items()}

    def check_peer_entries(self, peer: str, envelopes: Sequence[bytes]) -> tuple[list[SignedEntry], SignedEntry]:
        """Verify entries a neighbour sent: the ones we already hold must be byte-identical
        (a different entry at a known position is a fork), the new ones must extend our copy
        of its chain. Returns (new entries, the last entry sent). Raises LogError."""
        peer_log = self.peer_logs[peer]
        held = peer_log.head.seq if peer_log.head else 0
        opened: list[SignedEntry] = []
        new_entries: list[SignedEntry] = []  # opened (signature checked) once, here
        for envelope in envelopes:
            entry = open_entry(envelope)
            if entry.seq <= held:
                held_envelope = peer_log.find(entry.seq).envelope
                if held_envelope != envelope:
                    raise ForkDetected(peer, held_envelope, envelope, entry.seq)
                opened.append(entry)
            else:
                new_entries.append(entry)
        current = self.manifest.member(peer).signing_key
        earlier = self.earlier_keys.get(current, ())
        try:
            new = verify_extension(peer_log.head, new_entries, self.manifest.federation_id, current, earlier_keys=earlier)
        except LogError as exc:
            if exc.reason == "revoked_key" or (exc.reason == "author_mismatch" and any(e.author in earlier for e in new_entries)):
                raise LogError("revoked_key", f"{peer} signed with a key that a manifest version replaced") from None
            raise
        last = new[-1] if new else (opened[-1] if opened else None)
        if last is None:
            raise LogError("no_entries", f"{peer} sent a model without its log entry")
        return new, last

    def append_peer_entries(self, peer: str, entries: Sequence[SignedEntry]) -> None:
        """Keep what check_peer_entries returned: after a rotation it may start with entries
        signed with the neighbour's earlier key, vouched for by the new-key entry after them."""
        self.peer_logs[peer].extend(entries)

    def entries_after(self, have: int, limit: int) -> list[bytes]:
        """Our entries after seq `have` (at least the head, so the model always has its entry)."""
        head = self.head
        if head is None:
            return []
        start = min(have, head.seq - 1)
        return [e.envelope for e in self.own_log.since(start)][-limit:]

    def close(self) -> None:
        self.own_log.close()
        for peer_log in self.peer_logs.values():
            peer_log.close()
