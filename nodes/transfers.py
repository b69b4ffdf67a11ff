"""The node's side of chunked transfers (swarm.transfer): the versions it serves, by digest,
and the one model it pulls from each neighbour.

Memory stays bounded by construction. Served chunks are views of the published snapshot,
so any number of neighbours pulling costs no copies, and each neighbour's send queue holds
at most a window of chunks (the transport's high-water mark). When the next version is
snapshot, it is copied into the same tensors (`reclaim`) once the transport has let go of
every chunk sent from them, so a sender holds its model and one snapshot, not two; only
while a neighbour is still pulling the served version does the new snapshot get fresh
memory, and the old version stays served until that pull goes quiet. A pull
writes into buffers of one model (recycled once a pulled model was merged), and a node keeps
at most one pull per neighbour: a new offer of the same digest resumes it, an offer of
another digest replaces it.

A node that stops mid-transfer (Ctrl-C, SIGTERM, a restart by its service manager) writes
what its pulls received to `SITE/incoming/<peer>.part` (`save`); after the restart, when the
neighbour offers the same version again, every leaf in the file that matches its signed hash
counts as received and only the rest is pulled. Writing at stop rather than as chunks
arrive keeps pulls at memory speed (a memory-mapped file made a 1 GiB pull 4x slower
here); a node killed with SIGKILL pulls again from scratch.

`serve` runs on the node's loop and `reclaim` on the training thread: a lock keeps a chunk
from being sent out of tensors that are being overwritten.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from swarm.atomic import write_atomic, write_sparse_atomic
from swarm.errors import RejectedMessage
from swarm.log import SignedEntry
from swarm.messages import Chunk
from swarm.tensors import TensorSpec
from swarm.transfer import Incoming, Offered, TransferSettings, check_offer

log = logging.getLogger("swarm.node")

# A version that a neighbour has pulled part of, and asked for within this long, is still
# being pulled: it is not overwritten by the next snapshot and stays served beside the new
# one, so a neighbour on a slow link finishes what it started (the sender then holds two
# snapshots for a while).
PULLED_RECENTLY_S = 10.0
REMEMBERED = 8  # per neighbour: digests of ended pulls, whose late chunks are not an offence


@dataclass
class Pull:
    peer: str
    req: int | None  # the model request it answers, None for a push
    entries: list[SignedEntry]  # verified, appended to the peer's log once the model is in
    last: SignedEntry  # signs the digest
    transfer: Incoming
    active: bool = True  # False: put aside (the protocol gave up); a new offer resumes it


class Transfers:
    def __init__(self, specs: Sequence[TensorSpec], settings: TransferSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.specs = tuple(specs)
        self.settings = settings
        self.clock = clock
        self._pulling: dict[tuple[bytes, str], tuple[set[int], float]] = {}  # (digest, peer) -> leaves sent, when last
        self._saved: dict[str, tuple[bytes, Path]] = {}  # peer -> (digest, file) of pulls saved at the last stop
        self.offered: OrderedDict[bytes, Offered] = OrderedDict()
        self.pulls: dict[str, Pull] = {}
        self._ended: dict[str, deque[bytes]] = {}
        self.counts: Counter[str] = Counter()  # chunks and bytes served and received, resumes
        self._spare: list[torch.Tensor] | None = None  # buffers of a model nobody uses any more
        self._lock = threading.Lock()
        self._in_transit: list[Callable[[], bool]] = []  # chunk sends from the served snapshot

    # -- serving ---------------------------------------------------------------------------------

    def offer(self, offered: Offered) -> None:
        """Serve `offered` from now on, and the version before it only while a neighbour is
        still pulling it (one snapshot in memory otherwise)."""
        with self._lock:
            if offered.digest not in self.offered:
                self._in_transit = []
            for digest in list(self.offered):
                if digest != offered.digest and not self._being_pulled(digest):
                    self._drop(digest)
            while len(self.offered) > 1:  # at most the one being pulled and the new one
                self._drop(next(iter(self.offered)))
            self.offered[offered.digest] = offered

    def serve(self, peer: str, digest: bytes, first: Any, count: Any, send: Callable[[list[memoryview]], Callable[[], bool] | None]) -> bool | None:
        """Send a chunk with `send` (frames -> a "released?" function, or None when not
        queued). None when the version is no longer served; RejectedMessage for a range
        that is not in the model."""
        with self._lock:
            offered = self.offered.get(digest)
            if offered is None:
                return None
            frames = offered.frames(first, count)
            released = send(frames)
            if released is None:
                return False
            leaves, _ = self._pulling.get((digest, peer), (set(), 0.0))
            leaves.update(range(first, first + count))
            self._pulling[(digest, peer)] = (leaves, self.clock())
            if offered.tensors is not None:
                if len(self._in_transit) >= 4096:  # many pulls in one round: forget what left
                    self._in_transit = [pending for pending in self._in_transit if not pending()]
                self._in_transit.append(released)
        self.counts["chunks_sent"] += 1
        self.counts["chunk_bytes_sent"] += sum(len(frame) for frame in frames)
        return True

    def offered_to(self, peer: str, digest: bytes) -> None:
        """`peer` was just offered this version: it counts as being pulled from now on (its
        first chunk request may come after the next snapshot is due)."""
        with self._lock:
            leaves, _ = self._pulling.get((digest, peer), (set(), 0.0))
            self._pulling[(digest, peer)] = (leaves, self.clock())

    def reclaim(self) -> dict[str, torch.Tensor] | None:
        """The served snapshot's tensors, for the next snapshot to be copied into, if the
        transport let go of every chunk sent from them and no neighbour is part way through
        pulling it; the version is no longer served from then on (a neighbour asking for it
        gets `version_gone`). None: snapshot afresh."""
        with self._lock:
            if not self.offered:
                return None
            digest, offered = next(reversed(self.offered.items()))
            self._in_transit = [released for released in self._in_transit if not released()]
            if offered.tensors is None or self._in_transit or self._being_pulled(digest):
                self.counts["snapshot_fresh"] += 1
                return None
            self._drop(digest)
            self.counts["snapshot_reused"] += 1
            return dict(offered.tensors)

    def _being_pulled(self, digest: bytes) -> bool:
        """Whether a neighbour was offered this version or has part of it, and has not gone
        quiet since."""
        total = len(self.offered[digest].leaves)
        now = self.clock()
        return any(
            key[0] == digest and len(leaves) < total and now - when < PULLED_RECENTLY_S
            for key, (leaves, when) in self._pulling.items()
        )

    def _drop(self, digest: bytes) -> None:
        del self.offered[digest]
        for key in [key for key in self._pulling if key[0] == digest]:
            del self._pulling[key]

    # -- pulling ---------------------------------------------------------------------------------

    def start(self, peer: str, req: int | None, entries: list[SignedEntry], last: SignedEntry, hashes: Sequence[bytes]) -> Pull:
        """Begin (or resume) pulling the model `last` signs; RejectedMessage when the offered
        hashes do not add up to the signed digest."""
        check_offer(self.specs, hashes, last.body.digest)
        held = self.pulls.get(peer)
        if held is not None and held.transfer.digest == last.body.digest:
            held.transfer.interrupted()
            if held.transfer.bytes_received:
                self.counts["resumed"] += 1
            held.req, held.entries, held.last, held.active = req, entries, last, True
            return held
        if held is not None:
            self.end(peer)
        incoming = Incoming(self.specs, hashes, last.body.digest, self.settings, reuse=self._spare)
        self._spare = None
        saved = self._saved.pop(peer, None)
        if saved is not None:
            self._restore(peer, last.seq, incoming, *saved)
        pull = Pull(peer, req, entries, last, incoming)
        self.pulls[peer] = pull
        return pull

    # -- across a restart --------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Write what each pull received to `directory`/<peer>.part (atomically, with a small
        <peer>.json naming its digest), for `load` after a restart. A failure costs only the
        resume: one line naming the path."""
        for peer, pull in self.pulls.items():
            incoming = pull.transfer
            if not incoming.bytes_received:
                continue
            part = directory / f"{peer}.part"
            try:
                directory.mkdir(parents=True, exist_ok=True)
                # Leaves not received are holes (zeros, which only a leaf of zeros matches):
                # a half-pulled 10 GiB model costs 5 GiB of disk and of writing.
                offsets = [0]
                for spec in incoming.specs:
                    offsets.append(offsets[-1] + spec.nbytes)
                pieces = [(offsets[tensor] + start, view) for view, (tensor, start, _) in zip(incoming.received(), incoming.leaves) if view is not None]
                write_sparse_atomic(part, incoming.total_bytes, pieces)
                write_atomic(directory / f"{peer}.json", json.dumps({"peer": peer, "seq": pull.last.seq, "digest": incoming.digest.hex(), "bytes": incoming.total_bytes}).encode())
            except OSError as exc:
                log.warning("cannot save the pull from %s to %s (%s): it starts again after the restart; free space or fix the permissions of %s", peer, part, exc.strerror or exc, directory)
                continue
            log.info("saved %d of %d bytes of %s's version %d to %s for a resume", incoming.bytes_received, incoming.total_bytes, peer, pull.last.seq, part)

    def load(self, directory: Path, peers: Sequence[str]) -> None:
        """Remember the pulls a previous run saved (files of other peers are removed); each
        is used when its peer offers the same digest again, and removed otherwise."""
        if not directory.is_dir():
            return
        for meta in directory.glob("*.json"):
            peer = meta.stem
            try:
                digest = bytes.fromhex(json.loads(meta.read_text())["digest"])
            except (OSError, ValueError, KeyError, TypeError):
                digest = b""
            part = directory / f"{peer}.part"
            if peer in peers and len(digest) == 32 and part.exists():
                self._saved[peer] = (digest, part)
            else:
                self._discard(meta, part)

    def _restore(self, peer: str, seq: int, incoming: Incoming, digest: bytes, part: Path) -> None:
        meta = part.with_suffix(".json")
        try:
            if digest == incoming.digest and part.stat().st_size == incoming.total_bytes:
                with open(part, "rb") as handle:
                    for buffer in incoming.buffers:
                        handle.readinto(buffer)
                recovered = incoming.recover()  # only leaves that match their signed hashes count
                if recovered:
                    self.counts["resumed"] += 1
                    self.counts["resumed_from_disk_bytes"] += recovered
                    log.info("resuming the pull of %s's version %d from %s: %d of %d bytes already here", peer, seq, part, recovered, incoming.total_bytes)
        except OSError as exc:
            log.warning("cannot read the saved pull %s (%s): pulling it again", part, exc.strerror or exc)
        self._discard(meta, part)

    @staticmethod
    def _discard(*paths: Path) -> None:
        for path in paths:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass

    def accept(self, peer: str, msg: Chunk, data: Sequence[Any]) -> Pull | None:
        """Write a chunk into `peer`'s pull; the pull when it is complete (and ended)."""
        pull = self.pulls.get(peer)
        if pull is None or pull.transfer.digest != msg.digest:
            if msg.digest in self._ended.get(peer, ()):
                self.counts["late_chunks"] += 1
                return None
            raise RejectedMessage("unknown_transfer", "a chunk of a model that was never offered")
        if not pull.active:  # put aside: what was asked before comes late
            self.counts["late_chunks"] += 1
            return None
        if not pull.transfer.accept(msg.first, msg.count, data):
            self.counts["duplicate_chunks"] += 1
            return None
        self.counts["chunks_received"] += 1
        self.counts["chunk_bytes_received"] += sum(len(frame) for frame in data)
        if not pull.transfer.complete:
            return None
        self.end(peer)
        return pull

    def recycle(self, tensors: list[torch.Tensor]) -> None:
        """Hand back the buffers of a pulled model once nothing refers to its tensors any
        more (it was merged): the next pull writes into them. One spare set at most."""
        self._spare = tensors

    def pause(self, peer: str) -> None:
        """Put `peer`'s pull aside, keeping what arrived (a new offer resumes it)."""
        pull = self.pulls.get(peer)
        if pull is not None:
            pull.active = False
            pull.transfer.interrupted()

    def end(self, peer: str) -> None:
        pull = self.pulls.pop(peer, None)
        if pull is not None:
            self._ended.setdefault(peer, deque(maxlen=REMEMBERED)).append(pull.transfer.digest)

    def forget(self, peer: str) -> None:
        """A neighbour removed or quarantined: drop its pull and what we remember of it."""
        self.end(peer)
        self._ended.pop(peer, None)
        saved = self._saved.pop(peer, None)
        if saved is not None:
            self._discard(saved[1].with_suffix(".json"), saved[1])

    def status(self) -> dict[str, Any]:
        return {
            **dict(self.counts),
            "pulling": {
                peer: {"seq": p.last.seq, "bytes": p.transfer.bytes_received, "of": p.transfer.total_bytes, "active": p.active}
                for peer, p in sorted(self.pulls.items())
            },
        }
