"""BrainTorrent (Roy et al. 2019, arXiv:1905.06731), made serverless and topology-aware.

In the paper one client at a time is selected, pings everyone, pulls the models whose version
is newer than the one it last merged, merges them weighted by sample counts, trains and bumps
its version. Here nobody selects: every node starts its own rounds on a randomized local
timer and talks only to its neighbours in the topology. A neighbour that does not answer in
time is left out of the round, so a dead, slow or silent peer never blocks anyone.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from swarm.errors import ConfigError
from swarm.messages import ModelRequest, Refusal, VersionReply, VersionRequest

from .base import Action, Dropped, Finished, MergeAndTrain, PulledVersion, Send, SendModel


@dataclass(frozen=True)
class BrainTorrentParams:
    round_interval: float = 0.3  # mean pause between rounds; each pause is drawn in [0.5x, 1.5x]
    poll_timeout: float = 2.0  # how long to wait for version replies
    pull_timeout: float = 30.0  # how long to wait for the models we asked for
    wait_for_new: float = 5.0  # with nothing new from any neighbour, wait this long before training alone
    linger: float = 30.0  # after the last round, keep serving until neighbours finish or this long
    done_poll_interval: float = 0.5  # while lingering, how often to ask who is done

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "plan.protocol") -> BrainTorrentParams:
        known = {f.name for f in fields(cls)}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{where}.{key}: unknown setting; known: {', '.join(sorted(known))}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 3600:
                raise ConfigError(f"{where}.{key}: must be a number of seconds in (0, 3600], got {value!r} (example: {key} = 2.0)")
        return cls(**{k: float(v) for k, v in values.items()})


ANNOUNCEMENT = 0  # request id of an unsolicited VersionReply: "I am done" (real ids start at 1)


class Phase(enum.Enum):
    WAITING = "waiting"  # until the round timer fires
    POLLING = "polling"  # asked neighbours for their versions
    PULLING = "pulling"  # asked the neighbours with newer versions for their models
    TRAINING = "training"  # the runtime merges, trains and publishes
    LINGERING = "lingering"  # plan done; serving neighbours that still train
    FINISHED = "finished"


class BrainTorrent:
    def __init__(
        self,
        name: str,
        neighbours: Sequence[str],
        rounds: int,
        samples: int,
        params: BrainTorrentParams,
        rng: random.Random,
        *,
        published_seq: int = 0,
        merged: Mapping[str, int] | None = None,
        peer_heads: Mapping[str, int] | None = None,
    ) -> None:
        self.name = name
        self.neighbours = tuple(neighbours)
        self.rounds = rounds
        self.samples = samples
        self.params = params
        self.rng = rng
        self.published_seq = published_seq  # our latest version (one per round)
        self.merged = dict(merged or {})  # V_i: neighbour -> version we last merged
        self.peer_heads = dict(peer_heads or {})  # neighbour -> highest entry of its log we hold
        self.phase = Phase.WAITING
        self.deadline: float | None = None
        self.next_req = 1
        self.pending: dict[str, int] = {}  # neighbour -> request id we await in this phase
        self.newer: dict[str, int] = {}  # neighbour -> announced version newer than merged
        self.pulled: list[PulledVersion] = []
        self.peers_done: set[str] = set()
        self.final_versions: dict[str, int] = {}  # neighbour -> its last version, once it is done
        self.linger_until = 0.0
        self.published_at = 0.0

    # -- inputs ------------------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        self.published_at = now
        if self.published_seq >= self.rounds:
            return self._begin_lingering(now)
        self._wait_for_next_round(now)
        return []

    def tick(self, now: float) -> list[Action]:
        if self.deadline is None or now < self.deadline:
            return []
        if self.phase is Phase.WAITING:
            return self._begin_polling(now)
        if self.phase is Phase.POLLING:
            return self._end_polling(now)
        if self.phase is Phase.PULLING:
            return self._train()  # go on with the models that did arrive
        if self.phase is Phase.LINGERING:
            return self._linger_tick(now)
        return []

    def receive(self, peer: str, msg: object, now: float) -> list[Action]:
        if peer not in self.neighbours:
            return [Dropped(peer, "not_a_neighbour")]
        if isinstance(msg, VersionRequest):
            reply = VersionReply(msg.req, self.published_seq, self.samples, self.phase is Phase.FINISHED or self.phase is Phase.LINGERING)
            return [Send(peer, reply)]
        if isinstance(msg, ModelRequest):
            if self.published_seq == 0:
                return [Send(peer, Refusal(msg.req, "no_model_yet"))]
            return [SendModel(peer, msg.req, msg.have)]
        if isinstance(msg, VersionReply):
            return self._on_version_reply(peer, msg, now)
        if isinstance(msg, Refusal):
            return self.model_failed(peer, msg.req, msg.reason, now)
        return [Dropped(peer, f"unexpected_{type(msg).__name__}")]

    def expects_model(self, peer: str, req: int) -> bool:
        """Whether a model reply would be used; the runtime verifies only those."""
        return self.phase is Phase.PULLING and self.pending.get(peer) == req

    def model_arrived(self, peer: str, req: int, seq: int, now: float) -> list[Action]:
        """The runtime verified the entry chain and the tensors of `peer`'s version `seq`."""
        if not self.expects_model(peer, req):
            return [Dropped(peer, "stale_model_reply")]
        del self.pending[peer]
        self.peer_heads[peer] = max(self.peer_heads.get(peer, 0), seq)
        if seq > self.merged.get(peer, 0):
            self.pulled.append(PulledVersion(peer, seq))
        return self._train() if not self.pending else []

    def model_failed(self, peer: str, req: int, reason: str, now: float) -> list[Action]:
        if not self.expects_model(peer, req):
            return [Dropped(peer, "stale_refusal")]
        del self.pending[peer]
        actions: list[Action] = [Dropped(peer, reason)]
        if not self.pending:
            actions += self._train()
        return actions

    def published(self, seq: int, merged: Mapping[str, int], now: float) -> list[Action]:
        """The runtime stored and logged version `seq`, built from the `merged` versions."""
        self.published_seq = seq
        self.published_at = now
        self.merged.update(merged)
        self.pulled = []
        if seq >= self.rounds:
            return self._begin_lingering(now)
        self._wait_for_next_round(now)
        return []

    # -- state -------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.phase is Phase.FINISHED

    def next_deadline(self) -> float | None:
        return self.deadline

    # -- transitions -------------------------------------------------------------------------

    def _new_req(self) -> int:
        req = self.next_req
        self.next_req += 1
        return req

    def _wait_for_next_round(self, now: float) -> None:
        self.phase = Phase.WAITING
        self.pending = {}
        self.deadline = now + self.params.round_interval * self.rng.uniform(0.5, 1.5)

    def _begin_polling(self, now: float) -> list[Action]:
        self.phase = Phase.POLLING
        self.newer = {}
        # A neighbour that finished and whose last version we merged has nothing more to
        # give (and may have exited): asking it would only wait out poll_timeout.
        exhausted = {p for p, seq in self.final_versions.items() if self.merged.get(p, 0) >= seq}
        self.pending = {peer: self._new_req() for peer in self.neighbours if peer not in exhausted}
        self.deadline = now + self.params.poll_timeout
        if not self.pending:
            return self._train()  # every neighbour is done and merged: nothing left to wait for
        return [Send(peer, VersionRequest(req)) for peer, req in self.pending.items()]

    def _on_version_reply(self, peer: str, reply: VersionReply, now: float) -> list[Action]:
        if reply.done:
            self.peers_done.add(peer)
            self.final_versions[peer] = reply.seq
        if self.phase is Phase.LINGERING:
            self.pending.pop(peer, None)
            return self._finish_if_neighbours_done()
        if reply.req == ANNOUNCEMENT:
            return []
        if self.pending.get(peer) != reply.req or self.phase is not Phase.POLLING:
            return [Dropped(peer, "stale_version_reply")]
        del self.pending[peer]
        if reply.seq > self.merged.get(peer, 0):
            self.newer[peer] = reply.seq
        return self._end_polling(now) if not self.pending else []

    def _end_polling(self, now: float) -> list[Action]:
        if not self.newer:
            # Nothing new nearby: wait for a neighbour to move rather than drift away alone,
            # but never longer than wait_for_new (the neighbours may be dead).
            if self.published_seq > 0 and now < self.published_at + self.params.wait_for_new:
                self._wait_for_next_round(now)
                return []
            return self._train()
        self.phase = Phase.PULLING
        self.pulled = []
        self.pending = {peer: self._new_req() for peer in sorted(self.newer)}
        self.deadline = now + self.params.pull_timeout
        return [Send(peer, ModelRequest(req, self.peer_heads.get(peer, 0))) for peer, req in self.pending.items()]

    def _train(self) -> list[Action]:
        self.phase = Phase.TRAINING
        self.pending = {}
        self.deadline = None
        return [MergeAndTrain(self.published_seq + 1, tuple(self.pulled))]

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
