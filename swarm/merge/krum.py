"""Krum and multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer: "Machine Learning with
Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017).

Each candidate is scored by the sum of squared Euclidean distances to its n - f - 2 nearest
other candidates: a model surrounded by others scores low, an outlier high. Krum returns the
candidate with the lowest score; multi-Krum averages the m lowest-scoring ones, weighted by
their given weights capped at the median weight (claimed sample counts cannot buy a
candidate the merge; m defaults to n - f, at most n - f). Ties go to the lower index, so to
the node's own model first. The analysis needs n >= 2f+3; the distances are taken over all
floating tensors of a model at once."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import FlatCandidates, MergeRule, capped_weights, pairwise_distances


def krum_scores(vectors: Tensor, f: int) -> Tensor:
    """(n,) sum of squared distances from each row to its n - f - 2 nearest other rows."""
    count = vectors.shape[0]
    distances = pairwise_distances(vectors) ** 2
    # Sorting each row puts its own zero distance first; skip it.
    nearest = distances.sort(dim=1).values[:, 1:count - f - 1]
    return nearest.sum(dim=1)


def krum_ranking(vectors: Tensor, f: int) -> Tensor:
    """Candidate indices from the lowest score to the highest, ties by index."""
    return torch.argsort(krum_scores(vectors, f), stable=True)


class Krum(MergeRule):
    name = "krum"
    requirement = "n >= 2f+3"

    def minimum_candidates(self, f: int) -> int:
        return 2 * f + 3

    def combine(self, flat: FlatCandidates, f: int) -> Tensor:
        return flat.vectors[krum_ranking(flat.vectors, f)[0]]


class MultiKrum(MergeRule):
    """`m` candidates are averaged; None means n - f of them, n being the merge's count."""

    name = "multi_krum"

    def __init__(self, m: int | None = None) -> None:
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ValueError(f"multi_krum: m must be an integer >= 1 or None, got {m!r}")
        self.m = m

    @property
    def requirement(self) -> str:  # type: ignore[override]
        return "n >= 2f+3" if self.m is None else "n >= 2f+3 and n >= m+f"

    def minimum_candidates(self, f: int) -> int:
        return 2 * f + 3 if self.m is None else max(2 * f + 3, self.m + f)

    def combine(self, flat: FlatCandidates, f: int) -> Tensor:
        m = flat.count - f if self.m is None else self.m
        chosen = krum_ranking(flat.vectors, f)[:m]
        weights = capped_weights(flat.weights)[chosen]
        total = weights.sum()
        if not total > 0:
            raise ValueError(f"multi_krum: the {m} candidates chosen ({chosen.tolist()}) all have weight 0")
        return weights / total @ flat.vectors[chosen]

    def __repr__(self) -> str:
        return f"MultiKrum(m={self.m!r})"
