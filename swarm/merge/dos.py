"""DOS, distance-based outlier suppression (Alkhunaizi, Kamzolov, Takáč, Nandakumar:
"Suppressing Poisoning Attacks on Federated Learning for Medical Imaging", MICCAI 2022).

Two distance matrices over the candidates' models: Euclidean and cosine (1 - cosine
similarity). In each, a candidate's typical distance is its median distance to the others,
and its outlier score is the robust z-score of that value among all candidates:

    z_i = (d_i - median(d)) / (1.4826 * MAD(d)),   MAD(d) = median |d - median(d)|

(1.4826 makes the MAD estimate a standard deviation for normal data). When more than half of
the typical distances are equal the MAD is 0; the mean absolute deviation, scaled by 1.2533,
stands in, and where that is 0 too all candidates are alike and score 0. The two scores are
added and the weights are softmax(-score): an outlier in either geometry (far away, or
pointing elsewhere) gets an exponentially small weight. The paper scores the distances with
COPOD (copula-based outlier detection); the robust z-score stands in for it here, needing no
extra dependency.

The merged model is the weighted mean under those weights. By default the given weights
(claimed sample counts) are ignored, since a Byzantine peer could claim any count;
`DOS(use_given_weights=True)` multiplies them in and renormalises. Needs n >= 3 (with two
candidates each is as far from the other); f is not used."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import FlatCandidates, MergeRule, pairwise_distances

MAD_TO_STD = 1.4826
MEAN_AD_TO_STD = 1.2533


def median(values: Tensor, dim: int = -1) -> Tensor:
    """The median, averaging the two middle values for an even count (torch.median takes
    the lower one)."""
    ordered = values.sort(dim=dim).values
    count = values.shape[dim]
    upper = ordered.narrow(dim, count // 2, 1).squeeze(dim)
    if count % 2:
        return upper
    return (ordered.narrow(dim, count // 2 - 1, 1).squeeze(dim) + upper) / 2


def robust_z_scores(values: Tensor) -> Tensor:
    centre = median(values)
    deviations = (values - centre).abs()
    spread = MAD_TO_STD * median(deviations)
    if not spread > 0:
        spread = MEAN_AD_TO_STD * deviations.mean()
    if not spread > 0:
        return torch.zeros_like(values)
    return (values - centre) / spread


def median_distance_to_others(distances: Tensor) -> Tensor:
    """(n,) each row's median over the other n - 1 entries (the diagonal left out)."""
    count = distances.shape[0]
    off_diagonal = ~torch.eye(count, dtype=torch.bool, device=distances.device)
    return median(distances[off_diagonal].reshape(count, count - 1), dim=1)


def cosine_distances(vectors: Tensor) -> Tensor:
    # A zero vector has no direction: its similarity to anything counts as 0 (distance 1).
    norms = vectors.norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
    unit = vectors / norms[:, None]
    return 1.0 - (unit @ unit.T).clamp(-1.0, 1.0)


def dos_scores(vectors: Tensor) -> Tensor:
    """(n,) outlier scores: the sum of the Euclidean and the cosine robust z-scores."""
    return sum(robust_z_scores(median_distance_to_others(matrix))
               for matrix in (pairwise_distances(vectors), cosine_distances(vectors)))


class DOS(MergeRule):
    name = "dos"
    requirement = "n >= 3"
    uses_f = False

    def __init__(self, use_given_weights: bool = False) -> None:
        self.use_given_weights = use_given_weights

    def minimum_candidates(self, f: int) -> int:
        return 3

    def weights(self, flat: FlatCandidates) -> Tensor:
        """The normalised merge weights of the candidates."""
        weights = torch.softmax(-dos_scores(flat.vectors), dim=0)
        if self.use_given_weights:
            weights = weights * flat.weights
            total = weights.sum()
            if not total > 0:
                raise ValueError("dos: the outlier weights times the given weights sum to 0")
            weights = weights / total
        return weights

    def combine(self, flat: FlatCandidates, f: int) -> Tensor:
        return self.weights(flat) @ flat.vectors

    def __repr__(self) -> str:
        return f"DOS(use_given_weights={self.use_given_weights!r})"
