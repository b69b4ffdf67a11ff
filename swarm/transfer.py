"""Chunked model transfer with credit flow control, as pure state (no sockets, no clock).

The zguide's "fileio3" pattern, fitted to signed models. A sender *offers* a version: the
signed log entries (whose last one carries the model digest) and the BLAKE3 hash of every
leaf (each tensor's bytes in 4 MiB pieces, swarm.tensors.leaf_hashes). Before it asks for
a single byte, the receiver checks that those leaf hashes combine into the signed digest,
so every chunk can be checked on arrival against signed data: one pass of hashing, and no
second pass over the whole model at the end.

The receiver then *pulls*: it asks for chunks (runs of consecutive leaves of up to
`chunk_bytes`, a leaf never split) and keeps at most `window` requests outstanding, so a sender never
has more than a window of this transfer in flight. Each arriving leaf is hashed and
written straight into its tensor's final buffer, preallocated from the plan's specs.
A chunk that does not arrive in time is asked for again; one with a wrong hash is refused
and asked for again; after `retries` failures of one chunk the transfer stalls. An
interrupted transfer (a disconnect, a sender restart, a protocol time-out) keeps its
verified leaves, and a new offer of the same digest resumes from there; leaves read back
from disk after the receiver's own restart are trusted only if they match (`recover`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from blake3 import blake3

from .errors import RejectedMessage
from .messages import MAX_CHUNK_LEAVES  # a chunk is at most 64 MiB
from .tensors import DIGEST_CHUNK_BYTES, FlatModel, TensorSpec, byte_view, digest_from_leaves, leaf_ranges

LEAF_BYTES = DIGEST_CHUNK_BYTES


@dataclass(frozen=True)
class TransferSettings:
    """How a receiver pulls a model: site.toml's [transfer] table."""

    chunk_bytes: int = 4 * 1024 * 1024  # consecutive leaves up to this many bytes travel as one chunk
    window: int = 4  # chunk requests outstanding per transfer (the credit)
    chunk_timeout: float = 30.0  # seconds before a requested chunk is asked for again
    retries: int = 4  # times one chunk may be asked for again before the transfer stalls

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_bytes <= MAX_CHUNK_LEAVES * LEAF_BYTES:  # below a leaf: one leaf a chunk
            raise ValueError(f"chunk_bytes must be from 1 to {MAX_CHUNK_LEAVES * LEAF_BYTES}")
        if not 1 <= self.window <= 64:
            raise ValueError("window must be from 1 to 64")


class TransferStalled(Exception):
    """A chunk was asked for `retries` times more without arriving intact."""


def chunk_plan(leaf_bytes: Sequence[int], chunk_bytes: int) -> list[tuple[int, int]]:
    """(first leaf, leaf count) of each chunk: consecutive leaves, as many as fit in
    `chunk_bytes` (at least one, at most MAX_CHUNK_LEAVES), so that a model's small tensors
    (biases, norms) travel together instead of one round trip each."""
    chunks: list[tuple[int, int]] = []
    first, size = 0, 0
    for leaf, nbytes in enumerate(leaf_bytes):
        if leaf > first and (size + nbytes > chunk_bytes or leaf - first == MAX_CHUNK_LEAVES):
            chunks.append((first, leaf - first))
            first, size = leaf, 0
        size += nbytes
    if leaf_bytes:
        chunks.append((first, len(leaf_bytes) - first))
    return chunks


def check_offer(specs: Sequence[TensorSpec], hashes: Sequence[bytes], signed_digest: bytes) -> None:
    """Refuse an offer whose leaf hashes do not add up to the digest signed in its entry."""
    try:
        digest = digest_from_leaves(specs, hashes)
    except ValueError as error:
        raise RejectedMessage("offer_mismatch", str(error)) from None
    if digest != signed_digest:
        raise RejectedMessage("digest_mismatch", "the offered leaf hashes do not combine into the signed digest")


class Incoming:
    """One model being pulled from one neighbour."""

    def __init__(
        self, specs: Sequence[TensorSpec], hashes: Sequence[bytes], digest: bytes, settings: TransferSettings, reuse: Sequence[torch.Tensor] | None = None
    ) -> None:
        self.specs = tuple(specs)
        self.hashes = tuple(hashes)
        self.digest = digest
        self.settings = settings
        self.leaves = leaf_ranges(self.specs)
        # Buffers of an earlier transfer whose model is no longer used (`reuse`) are already
        # mapped, which makes writing into them several times faster than into fresh pages;
        # torch.empty does not touch the pages, so fresh memory is committed as chunks arrive.
        if reuse is not None and [t.numel() for t in reuse] == [spec.nbytes for spec in self.specs]:
            self.tensors = list(reuse)
        else:
            self.tensors = [torch.empty(spec.nbytes, dtype=torch.uint8) for spec in self.specs]
        self.buffers = [memoryview(t.numpy()) for t in self.tensors]
        self.chunks = chunk_plan([stop - start for _, start, stop in self.leaves], settings.chunk_bytes)
        self._by_first = {first: index for index, (first, _) in enumerate(self.chunks)}
        self.todo: deque[int] = deque(range(len(self.chunks)))
        self.inflight: dict[int, float] = {}  # chunk index -> when it was (last) asked for
        self.asked: set[int] = set()  # every chunk asked for at least once
        self.tries: dict[int, int] = {}
        self.done: set[int] = set()
        self.bytes_received = 0  # intact leaf bytes written into the buffers

    def received(self) -> list[memoryview | None]:
        """Each leaf's bytes in order, None for a leaf not received (its buffer holds
        whatever the memory held before: never write that anywhere)."""
        done_leaves = {leaf for index in self.done for leaf in range(self.chunks[index][0], sum(self.chunks[index]))}
        return [self.buffers[tensor][start:stop] if leaf in done_leaves else None for leaf, (tensor, start, stop) in enumerate(self.leaves)]

    def recover(self) -> int:
        """Mark as done every chunk whose bytes already in the buffers match their offered
        hashes (a pull written to disk before a restart): returns the bytes recovered."""
        intact = [blake3(self.buffers[tensor][start:stop]).digest() == self.hashes[leaf] for leaf, (tensor, start, stop) in enumerate(self.leaves)]
        recovered = 0
        for index, (first, count) in enumerate(self.chunks):
            if index not in self.done and all(intact[first : first + count]):
                self.done.add(index)
                self.todo.remove(index)
                recovered += sum(stop - start for _, start, stop in self.leaves[first : first + count])
        self.bytes_received += recovered
        return recovered

    @property
    def complete(self) -> bool:
        return len(self.done) == len(self.chunks)

    @property
    def total_bytes(self) -> int:
        return sum(spec.nbytes for spec in self.specs)

    def requests(self, now: float) -> list[tuple[int, int]]:
        """The chunks (first leaf, count) to ask for now: those whose request timed out, then
        new ones up to the window. Raises TransferStalled when a chunk ran out of retries."""
        due = [index for index, asked in self.inflight.items() if now - asked >= self.settings.chunk_timeout]
        for index in due:
            self._retry(index)
            del self.inflight[index]
            self.todo.appendleft(index)
        wanted = []
        while self.todo and len(self.inflight) < self.settings.window:
            index = self.todo.popleft()
            self.inflight[index] = now
            self.asked.add(index)
            wanted.append(self.chunks[index])
        return wanted

    def not_sent(self, first: int) -> None:
        """The request for the chunk at leaf `first` could not be sent (not connected): it is
        asked for again later, without counting as a retry."""
        index = self._by_first[first]
        if self.inflight.pop(index, None) is not None:
            self.todo.appendleft(index)

    def interrupted(self) -> None:
        """The sender went away or the transfer was put aside: what was asked for is asked
        for again on resuming; the verified leaves stay."""
        for index in sorted(self.inflight, reverse=True):
            self.todo.appendleft(index)
        self.inflight.clear()

    def accept(self, first: Any, count: Any, frames: Sequence[Any]) -> bool:
        """Check a chunk and write it into the buffers. Returns False for a duplicate of a
        chunk already held (a late answer to a repeated request); raises RejectedMessage for
        a chunk nobody asked for or one that does not match the offer (it is asked for again)."""
        index = self._by_first.get(first)
        if index is None or self.chunks[index][1] != count:
            raise RejectedMessage("bad_chunk_range", f"leaves {first}+{count} are not a chunk of this transfer")
        if index in self.done:
            return False
        if index not in self.asked:
            raise RejectedMessage("unrequested_chunk", f"chunk at leaf {first} was not asked for")
        # A chunk asked for before an interruption or a time-out may still come: if it is
        # intact it is as good as any.
        if len(frames) != count:
            self._refuse(index)
            raise RejectedMessage("bad_chunk", f"{len(frames)} frames for {count} leaves")
        views = [byte_view(getattr(frame, "buffer", frame)) for frame in frames]
        for leaf, view in zip(range(first, first + count), views):
            tensor, start, stop = self.leaves[leaf]
            if len(view) != stop - start:
                self._refuse(index)
                raise RejectedMessage("bad_chunk", f"leaf {leaf}: {len(view)} bytes, expected {stop - start}")
            if blake3(view).digest() != self.hashes[leaf]:
                self._refuse(index)
                raise RejectedMessage("chunk_hash_mismatch", f"leaf {leaf} does not match its offered hash")
        for leaf, view in zip(range(first, first + count), views):
            tensor, start, stop = self.leaves[leaf]
            self.buffers[tensor][start:stop] = view
            self.bytes_received += stop - start
        self.inflight.pop(index, None)
        if index in self.todo:
            self.todo.remove(index)
        self.done.add(index)
        return True

    def model(self) -> FlatModel:
        """The received model (valid once `complete`); its buffers are this transfer's."""
        assert self.complete, "the transfer is not complete"
        return FlatModel(self.specs, tuple(self.buffers))

    def _refuse(self, index: int) -> None:
        self._retry(index)
        if self.inflight.pop(index, None) is not None:
            self.todo.appendleft(index)

    def _retry(self, index: int) -> None:
        self.tries[index] = self.tries.get(index, 0) + 1
        if self.tries[index] > self.settings.retries:
            raise TransferStalled(f"chunk at leaf {self.chunks[index][0]} failed {self.tries[index]} times")


class Offered:
    """A published version as a sender serves it: its tensors, leaf hashes and leaf ranges.
    `tensors` are the writable tensors behind `flat` when the sender may reuse them for a
    later snapshot once nothing is being sent from them."""

    def __init__(self, flat: FlatModel, hashes: Sequence[bytes], digest: bytes, tensors: Mapping[str, torch.Tensor] | None = None) -> None:
        self.flat = flat
        self.hashes = tuple(hashes)
        self.digest = digest
        self.tensors = tensors
        self.leaves = leaf_ranges(flat.specs)

    def frames(self, first: Any, count: Any, max_leaves: int = MAX_CHUNK_LEAVES) -> list[memoryview]:
        """The frames of a requested chunk: views of the published buffers, no copy."""
        if type(first) is not int or type(count) is not int or not 1 <= count <= max_leaves or not 0 <= first <= len(self.leaves) - count:
            raise RejectedMessage("bad_chunk_range", f"leaves {first}+{count} of {len(self.leaves)}")
        return [self.flat.buffers[tensor][start:stop] for tensor, start, stop in self.leaves[first : first + count]]
