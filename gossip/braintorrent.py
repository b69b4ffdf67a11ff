"""BrainTorrent (Roy et al. 2019, arXiv:1905.06731), made serverless and topology-aware.

In the paper one client at a time is selected, pings everyone, pulls the models whose version
is newer than the one it last merged, merges them weighted by sample counts, trains and bumps
its version. Here nobody selects: every node starts its own rounds on a randomized local
timer and talks only to its neighbours in the topology. A neighbour that does not answer in
time is left out of the round, so a dead, slow or silent peer never blocks anyone; one that
missed its (adaptive) deadline is suspected and not waited for again until it answers a
background probe (`gossip.liveness`).

Two changes keep sparse graphs from being swayed by one neighbour under label skew:
- A neighbour that has nothing newer is already inside our model (we merged it before), so
  it keeps its sample weight there: our model is weighted by our samples plus those of the
  quiet neighbours we merged, and one fresh neighbour -- say a large site that holds one
  class -- no longer outweighs the rest of the neighbourhood.
- A node does not run more than `max_lead` rounds ahead of a neighbour that answers and is
  still moving (waiting at most `wait_for_new` per round, and not at all for a neighbour
  whose version has not changed for `wait_for_new`): a slow node is not left to train its
  last rounds alone on its own skewed data after its neighbours finished, and a stuck one
  does not slow anybody down. A node that is itself more than `max_lead` rounds behind (it
  restarted after an outage) does not wait for news in turn, so that the two waits do not
  lock into one round per `wait_for_new`.
"""

from __future__ import annotations


from swarm.messages import ModelRequest, VersionReply, VersionRequest

from .base import ANNOUNCEMENT, Action, Count, Dropped, ModelInfo, Params, Phase, ProtocolMachine, PulledVersion, Seconds, Send

__all__ = ["ANNOUNCEMENT", "BrainTorrent", "BrainTorrentParams", "Phase"]


class BrainTorrentParams(Params):
    round_interval: Seconds = 0.3  # mean pause between rounds; each pause is drawn in [0.5x, 1.5x]
    poll_timeout: Seconds = 2.0  # the longest wait for version replies (less once a neighbour's round trips are known)
    pull_timeout: Seconds = 30.0  # how long to wait for the models we asked for
    wait_for_new: Seconds = 5.0  # with nothing new from any neighbour, wait this long before training alone
    max_lead: Count = 2  # rounds a node may run ahead of a neighbour that answers and moves (waiting at most wait_for_new)


class BrainTorrent(ProtocolMachine):
    params: BrainTorrentParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.newer: dict[str, int] = {}  # neighbour -> announced version newer than merged
        self.answered: dict[str, int] = {}  # moving neighbour -> version it announced in this poll
        self.ahead = False  # a neighbour that answered this poll is more than max_lead rounds ahead of us
        self.last_change: dict[str, tuple[int, float]] = {}  # neighbour -> (version it announced, since when)
        self.arrived: dict[str, ModelInfo] = {}  # neighbour -> verified model pulled this round
        self.round_peers: list[str] = []  # whom this round talks to
        self.merged_samples: dict[str, int] = {}  # neighbour -> samples signed in its last model we pulled

    # -- inputs ------------------------------------------------------------------------------

    def expects_model(self, peer: str, req: int) -> bool:
        return self.phase is Phase.PULLING and self.pending.get(peer) == req

    def awaiting_models(self) -> dict[str, int]:
        return dict(self.pending) if self.phase is Phase.PULLING else {}

    def model_arrived(self, peer: str, req: int | None, model: ModelInfo, now: float) -> list[Action]:
        if req is None or not self.expects_model(peer, req):
            return [Dropped(peer, "stale_model_reply")]
        del self.pending[peer]
        self.peer_heads[peer] = max(self.peer_heads.get(peer, 0), model.seq)
        if model.seq > self.merged.get(peer, 0):
            self.arrived[peer] = model
            self.merged_samples[peer] = model.samples
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
        if self.phase in (Phase.POLLING, Phase.PULLING):
            for peer in self.pending:  # no answer in time: suspected, and not waited for until it is back
                self.liveness.missed(peer, now)
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
        self.answered = {}
        self.ahead = False
        # A neighbour that finished and whose last version we merged has nothing more to
        # give (and may have exited): asking it would only wait out poll_timeout.
        exhausted = {p for p, seq in self.final_versions.items() if self.merged.get(p, 0) >= seq}
        self.round_peers = list(self.schedule.exchange_with(self.name, self.published_seq + 1))
        # A suspected neighbour is probed in the background (see liveness), not waited for.
        candidates = [peer for peer in self.round_peers if peer not in exhausted]
        self.pending = {peer: self._new_req() for peer in candidates if not self.liveness.suspected(peer)}
        if not self.pending:
            if candidates:
                return self._end_polling(now)  # only suspects: as if nobody had anything new
            return self._merge()  # every neighbour is done and merged: nothing left to wait for
        for peer, req in self.pending.items():
            self.liveness.asked(peer, req, now)
        self.deadline = now + max(self.liveness.reply_within(peer, self.params.poll_timeout) for peer in self.pending)
        return [Send(peer, VersionRequest(req)) for peer, req in self.pending.items()]

    def _on_version_reply(self, peer: str, reply: VersionReply, now: float) -> list[Action]:
        if self.pending.get(peer) != reply.req or self.phase is not Phase.POLLING:
            return [Dropped(peer, "stale_version_reply")]
        del self.pending[peer]
        seq, since = self.last_change.get(peer, (reply.seq, now))
        self.last_change[peer] = (reply.seq, since if seq == reply.seq else now)
        if not reply.done and reply.seq > 0 and now - self.last_change[peer][1] < self.params.wait_for_new:
            self.answered[peer] = reply.seq  # it has published and still moves: worth waiting for
        if reply.seq - self.published_seq > self.params.max_lead:
            self.ahead = True
        if reply.seq > self.merged.get(peer, 0):
            self.newer[peer] = reply.seq
        return self._end_polling(now) if not self.pending else []

    def _end_polling(self, now: float) -> list[Action]:
        # Nothing new nearby, or a neighbour that answers is max_lead rounds behind: wait for
        # it to move rather than drift away alone, but never longer than wait_for_new (the
        # neighbours may be dead or stuck).
        # A node far behind (restarted after an outage) does not wait for news: its neighbours
        # wait for it (max_lead), so waiting for them would lock both into wait_for_new per
        # round; it catches up at its own pace, merging whatever they publish meanwhile.
        too_far_ahead = any(self.published_seq + 1 - seq > self.params.max_lead for seq in self.answered.values())
        if (not self.newer and not self.ahead) or too_far_ahead:
            if self.published_seq > 0 and now < self.published_at + self.params.wait_for_new:
                self._wait_for_next_round(now)
                return []
        if not self.newer:
            return self._merge()
        self.phase = Phase.PULLING
        self.arrived = {}
        self.pending = {peer: self._new_req() for peer in sorted(self.newer)}
        self.deadline = now + self.params.pull_timeout
        return [Send(peer, ModelRequest(req, self.peer_heads.get(peer, 0))) for peer, req in self.pending.items()]

    def _merge(self) -> list[Action]:
        """BrainTorrent's step 3: every model weighted by the samples it was trained on
        (the count signed in its entry); ours also carries the samples of this round's
        neighbours that had nothing newer and whose earlier versions it already holds."""
        pulled = [PulledVersion(peer, m.seq, float(m.samples)) for peer, m in self.arrived.items()]
        carried = sum(self.merged_samples.get(peer, 0) for peer in self.round_peers
                      if peer not in self.arrived and self.merged.get(peer, 0) > 0)
        self.arrived = {}
        return self._train(self.published_seq + 1, pulled, float(self.samples + carried))
