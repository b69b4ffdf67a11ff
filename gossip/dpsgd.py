"""D-PSGD (Lian et al. 2017): average with the neighbours using Metropolis-Hastings weights,
then take local SGD steps.

x_i <- w_ii x_i + sum_j w_ij x_j with w_ij = 1 / (1 + max(d_i, d_j)), the doubly stochastic
mixing matrix whose spectral gap sets how fast the federation reaches consensus. A
neighbour that did not answer in time is left out and the remaining weights are
renormalised (the merge divides by their sum), so a round never waits forever."""

from __future__ import annotations

from collections.abc import Mapping

from .base import ModelInfo
from .push_rounds import PushRounds, PushRoundsParams

__all__ = ["DPSGD", "DPSGDParams"]


DPSGDParams = PushRoundsParams  # round_timeout, linger, done_poll_interval


class DPSGD(PushRounds):
    def merge_weights(self, round_no: int, arrived: Mapping[str, ModelInfo]) -> tuple[dict[str, float], float]:
        row = self.schedule.mixing_weights(self.name, round_no)
        return {peer: row[peer] for peer in arrived}, row[self.name]
