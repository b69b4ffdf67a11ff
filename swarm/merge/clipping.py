"""Self-centred clipping (He, Karimireddy, Jaggi: "Byzantine-robust decentralized learning via
ClippedGossip", arXiv:2202.01545, 2022).

A node moves from its own model towards each neighbour's, but by at most a radius tau:

    x_own + sum_j w_j * clip(x_j - x_own, tau),   clip(v, tau) = v * min(1, tau / ||v||)

with the weights, capped at their median (they are claimed by the candidates), normalised
over all candidates (the own model's term is zero). The radius
adapts each merge: the second-largest neighbour distance ||x_j - x_own||, so the farthest
neighbour is pulled in to the distance of the next one and the others pass unchanged. A
Byzantine neighbour can move the node by at most w_j * tau, however far away it sends its
model, which is why the rule suits sparse graphs. It needs two neighbours (n >= 3): with a
single one there is no second distance, tau would be that neighbour's own distance and
nothing would be clipped (the attack study showed a lone Byzantine neighbour in the last
round then wrecking the node), so a merge with one neighbour keeps the own model instead.
Pairwise gossip, which merges one neighbour at a time, needs a fixed radius instead: `tau`
in the plan (in parameter units; e.g. a little above the distance honest neighbours' models
usually are apart), which works with any n >= 2. f is not used. Candidate 0 must be the node's own model: the clipping is centred on it."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import FlatCandidates, MergeRule, capped_weights


def adaptive_radius(distances: Tensor) -> Tensor:
    """The second-largest of the neighbour distances (at least two of them)."""
    return distances.topk(2).values[1]


class SelfCentredClipping(MergeRule):
    name = "clipping"
    uses_f = False

    def __init__(self, tau: float | None = None) -> None:
        if tau is not None and not tau > 0:
            raise ValueError(f"clipping: tau must be > 0, got {tau!r}")
        self.tau = tau
        self.requirement = "n >= 3" if tau is None else "n >= 2 with a fixed tau"

    def minimum_candidates(self, f: int) -> int:
        return 3 if self.tau is None else 2

    def combine(self, flat: FlatCandidates, f: int) -> Tensor:
        own = flat.vectors[0]
        differences = flat.vectors[1:] - own
        distances = differences.norm(dim=1)
        radius = adaptive_radius(distances) if self.tau is None else torch.tensor(self.tau, dtype=distances.dtype)
        # min(1, tau / ||v||), written so that a zero difference (scale irrelevant) does not divide by 0.
        scales = torch.where(distances > radius, radius / distances.clamp_min(torch.finfo(torch.float64).tiny), 1.0)
        weights = capped_weights(flat.weights)
        coefficients = weights[1:] / weights.sum() * scales
        return own + coefficients @ differences
