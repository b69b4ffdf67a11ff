"""BrainTorrent (Roy et al. 2019, arXiv:1905.06731), made serverless and topology-aware.

In the paper one client at a time is selected, pings everyone, pulls the models whose version
is newer than the one it last merged, merges them weighted by sample counts, trains and bumps
its version. Here nobody selects: every node starts its own rounds on a randomized local
timer and talks only to its neighbours in the topology. A neighbour that does not answer in
time is left out of the round, so a dead, slow or silent peer never blocks anyone.
"""

from __future__ import annotations

from dataclasses import dataclass

from swarm.messages import ModelRequest, VersionReply, VersionRequest

from .base import ANNOUNCEMENT, Action, Dropped, ModelInfo, Params, Phase, ProtocolMachine, PulledVersion, Send

__all__ = ["ANNOUNCEMENT", "BrainTorrent", "BrainTorrentParams", "Phase"]


@dataclass(frozen=True)
class BrainTorrentParams(Params):
    round_interval: float = 0.3  # mean pause between rounds; each pause is drawn in [0.5x, 1.5x]
    poll_timeout: float = 2.0  # how long to wait for version replies
    pull_timeout: float = 30.0  # how long to wait for the models we asked for
    wait_for_new: float = 5.0  # with nothing new from any neighbour, wait this long before training alone


class BrainTorrent(ProtocolMachine):
    params: BrainTorrentParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.newer: dict[str, int] = {}  # neighbour -> announced version newer than merged
        self.arrived: dict[str, ModelInfo] = {}  # neighbour -> verified model pulled this round

    # -- inputs ------------------------------------------------------------------------------

    def expects_model(self, peer: str, req: int) -> bool:
        return self.phase is Phase.PULLING and self.pending.get(peer) == req

    def model_arrived(self, peer: str, req: int | None, model: ModelInfo, now: float) -> list[Action]:
        if req is None or not self.expects_model(peer, req):
            return [Dropped(peer, "stale_model_reply")]
        del self.pending[peer]
        self.peer_heads[peer] = max(self.peer_heads.get(peer, 0), model.seq)
        if model.seq > self.merged.get(peer, 0):
            self.arrived[peer] = model
        return self._merge() if not self.pending else []

    def model_failed(self, peer: str, req: int | None, reason: str, now: float) -> list[Action]:
        if req is None or not self.expects_model(peer, req):
            return [Dropped(peer, "stale_refusal")]
        del self.pending[peer]
        actions: list[Action] = [Dropped(peer, reason)]
        if not self.pending:
            actions += self._merge()
        return actions

    # -- transitions -------------------------------------------------------------------------

    def _start_rounds(self, now: float) -> list[Action]:
        self._wait_for_next_round(now)
        return []

    def _after_publish(self, now: float) -> list[Action]:
        self._wait_for_next_round(now)
        return []

    def _on_deadline(self, now: float) -> list[Action]:
        if self.phase is Phase.WAITING:
            return self._begin_polling(now)
        if self.phase is Phase.POLLING:
            return self._end_polling(now)
        if self.phase is Phase.PULLING:
            return self._merge()  # go on with the models that did arrive
        return []

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
        round_peers = self.schedule.exchange_with(self.name, self.published_seq + 1)
        self.pending = {peer: self._new_req() for peer in round_peers if peer not in exhausted}
        self.deadline = now + self.params.poll_timeout
        if not self.pending:
            return self._merge()  # every neighbour is done and merged: nothing left to wait for
        return [Send(peer, VersionRequest(req)) for peer, req in self.pending.items()]

    def _on_version_reply(self, peer: str, reply: VersionReply, now: float) -> list[Action]:
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
            return self._merge()
        self.phase = Phase.PULLING
        self.arrived = {}
        self.pending = {peer: self._new_req() for peer in sorted(self.newer)}
        self.deadline = now + self.params.pull_timeout
        return [Send(peer, ModelRequest(req, self.peer_heads.get(peer, 0))) for peer, req in self.pending.items()]

    def _merge(self) -> list[Action]:
        """BrainTorrent's step 3: every model weighted by the samples it was trained on
        (the count signed in its entry)."""
        pulled = [PulledVersion(peer, m.seq, float(m.samples)) for peer, m in self.arrived.items()]
        self.arrived = {}
        return self._train(self.published_seq + 1, pulled, float(self.samples))
