"""An in-process network with the Transport interface, for tests and simulations.

Frames are copied to `bytes` on send, as a real network would, so a receiver never sees a
sender's later in-place changes. Links can be cut to simulate dead or partitioned peers."""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence

from .base import Buffer, Received


class InMemoryNetwork:
    def __init__(self) -> None:
        self._inboxes: dict[str, deque[Received]] = {}
        self._cond = threading.Condition()
        self._woken: set[str] = set()
        self.down: set[str] = set()  # members whose messages vanish, in and out
        self.sent: list[tuple[str, str, int]] = []  # (sender, receiver, frame count) for assertions

    def endpoint(self, name: str) -> InMemoryTransport:
        with self._cond:
            self._inboxes.setdefault(name, deque())
        return InMemoryTransport(self, name)

    def _deliver(self, sender: str, peer: str, frames: Sequence[Buffer]) -> bool:
        with self._cond:
            if peer not in self._inboxes:
                return False
            self.sent.append((sender, peer, len(frames)))
            if sender in self.down or peer in self.down:
                return True  # lost on the way: the sender cannot tell
            self._inboxes[peer].append(Received(sender, [bytes(f) for f in frames]))
            self._cond.notify_all()
            return True

    def _take(self, name: str, timeout: float) -> Received | None:
        with self._cond:
            inbox = self._inboxes[name]
            if not inbox and timeout > 0:
                self._cond.wait_for(lambda: bool(inbox) or name in self._woken, timeout)
            self._woken.discard(name)
            return inbox.popleft() if inbox else None

    def _wake(self, name: str) -> None:
        with self._cond:
            self._woken.add(name)
            self._cond.notify_all()

    def pending(self, name: str) -> int:
        with self._cond:
            return len(self._inboxes[name])


class InMemoryTransport:
    def __init__(self, network: InMemoryNetwork, name: str) -> None:
        self.network = network
        self.name = name
        self.bytes_sent: Counter[str] = Counter()
        self.bytes_received: Counter[str] = Counter()

    def send(self, peer: str, frames: Sequence[Buffer]) -> bool:
        delivered = self.network._deliver(self.name, peer, frames)
        if delivered:
            self.bytes_sent[peer] += sum(memoryview(f).nbytes for f in frames)
        return delivered

    def send_tracked(self, peer: str, frames: Sequence[Buffer]) -> Callable[[], bool] | None:
        # The network keeps copies of what it delivers: the caller's memory is free at once.
        return (lambda: True) if self.send(peer, frames) else None

    def connected(self, peer: str) -> bool:
        network = self.network
        return peer in network._inboxes and not {peer, self.name} & network.down

    def receive(self, timeout: float) -> Received | None:
        received = self.network._take(self.name, timeout)
        if received is not None:
            self.bytes_received[received.peer] += sum(len(f) for f in received.frames)
        return received

    def wake(self) -> None:
        self.network._wake(self.name)

    def update_links(self, peers: Mapping[str, str], peer_keys: Mapping[str, str]) -> None:
        self.links = dict(peers)  # no keys in memory: recorded for tests to look at

    def close(self) -> None:
        pass
