"""What protocols emit, and the machinery every protocol shares.

The node runtime carries each action out; a protocol never waits. `ProtocolMachine` holds
what all four protocols do alike: answer version and model requests, keep track of what a
neighbour holds of our log (for pushes), announce the end of the plan, and linger until
the neighbours are done too, so that nobody waits on a peer that already exited."""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Union

from pydantic import Field

from swarm.config import Table
from swarm.messages import ModelRequest, PushAck, Refusal, VersionReply, VersionRequest
from swarm.schedule import Schedule

from .liveness import Liveness

SmallMessage = Union[VersionRequest, VersionReply, ModelRequest, Refusal, PushAck]


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
class PushModel:
    """Send our latest published model unasked, with the log entries after `have` (what the
    neighbour last acknowledged holding of our log)."""

    peer: str
    have: int


@dataclass(frozen=True)
class ModelInfo:
    """What the signed log entry of a verified neighbour model says about it."""

    seq: int
    round: int
    samples: int
    age: float  # gossip learning's model age (signed metric "age"); the seq where absent


@dataclass(frozen=True)
class PulledVersion:
    """A neighbour model that arrived, verified, and is staged for merging, with the weight
    it gets in the merge (weights are normalised by the merge)."""

    peer: str
    seq: int
    weight: float


@dataclass(frozen=True)
class MergeAndTrain:
    """Merge our latest model (weight `self_weight`) with the staged neighbour models, train,
    and publish version `round`, signing `signed` into its entry's metrics; report back with
    `published`."""

    round: int
    pulled: tuple[PulledVersion, ...]
    self_weight: float = 1.0
    signed: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Dropped:
    """A message the protocol ignored (stale, duplicate, unexpected): count it, do not crash."""

    peer: str
    reason: str


@dataclass(frozen=True)
class Finished:
    """The plan is done and the neighbours have heard it (or stopped answering): the node may exit."""


Action = Union[Send, SendModel, PushModel, MergeAndTrain, Dropped, Finished]

ANNOUNCEMENT = 0  # request id of an unsolicited VersionReply: "I am done" (real ids start at 1)


class Phase(enum.Enum):
    WAITING = "waiting"  # until a timer fires
    POLLING = "polling"  # asked neighbours for their versions (BrainTorrent)
    PULLING = "pulling"  # asked the neighbours with newer versions for their models (BrainTorrent)
    COLLECTING = "collecting"  # waiting for the round's neighbour models to be pushed to us
    TRAINING = "training"  # the runtime merges, trains and publishes
    LINGERING = "lingering"  # plan done; serving neighbours that still train
    FINISHED = "finished"


# What a node is doing in each phase, for the per-round wall-time breakdown.
ACTIVITY = {
    Phase.WAITING: "wait",
    Phase.POLLING: "wait",
    Phase.PULLING: "transfer",
    Phase.COLLECTING: "wait",
    Phase.TRAINING: "train",
    Phase.LINGERING: "linger",
    Phase.FINISHED: "linger",
}

Seconds = Annotated[float, Field(gt=0, le=3600, json_schema_extra={"requirement": "a number of seconds in (0, 3600]", "example": 2.0})]
Count = Annotated[int, Field(ge=1, le=1024, json_schema_extra={"example": 2})]


class Params(Table):
    """Base of a protocol's timers (all seconds), read from the plan's [protocol] table."""

    TABLE: ClassVar[str] = "plan.protocol"
    linger: Seconds = 30.0  # after the last round, keep serving until neighbours finish or this long
    done_poll_interval: Seconds = 0.5  # while lingering, how often to ask who is done
    min_reply_wait: Seconds = 0.5  # the adaptive wait for a neighbour's reply never drops below this (see liveness)
    probe_interval: Seconds = 1.0  # how often a suspected neighbour is asked, in the background, whether it is back


@dataclass(frozen=True)
class Resume:
    """What a restarted node rebuilds from its own log, so it goes on where it stopped."""

    published_seq: int = 0
    merged: Mapping[str, int] = field(default_factory=dict)  # neighbour -> version last merged
    peer_heads: Mapping[str, int] = field(default_factory=dict)  # neighbour -> highest entry of its log we hold
    last_metrics: Mapping[str, float] = field(default_factory=dict)  # signed in our latest entry


class ProtocolMachine:
    """Shared state and behaviour; a protocol subclasses it and fills in its rounds."""

    def __init__(self, name: str, schedule: Schedule, rounds: int, samples: int, params: Params, rng: random.Random, resume: Resume = Resume()) -> None:
        self.name = name
        self.schedule = schedule
        self.neighbours = schedule.peers(name)  # everyone we may talk to in some round
        self.rounds = rounds
        self.samples = samples
        self.params = params
        self.rng = rng
        self.published_seq = resume.published_seq  # our latest version (one per round)
        self.published_at = 0.0
        self.merged = dict(resume.merged)  # neighbour -> version we last merged
        self.peer_heads = dict(resume.peer_heads)  # neighbour -> highest entry of its log we hold
        self.resume_metrics = dict(resume.last_metrics)
        self.peer_have: dict[str, int] = {}  # neighbour -> what it acknowledged holding of our log
        self.phase = Phase.WAITING
        self.deadline: float | None = None
        self.next_req = 1
        self.pending: dict[str, int] = {}  # neighbour -> request id we await in this phase
        self.peers_done: set[str] = set()
        self.final_versions: dict[str, int] = {}  # neighbour -> its last version, once it is done
        self.linger_until = 0.0
        self.liveness = Liveness(self.neighbours, params.min_reply_wait, params.probe_interval)

    # -- inputs common to every protocol ----------------------------------------------------

    def start(self, now: float) -> list[Action]:
        self.published_at = now
        if self.published_seq >= self.rounds:
            return self._begin_lingering(now)
        return self._start_rounds(now)

    def heard(self, peer: str, now: float) -> list[Action]:
        """Any authenticated message from `peer` (the runtime calls this for those that do
        not reach `receive`, such as chunks): it is alive."""
        return self._on_back(peer, now) if self.liveness.heard(peer, now) else []

    def receive(self, peer: str, msg: object, now: float) -> list[Action]:
        if peer not in self.neighbours:
            return [Dropped(peer, "not_a_neighbour")]
        if isinstance(msg, VersionReply) and msg.req != ANNOUNCEMENT and self.liveness.is_probe(peer, msg.req):
            back = self.liveness.heard(peer, now, msg.req)
            if msg.done:
                self.peers_done.add(peer)
                self.final_versions[peer] = msg.seq
            return self._on_back(peer, now) if back else []
        back = self.liveness.heard(peer, now, msg.req if isinstance(msg, VersionReply) else None)
        actions = self._receive(peer, msg, now)
        return actions + self._on_back(peer, now) if back else actions

    def _receive(self, peer: str, msg: object, now: float) -> list[Action]:
        if isinstance(msg, VersionRequest):
            return [Send(peer, VersionReply(msg.req, self.published_seq, self.samples, self.phase in (Phase.LINGERING, Phase.FINISHED)))]
        if isinstance(msg, ModelRequest):
            if self.published_seq == 0:
                return [Send(peer, Refusal(msg.req, "no_model_yet"))]
            return [SendModel(peer, msg.req, msg.have)]
        if isinstance(msg, PushAck):
            self.peer_have[peer] = min(msg.seq, self.published_seq)
            return []
        if isinstance(msg, VersionReply):
            if msg.done:
                self.peers_done.add(peer)
                self.final_versions[peer] = msg.seq
            if self.phase is Phase.LINGERING:
                self.pending.pop(peer, None)
                return self._finish_if_neighbours_done()
            if msg.req == ANNOUNCEMENT:
                return self._on_announcement(peer, now)
            return self._on_version_reply(peer, msg, now)
        if isinstance(msg, Refusal):
            return self.model_failed(peer, msg.req, msg.reason, now)
        return [Dropped(peer, f"unexpected_{type(msg).__name__}")]

    def tick(self, now: float) -> list[Action]:
        actions = self._probe(now) if self._probing else []
        if self.deadline is None or now < self.deadline:
            return actions
        if self.phase is Phase.LINGERING:
            return actions + self._linger_tick(now)
        return actions + self._on_deadline(now)

    def expects_model(self, peer: str, req: int) -> bool:
        """Whether a model reply to request `req` would be used; the runtime verifies only those."""
        return False

    def wants_push(self, peer: str) -> bool:
        """Whether an unasked model from `peer` would be used; the runtime verifies only those."""
        return False

    def awaiting_models(self) -> dict[str, int]:
        """Neighbour -> model request whose answer this round waits for (the runtime gives up
        on one whose sender lost its connection, with `model_failed`)."""
        return {}

    def model_arrived(self, peer: str, req: int | None, model: ModelInfo, now: float) -> list[Action]:
        """The runtime verified the entry chain and the tensors of `peer`'s model (a reply to
        `req`, or a push when `req` is None)."""
        return [Dropped(peer, "unexpected_model")]

    def model_failed(self, peer: str, req: int | None, reason: str, now: float) -> list[Action]:
        """A model from `peer` was refused (a reply to `req`, or a push when None)."""
        if req is None:  # tell the pusher what we hold, so its next push fills the gap
            return [Send(peer, PushAck(self.peer_heads.get(peer, 0)))]
        return [Dropped(peer, "stale_refusal")]

    def published(self, seq: int, merged: Mapping[str, int], now: float) -> list[Action]:
        """The runtime stored and logged version `seq`, built from the `merged` versions."""
        self.published_seq = seq
        self.published_at = now
        self.merged.update(merged)
        if seq >= self.rounds:
            return self._begin_lingering(now)
        return self._after_publish(now)

    # -- state -------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.phase is Phase.FINISHED

    @property
    def activity(self) -> str:
        return ACTIVITY[self.phase]

    def next_deadline(self) -> float | None:
        probe = self.liveness.next_probe() if self._probing else None
        return min((d for d in (self.deadline, probe) if d is not None), default=None)

    @property
    def suspects(self) -> frozenset[str]:
        """Neighbours that stopped answering: rounds go on without waiting for them."""
        return self.liveness.suspects

    @property
    def _probing(self) -> bool:
        return self.phase not in (Phase.LINGERING, Phase.FINISHED)  # lingering asks everyone anyway

    # -- what subclasses fill in ---------------------------------------------------------------

    def _start_rounds(self, now: float) -> list[Action]:
        raise NotImplementedError

    def _after_publish(self, now: float) -> list[Action]:
        raise NotImplementedError

    def _on_deadline(self, now: float) -> list[Action]:
        return []

    def _on_version_reply(self, peer: str, reply: VersionReply, now: float) -> list[Action]:
        return [Dropped(peer, "stale_version_reply")]

    def _on_announcement(self, peer: str, now: float) -> list[Action]:
        return []

    def _on_back(self, peer: str, now: float) -> list[Action]:
        """A suspected neighbour was heard from again."""
        return []

    # -- helpers -------------------------------------------------------------------------------

    def _new_req(self) -> int:
        req = self.next_req
        self.next_req += 1
        return req

    def _probe(self, now: float) -> list[Action]:
        """Ask each suspected neighbour that is due whether it is back (no round waits)."""
        actions: list[Action] = []
        for peer in self.liveness.probes_due(now):
            req = self._new_req()
            self.liveness.probe_sent(peer, req, now)
            actions.append(Send(peer, VersionRequest(req)))
        return actions

    def _acknowledge(self, peer: str, model: ModelInfo) -> Send:
        self.peer_heads[peer] = max(self.peer_heads.get(peer, 0), model.seq)
        return Send(peer, PushAck(self.peer_heads[peer]))

    def _push(self, peers: Sequence[str]) -> list[Action]:
        return [PushModel(peer, self.peer_have.get(peer, 0)) for peer in peers]

    def _train(self, round_no: int, pulled: Sequence[PulledVersion], self_weight: float, signed: Mapping[str, float] | None = None) -> list[Action]:
        self.phase = Phase.TRAINING
        self.pending = {}
        self.deadline = None
        for p in pulled:  # now, not at publish: a copy arriving while we train is stale
            self.merged[p.peer] = max(self.merged.get(p.peer, 0), p.seq)
        return [MergeAndTrain(round_no, tuple(pulled), self_weight, dict(signed or {}))]

    # -- the end of the plan ---------------------------------------------------------------------

    def _begin_lingering(self, now: float) -> list[Action]:
        """Tell the neighbours we are done, then serve them until they are done too."""
        self.phase = Phase.LINGERING
        self.linger_until = now + self.params.linger
        announce: list[Action] = [
            Send(peer, VersionReply(ANNOUNCEMENT, self.published_seq, self.samples, True)) for peer in self.neighbours
        ]
        return announce + (self._finish_if_neighbours_done() or self._linger_tick(now))

    def _linger_tick(self, now: float) -> list[Action]:
        if now >= self.linger_until:
            return self._finish()
        waiting_for = [p for p in self.neighbours if p not in self.peers_done]
        self.pending = {peer: self._new_req() for peer in waiting_for}
        self.deadline = min(now + self.params.done_poll_interval, self.linger_until)
        return [Send(peer, VersionRequest(req)) for peer, req in self.pending.items()]

    def _finish_if_neighbours_done(self) -> list[Action]:
        if self.peers_done.issuperset(self.neighbours):
            return self._finish()
        return []

    def _finish(self) -> list[Action]:
        self.phase = Phase.FINISHED
        self.pending = {}
        self.deadline = None
        return [Finished()]


class PushReceiver(ProtocolMachine):
    """A protocol whose neighbours push their models unasked (D-PSGD, epidemic, gossip):
    it keeps the newest unmerged verified model of each neighbour in `inbox`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Kept across rounds: a fast neighbour's next version may arrive while we train.
        self.inbox: dict[str, ModelInfo] = {}

    def wants_push(self, peer: str) -> bool:
        return peer in self.neighbours and self.phase not in (Phase.LINGERING, Phase.FINISHED)

    def model_arrived(self, peer: str, req: int | None, model: ModelInfo, now: float) -> list[Action]:
        if req is not None or not self.wants_push(peer):
            return [Dropped(peer, "unexpected_model")]
        ack = self._acknowledge(peer, model)
        held = self.inbox.get(peer)
        if model.seq <= self.merged.get(peer, 0) or (held is not None and model.seq <= held.seq):
            return [ack, Dropped(peer, "stale_push")]
        self.inbox[peer] = model
        return [ack, *self._on_push(now)]

    def _on_push(self, now: float) -> list[Action]:
        """A new model is in the inbox: merge now, or keep waiting."""
        raise NotImplementedError
