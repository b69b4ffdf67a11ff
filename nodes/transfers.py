"""The node's side of chunked transfers (swarm.transfer): the versions it serves, by digest,
and the one model it pulls from each neighbour.

Memory stays bounded by construction. Served chunks are views of published snapshots, so
any number of neighbours pulling costs no copies, and each neighbour's send queue holds at
most a window of chunks (the transport's high-water mark). A pull writes into buffers of
one model, and a node keeps at most one pull per neighbour: a new offer of the same digest
resumes it, an offer of another digest replaces it.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from swarm.errors import RejectedMessage
from swarm.log import SignedEntry
from swarm.messages import Chunk
from swarm.tensors import TensorSpec
from swarm.transfer import Incoming, Offered, TransferSettings, check_offer

KEEP_OFFERED = 1  # the latest version only: a model and its snapshot are what a sender holds
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
    def __init__(self, specs: Sequence[TensorSpec], settings: TransferSettings) -> None:
        self.specs = tuple(specs)
        self.settings = settings
        self.offered: OrderedDict[bytes, Offered] = OrderedDict()
        self.pulls: dict[str, Pull] = {}
        self._ended: dict[str, deque[bytes]] = {}
        self.counts: Counter[str] = Counter()  # chunks and bytes served and received, resumes
        self._spare: list[torch.Tensor] | None = None  # buffers of a model nobody uses any more

    # -- serving ---------------------------------------------------------------------------------

    def offer(self, offered: Offered) -> None:
        self.offered[offered.digest] = offered
        self.offered.move_to_end(offered.digest)
        while len(self.offered) > KEEP_OFFERED:
            self.offered.popitem(last=False)

    def serve(self, digest: bytes, first: Any, count: Any) -> list[memoryview] | None:
        """A chunk's frames; None when the version is no longer served; RejectedMessage for
        a range that is not in the model."""
        offered = self.offered.get(digest)
        if offered is None:
            return None
        frames = offered.frames(first, count)
        self.counts["chunks_sent"] += 1
        self.counts["chunk_bytes_sent"] += sum(len(frame) for frame in frames)
        return frames

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
        pull = Pull(peer, req, entries, last, Incoming(self.specs, hashes, last.body.digest, self.settings, reuse=self._spare))
        self._spare = None
        self.pulls[peer] = pull
        return pull

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

    def pause(self, peer: str) -> Pull | None:
        """Put `peer`'s pull aside, keeping what arrived (a new offer resumes it)."""
        pull = self.pulls.get(peer)
        if pull is not None:
            pull.active = False
            pull.transfer.interrupted()
        return pull

    def end(self, peer: str) -> None:
        pull = self.pulls.pop(peer, None)
        if pull is not None:
            self._ended.setdefault(peer, deque(maxlen=REMEMBERED)).append(pull.transfer.digest)

    def forget(self, peer: str) -> None:
        """A neighbour removed or quarantined: drop its pull and what we remember of it."""
        self.end(peer)
        self._ended.pop(peer, None)

    def status(self) -> dict[str, Any]:
        return {
            **dict(self.counts),
            "pulling": {
                peer: {"seq": p.last.seq, "bytes": p.transfer.bytes_received, "of": p.transfer.total_bytes, "active": p.active}
                for peer, p in sorted(self.pulls.items())
            },
        }
