"""Coordinate-wise median (Yin, Chen, Ramchandran, Bartlett: "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates", ICML 2018).

Each coordinate of the merged model is the median of that coordinate over all candidates, the
node's own model included; weights are ignored, since a Byzantine peer could claim any sample
count. With an even number of candidates the two middle values are averaged. The median stays
within the range of the honest values as long as they are a strict majority: n >= 2f+1."""

from __future__ import annotations

from torch import Tensor

from .base import FlatCandidates, MergeRule


class Median(MergeRule):
    name = "median"
    requirement = "n >= 2f+1"

    def minimum_candidates(self, f: int) -> int:
        return 2 * f + 1

    def combine(self, flat: FlatCandidates, f: int) -> Tensor:
        ordered = flat.vectors.sort(dim=0).values
        middle = flat.count // 2
        if flat.count % 2:
            return ordered[middle]
        return (ordered[middle - 1] + ordered[middle]) / 2
