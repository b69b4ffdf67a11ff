"""Epidemic learning (de Vos et al. 2023): every round each node sends its model to s
random peers and averages what it receives with its own model, uniformly.

The s peers are drawn from a generator seeded by (sender, round) alone, so every member
can compute who sends to whom: a receiver knows exactly which models to wait for, and an
auditor can check that a sender pushed where the plan said. With a time-varying topology
(random-s-out) the draw is among the round's out-links."""

from __future__ import annotations

import random
from collections.abc import Mapping

from .base import Count, ModelInfo
from .push_rounds import PushRounds, PushRoundsParams

__all__ = ["Epidemic", "EpidemicParams"]


class EpidemicParams(PushRoundsParams):
    fanout: Count = 2  # s: peers each node sends to per round


class Epidemic(PushRounds):
    params: EpidemicParams

    def targets_of(self, sender: str, round_no: int) -> tuple[str, ...]:
        links = self.schedule.send_to(sender, round_no)
        if len(links) <= self.params.fanout:
            return links
        draw = random.Random(f"epidemic:{sender}:{round_no}")  # str seeds hash stably (SHA-512)
        return tuple(sorted(draw.sample(links, self.params.fanout)))

    def targets(self, round_no: int) -> tuple[str, ...]:
        return self.targets_of(self.name, round_no)

    def sources(self, round_no: int) -> tuple[str, ...]:
        return tuple(p for p in self.schedule.hear_from(self.name, round_no) if self.name in self.targets_of(p, round_no))

    def merge_weights(self, round_no: int, arrived: Mapping[str, ModelInfo]) -> tuple[dict[str, float], float]:
        return {peer: 1.0 for peer in arrived}, 1.0
