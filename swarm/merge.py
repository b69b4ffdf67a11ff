"""Merge rules: how a node combines its own model with the models it pulled from peers.

BrainTorrent (Roy, Siddiqui, Pölsterl, Navab, Wachinger: "BrainTorrent: A Peer-to-Peer
Environment for Decentralized Federated Learning", arXiv:1905.06731, 2019) merges the
models a node holds, weighted by how many training samples each was trained on:

    M_i <- sum_j  a_j / (sum_k a_k) * M_j

where j runs over the node itself and the peers whose newer models it pulled, and a_j is
the sample count of model j. `weighted_mean` implements that for state dicts."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def weighted_mean(weighted_states: Sequence[tuple[float, Mapping[str, Tensor]]]) -> dict[str, Tensor]:
    """The weighted average of state dicts, weights normalised to sum to 1.

    Floating-point tensors are accumulated in float64 and returned in their original dtype
    (and on the first state's device). Non-floating tensors (step counters, integer
    buffers) are copied from the first state. Weights must be finite and >= 0 with a
    positive total; zero-weight states still have to match.

    ValueError when there are no states, a weight is negative or not finite, the total is
    not positive, or the states differ in keys, shapes or dtypes."""
    if not weighted_states:
        raise ValueError("weighted_mean: no states to merge")
    weights: list[float] = []
    for i, item in enumerate(weighted_states):
        if not isinstance(item, tuple) or len(item) != 2:
            raise ValueError(f"weighted_mean: item {i} is not a (weight, state) pair")
        weight = item[0]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"weighted_mean: weight {i} is not a number: {weight!r}")
        weight = float(weight)
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weighted_mean: weight {i} must be finite and >= 0, got {weight!r}")
        weights.append(weight)
    total = math.fsum(weights)
    if not total > 0:
        raise ValueError(f"weighted_mean: total weight must be positive, got {total!r}")

    first = weighted_states[0][1]
    keys = list(first.keys())
    key_set = set(keys)
    for i, (_, state) in enumerate(weighted_states[1:], start=1):
        if set(state.keys()) != key_set:
            missing = sorted(key_set - set(state.keys()))
            extra = sorted(set(state.keys()) - key_set)
            raise ValueError(f"weighted_mean: state {i} keys differ (missing {missing}, extra {extra})")
        for key in keys:
            a, b = first[key], state[key]
            if tuple(a.shape) != tuple(b.shape):
                raise ValueError(
                    f"weighted_mean: {key!r} has shape {tuple(b.shape)} in state {i}, "
                    f"{tuple(a.shape)} in state 0"
                )
            if a.dtype != b.dtype:
                raise ValueError(f"weighted_mean: {key!r} has dtype {b.dtype} in state {i}, {a.dtype} in state 0")

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
