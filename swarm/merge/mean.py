"""The weighted mean: BrainTorrent's merge, and the baseline the robust rules are measured against.

BrainTorrent (Roy, Siddiqui, Pölsterl, Navab, Wachinger: "BrainTorrent: A Peer-to-Peer
Environment for Decentralized Federated Learning", arXiv:1905.06731, 2019) merges the
models a node holds, weighted by how many training samples each was trained on:

    M_i <- sum_j  a_j / (sum_k a_k) * M_j

where j runs over the node itself and the peers whose newer models it pulled, and a_j is
the sample count of model j. `weighted_mean` implements that for state dicts, and `Mean` is
the same as a merge rule. It tolerates no Byzantine candidate: one arbitrary model moves the
mean anywhere."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .base import Candidates, MergeRule, check_candidates, check_f


def weighted_mean(weighted_states: Sequence[tuple[float, Mapping[str, Tensor]]]) -> dict[str, Tensor]:
    """The weighted average of state dicts, weights normalised to sum to 1.

    Floating-point tensors are accumulated in float64 and returned in their original dtype
    (and on the first state's device). Non-floating tensors (step counters, integer
    buffers) are copied from the first state. Weights must be finite and >= 0 with a
    positive total; zero-weight states still have to match.

    ValueError when there are no states, a weight is negative or not finite, the total is
    not positive, or the states differ in keys, shapes or dtypes."""
    weights, states = check_candidates(weighted_states, "weighted_mean")
    total = math.fsum(weights)
    first = states[0]
    keys = list(first.keys())
    coefficients = [w / total for w in weights]
    merged: dict[str, Tensor] = {}
    for key in keys:
        reference = first[key]
        if not (reference.is_floating_point() or reference.is_complex()):
            merged[key] = reference.detach().clone()
            continue
        acc_dtype = torch.complex128 if reference.is_complex() else torch.float64
        acc = torch.zeros(reference.shape, dtype=acc_dtype, device=reference.device)
        for c, (_, state) in zip(coefficients, weighted_states):
            if c:
                acc.add_(state[key].detach().to(device=reference.device, dtype=acc_dtype), alpha=c)
        merged[key] = acc.to(reference.dtype)
    return merged


class Mean(MergeRule):
    """`weighted_mean` as a rule; f is not used (the mean tolerates none)."""

    name = "mean"
    requirement = "n >= 1"
    uses_f = False

    def minimum_candidates(self, f: int) -> int:
        return 1

    def merge(self, candidates: Candidates, f: int = 0) -> dict[str, Tensor]:
        check_f(f, self.name)
        # weighted_mean itself, so that the rule and the function never drift apart (it
        # also merges complex tensors, which the distance-based rules refuse).
        return weighted_mean(candidates)
