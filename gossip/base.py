"""What a protocol emits. The node runtime carries each action out; the protocol never waits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from swarm.messages import ModelRequest, Refusal, VersionReply, VersionRequest

SmallMessage = Union[VersionRequest, VersionReply, ModelRequest, Refusal]


@dataclass(frozen=True)
class Send:
    """Send a small message (no tensors) to a neighbour."""

    peer: str
    msg: SmallMessage


@dataclass(frozen=True)
class SendModel:
    """Answer a model request with our latest published model and the log entries after `have`."""

    peer: str
    req: int
    have: int


@dataclass(frozen=True)
class PulledVersion:
    """A neighbour model that arrived, verified, and is staged for merging."""

    peer: str
    seq: int


@dataclass(frozen=True)
class MergeAndTrain:
    """Merge our latest model with the staged neighbour models, train, and publish version
    `round`; report back with `BrainTorrent.published`."""

    round: int
    pulled: tuple[PulledVersion, ...]


@dataclass(frozen=True)
class Dropped:
    """A message the protocol ignored (stale, duplicate, unexpected): count it, do not crash."""

    peer: str
    reason: str


@dataclass(frozen=True)
class Finished:
    """The plan is done and the neighbours have heard it (or stopped answering): the node may exit."""


Action = Union[Send, SendModel, MergeAndTrain, Dropped, Finished]
