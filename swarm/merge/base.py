"""What every merge rule shares: checking the candidates, and flattening them into vectors.

A candidate is a (weight, state dict) pair; candidate 0 is the merging node's own model, the
weight is a sample count or a mixing weight. Rules that measure distances between models see
each candidate as one float64 vector (all its floating tensors, in candidate 0's key order),
combine those vectors into one, and `FlatCandidates.state` turns the result back into a state
dict in the original shapes and dtypes. Non-floating tensors (step counters, integer buffers)
are never merged: they come from candidate 0."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

Candidates = Sequence[tuple[float, Mapping[str, Tensor]]]


def check_candidates(candidates: Candidates, who: str) -> tuple[list[float], list[Mapping[str, Tensor]]]:
    """The weights (as floats) and the states; ValueError, prefixed with `who`, when there are
    none, a weight is not a finite number >= 0, the total weight is not positive, or the states
    differ in keys, shapes or dtypes."""
    if not candidates:
        raise ValueError(f"{who}: no states to merge")
    weights: list[float] = []
    for i, item in enumerate(candidates):
        if not isinstance(item, tuple) or len(item) != 2:
            raise ValueError(f"{who}: item {i} is not a (weight, state) pair")
        weight = item[0]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"{who}: weight {i} is not a number: {weight!r}")
        weight = float(weight)
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"{who}: weight {i} must be finite and >= 0, got {weight!r}")
        weights.append(weight)
    total = math.fsum(weights)
    if not total > 0:
        raise ValueError(f"{who}: total weight must be positive, got {total!r}")

    states = [state for _, state in candidates]
    first = states[0]
    keys = list(first.keys())
    key_set = set(keys)
    for i, state in enumerate(states[1:], start=1):
        if set(state.keys()) != key_set:
            missing = sorted(key_set - set(state.keys()))
            extra = sorted(set(state.keys()) - key_set)
            raise ValueError(f"{who}: state {i} keys differ (missing {missing}, extra {extra})")
        for key in keys:
            a, b = first[key], state[key]
            if tuple(a.shape) != tuple(b.shape):
                raise ValueError(f"{who}: {key!r} has shape {tuple(b.shape)} in state {i}, {tuple(a.shape)} in state 0")
            if a.dtype != b.dtype:
                raise ValueError(f"{who}: {key!r} has dtype {b.dtype} in state {i}, {a.dtype} in state 0")
    return weights, states


@dataclass(frozen=True)
class FlatCandidates:
    """The candidates' floating tensors as rows of one float64 matrix, on candidate 0's device."""

    weights: Tensor  # (n,) float64, as given (not normalised)
    vectors: Tensor  # (n, D) float64
    template: Mapping[str, Tensor]  # candidate 0: keys, shapes, dtypes, non-floating values

    @classmethod
    def of(cls, weights: Sequence[float], states: Sequence[Mapping[str, Tensor]], who: str) -> FlatCandidates:
        """From checked candidates; ValueError for complex tensors or non-finite values."""
        template = states[0]
        device = next(iter(template.values())).device if template else torch.device("cpu")
        for key, tensor in template.items():
            if tensor.is_complex():
                raise ValueError(f"{who}: {key!r} is complex; only the mean merges complex tensors")
        keys = [key for key, tensor in template.items() if tensor.is_floating_point()]
        rows = []
        for state in states:
            parts = [state[key].detach().reshape(-1).to(device=device, dtype=torch.float64) for key in keys]
            rows.append(torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=device))
        vectors = torch.stack(rows)
        finite = torch.isfinite(vectors).all(dim=1)
        if not bool(finite.all()):
            bad = int(torch.nonzero(~finite)[0])
            raise ValueError(f"{who}: state {bad} holds NaN or infinite values; reject such models before merging")
        return cls(torch.tensor(list(weights), dtype=torch.float64, device=device), vectors, template)

    @property
    def count(self) -> int:
        return self.vectors.shape[0]

    def state(self, vector: Tensor) -> dict[str, Tensor]:
        """A state dict shaped like candidate 0 holding `vector` in its floating tensors."""
        merged: dict[str, Tensor] = {}
        offset = 0
        for key, reference in self.template.items():
            if not reference.is_floating_point():
                merged[key] = reference.detach().clone()
                continue
            size = reference.numel()
            # A copy even where the dtype matches: a view would keep the whole (n, D) matrix alive.
            merged[key] = vector[offset:offset + size].reshape(reference.shape).to(reference.dtype, copy=True)
            offset += size
        return merged


def check_f(f: int, who: str) -> int:
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ValueError(f"{who}: f must be an integer >= 0, got {f!r}")
    return f


def capped_weights(weights: Tensor) -> Tensor:
    """The weights, none above their median. Weights are sample counts or ages that the
    candidates claim themselves: uncapped, one Byzantine candidate claiming 10^18 samples
    would be the whole merge of any rule that weights by them."""
    return weights.clamp(max=float(weights.median()))


def pairwise_distances(vectors: Tensor) -> Tensor:
    """(n, n) Euclidean distances between rows, exactly 0 on the diagonal."""
    # Summing the differences directly, not by the |a|^2 + |b|^2 - 2ab expansion, which
    # cancels badly when the models are close (the usual case: they share an ancestor).
    return torch.cdist(vectors, vectors, compute_mode="donot_use_mm_for_euclid_dist")


class MergeRule:
    """One way to merge candidates. Subclasses set `name` and `requirement` (the bound on the
    number of candidates n, as text), implement `minimum_candidates` and `combine`; rules that
    do not depend on the number f of tolerated Byzantine candidates set `uses_f = False`."""

    name: ClassVar[str]
    requirement: ClassVar[str]
    uses_f: ClassVar[bool] = True

    def minimum_candidates(self, f: int) -> int:
        """The fewest candidates (own model included) this rule needs to tolerate f bad ones."""
        raise NotImplementedError

    def combine(self, flat: FlatCandidates, f: int) -> Tensor:
        """The merged vector from the candidates' vectors."""
        raise NotImplementedError

    def merge(self, candidates: Candidates, f: int = 0) -> dict[str, Tensor]:
        """Merge (weight, state) pairs, candidate 0 being the node's own model; ValueError for
        malformed candidates or fewer than `minimum_candidates(f)` of them."""
        weights, states = check_candidates(candidates, self.name)
        self.check_count(len(states), check_f(f, self.name))
        flat = FlatCandidates.of(weights, states, self.name)
        return flat.state(self.combine(flat, f))

    def check_count(self, count: int, f: int) -> None:
        needed = self.minimum_candidates(f)
        if count < needed:
            with_f = f" with f = {f}" if self.uses_f else ""
            raise ValueError(f"{self.name}{with_f} needs at least {needed} candidates ({self.requirement}), got {count}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
