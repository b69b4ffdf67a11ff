"""Coordinate-wise trimmed mean (Yin, Chen, Ramchandran, Bartlett: "Byzantine-Robust Distributed
Learning: Towards Optimal Statistical Rates", ICML 2018).

For each coordinate, the f largest and the f smallest values over all candidates are dropped
and the remaining n - 2f averaged, unweighted (claimed sample counts are not trusted). Any f
Byzantine values are either dropped or lie between honest ones, so it needs n > 2f; f = 0 is
the plain unweighted mean."""

from __future__ import annotations

from torch import Tensor

from .base import FlatCandidates, MergeRule


class TrimmedMean(MergeRule):
    name = "trimmed_mean"
    requirement = "n >= 2f+1"

    def minimum_candidates(self, f: int) -> int:
        return 2 * f + 1

    def combine(self, flat: FlatCandidates, f: int) -> Tensor:
        ordered = flat.vectors.sort(dim=0).values
        return ordered[f:flat.count - f].mean(dim=0)
