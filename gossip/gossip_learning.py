"""Gossip learning (Ormandi et al. 2013; Hegedus et al. 2019): no rounds in lockstep.

Every `push_interval` a node sends its latest model to one random neighbour. When models
have arrived, it merges them with its own weighted by their age (how many training rounds
went into each: an older model has seen more data), trains, and publishes a model whose
age is the largest merged age plus one. The age is signed into the entry's metrics, so a
receiver weights by a figure the author committed to. With nothing new for
`wait_for_new` seconds a node trains alone, so a dead neighbourhood never stalls it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .base import Action, ModelInfo, Params, Phase, PulledVersion, PushReceiver, Seconds

__all__ = ["GossipLearning", "GossipParams", "age_weights"]

AGE = "age"  # the signed metric that carries a model's age


class GossipParams(Params):
    push_interval: Seconds = 0.5  # mean time between pushes; each gap is drawn in [0.5x, 1.5x]
    wait_for_new: Seconds = 5.0  # with nothing received for this long after publishing, train alone


def age_weights(own_age: float, ages: Mapping[str, float]) -> tuple[dict[str, float], float]:
    """Merge weights proportional to age; all-zero ages (fresh models) weigh equally."""
    if own_age <= 0 and all(age <= 0 for age in ages.values()):
        return {peer: 1.0 for peer in ages}, 1.0
    return {peer: max(age, 0.0) for peer, age in ages.items()}, max(own_age, 0.0)


class GossipLearning(PushReceiver):
    params: GossipParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.age = float(self.resume_metrics.get(AGE, self.published_seq))
        self.next_push = 0.0
        self.train_by = 0.0  # when we stop waiting for news and train alone

    # -- inputs --------------------------------------------------------------------------------

    def _on_push(self, now: float) -> list[Action]:
        return self._merge() if self.phase is Phase.WAITING else []

    def tick(self, now: float) -> list[Action]:
        # Pushing goes on in every phase, lingering included: a node that finished early
        # keeps feeding the neighbours that have not.
        actions: list[Action] = []
        if self._pushing and now >= self.next_push:
            actions += self._push_to_random_neighbour(now)
        return actions + super().tick(now)

    def next_deadline(self) -> float | None:
        deadline = super().next_deadline()
        if not self._pushing:
            return deadline
        return min(d for d in (deadline, self.next_push) if d is not None)

    @property
    def _pushing(self) -> bool:
        return self.phase is not Phase.FINISHED and self.published_seq > 0

    # -- transitions ---------------------------------------------------------------------------

    def _start_rounds(self, now: float) -> list[Action]:
        if self.published_seq == 0:
            return self._train_now([])
        return self._after_publish(now)

    def _after_publish(self, now: float) -> list[Action]:
        # No push here, only on the timer: pushing on every publish would let two fast
        # neighbours drive each other through their rounds while slower ones fall behind.
        self.phase = Phase.WAITING
        self.deadline = now + self.params.wait_for_new
        if self.inbox:  # models that came in while we trained
            return self._merge()
        return []

    def _on_deadline(self, now: float) -> list[Action]:
        if self.phase is Phase.WAITING:
            return self._merge()  # nothing new in wait_for_new: train alone
        return []

    # -- helpers -------------------------------------------------------------------------------

    def _push_to_random_neighbour(self, now: float) -> list[Action]:
        self.next_push = now + self.params.push_interval * self.rng.uniform(0.5, 1.5)
        links = [p for p in self.schedule.send_to(self.name, self.published_seq + 1) if p not in self.peers_done]
        return self._push([self.rng.choice(links)]) if links else []

    def _merge(self) -> list[Action]:
        arrived, self.inbox = self.inbox, {}
        return self._train_now(sorted(arrived.items()))

    def _train_now(self, arrived: Sequence[tuple[str, ModelInfo]]) -> list[Action]:
        weights, self_weight = age_weights(self.age, {peer: model.age for peer, model in arrived})
        pulled = [PulledVersion(peer, model.seq, weights[peer]) for peer, model in arrived]
        self.age = max([self.age, *(model.age for _, model in arrived)]) + 1
        return self._train(self.published_seq + 1, pulled, self_weight, {AGE: self.age})
