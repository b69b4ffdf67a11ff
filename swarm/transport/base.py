"""The transport interface the node runtime depends on."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

Buffer = bytes | bytearray | memoryview
NOT_A_NEIGHBOUR = "<not a neighbour>"


@dataclass
class Received:
    peer: str  # the sender, as identified by the transport (authenticated once CURVE is on)
    frames: list  # bytes-like objects or zmq.Frame (with .buffer), zero-copy where possible
    rejected: str | None = None  # set when the transport itself refused the message
    stats: dict[str, int] = field(default_factory=dict)


class Transport(Protocol):
    name: str
    bytes_sent: Counter[str]  # per neighbour, frames' bytes
    bytes_received: Counter[str]  # per neighbour; everyone else under NOT_A_NEIGHBOUR

    def send(self, peer: str, frames: Sequence[Buffer]) -> bool:
        """Queue a message for `peer` without blocking; False when it cannot be queued now
        (unknown peer, peer not connected, queue full). The protocol's timeouts cover loss."""

    def send_tracked(self, peer: str, frames: Sequence[Buffer]) -> Callable[[], bool] | None:
        """Like send(), for frames that are views of memory the caller will overwrite later:
        returns a function that says whether the transport has let go of them (sent, or
        dropped with a lost connection), or None when the message was not queued."""

    def connected(self, peer: str) -> bool:
        """Whether there is a live connection to `peer` a message could go out on now (False
        while it is down or being re-established, or its queue is full)."""

    def receive(self, timeout: float) -> Received | None:
        """Wait up to `timeout` seconds for one message; None when none came (or woken)."""

    def wake(self) -> None:
        """Make the current or next receive() return at once; safe from any thread."""

    def update_links(self, peers: Mapping[str, str], peer_keys: Mapping[str, str]) -> None:
        """Replace the neighbours (name -> endpoint) and their transport keys after a new
        manifest version: removed members' keys are no longer admitted."""

    def close(self) -> None: ...
