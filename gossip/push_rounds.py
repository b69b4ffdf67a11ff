"""Synchronous push rounds, shared by D-PSGD and epidemic learning.

Round t: every node pushes its version t-1 to the members it sends to in round t, collects
the versions t-1 (or newer) of the members that send to it, merges them with its own,
trains and publishes version t. Round 1 starts from the common initial model, so it trains
alone. A sender that is dead or slow never blocks a round: after `round_timeout` the node
merges whoever answered, and the subclass renormalises the weights over them; a sender that
missed a round is suspected and not waited for until it is heard from again
(`gossip.liveness`)."""

from __future__ import annotations

from collections.abc import Mapping

from .base import Action, Dropped, ModelInfo, Params, Phase, PulledVersion, PushReceiver, Seconds


class PushRoundsParams(Params):
    round_timeout: Seconds = 30.0  # the longest a round waits for its senders' models


class PushRounds(PushReceiver):
    params: PushRoundsParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.expected: tuple[str, ...] = ()

    # -- what a subclass decides ---------------------------------------------------------------

    def targets(self, round_no: int) -> tuple[str, ...]:
        """Whom we push our version round_no - 1 to, for round `round_no`."""
        return self.schedule.send_to(self.name, round_no)

    def sources(self, round_no: int) -> tuple[str, ...]:
        """Whose models we merge in round `round_no`."""
        return self.schedule.hear_from(self.name, round_no)

    def merge_weights(self, round_no: int, arrived: Mapping[str, ModelInfo]) -> tuple[dict[str, float], float]:
        """(weight per arrived neighbour, our own weight); the merge normalises them."""
        raise NotImplementedError

    # -- inputs --------------------------------------------------------------------------------

    def _on_push(self, now: float) -> list[Action]:
        return self._merge() if self.phase is Phase.COLLECTING and self._complete() else []

    # -- transitions ---------------------------------------------------------------------------

    def _start_rounds(self, now: float) -> list[Action]:
        if self.published_seq == 0:
            return self._train(1, [], 1.0)
        return self._after_publish(now)  # resumed: push what we hold and collect the next round

    def _after_publish(self, now: float) -> list[Action]:
        round_no = self.published_seq + 1
        self.phase = Phase.COLLECTING
        self.deadline = now + self.params.round_timeout
        # A suspected sender is probed in the background (see liveness), not waited for.
        self.expected = tuple(p for p in self.sources(round_no) if p not in self.peers_done and not self.liveness.suspected(p))
        actions = self._push(self.targets(round_no))
        if self._complete():
            actions += self._merge()
        return actions

    def _on_deadline(self, now: float) -> list[Action]:
        if self.phase is Phase.COLLECTING:
            missing = [p for p in self.expected if not self._has_round_model(p)]
            for peer in missing:
                self.liveness.missed(peer, now)
            return [Dropped(p, "round_timeout") for p in missing] + self._merge()
        return []

    def _on_back(self, peer: str, now: float) -> list[Action]:
        # A sender that was suspected when this round began is worth waiting for again.
        if self.phase is Phase.COLLECTING and peer not in self.expected and peer not in self.peers_done \
                and peer in self.sources(self.published_seq + 1):
            self.expected += (peer,)
        return []

    def _on_announcement(self, peer: str, now: float) -> list[Action]:
        # A neighbour that finished sends nothing more: stop waiting for it this round.
        if self.phase is Phase.COLLECTING and self._complete():
            return self._merge()
        return []

    # -- helpers -------------------------------------------------------------------------------

    def _has_round_model(self, peer: str) -> bool:
        model = self.inbox.get(peer)
        return model is not None and model.seq >= self.published_seq

    def _complete(self) -> bool:
        return all(self._has_round_model(p) or p in self.peers_done for p in self.expected)

    def _merge(self) -> list[Action]:
        round_no = self.published_seq + 1
        # A late sender's older (but unmerged) version still carries information: use it.
        arrived = {p: self.inbox.pop(p) for p in self.expected if p in self.inbox}
        weights, self_weight = self.merge_weights(round_no, arrived)
        pulled = [PulledVersion(peer, model.seq, weights[peer]) for peer, model in sorted(arrived.items())]
        return self._train(round_no, pulled, self_weight)
