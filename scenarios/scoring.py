"""How a comparison scores a model: the same metrics, the same way, for every method.

Every method of `swarm-scenario compare` ends with one model (Mix, FedAvg, FedSGD,
FedProx, the swarm's consensus) or one model per site (Single, Cross, the swarm's
published models). Each model is scored

- on the federation-wide held-out test set (`DataSource.global_test()`: a data set's
  official test split, which no site trains on), the *global* score; a method with one
  model per site gets the unweighted mean over its sites' models; and
- on each site's own local test split, the *per-site* score (Cross: on the other sites'
  splits), summarised by `nodes.metrics.site_means` as unweighted and test-size-weighted
  means that name the sites where a metric is undefined.

The swarm's consensus model is `swarm.merge.weighted_mean` of its sites' final models,
weighted by their training samples. The floor every table shows is `majority_class`:
predict the most frequent training class (pooled for the global score, each site's own for
its split), whose AUC is 0.5 and whose balanced accuracy is one over the classes present.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from nodes.metrics import classification_metrics, mean_and_std, segmentation_metrics, site_means
from nodes.training import check_output

__all__ = [
    "TASK_METRICS", "HeldOut", "site_metrics", "majority_class", "mean_over", "largest_drop", "site_means",
]

TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc"),
    "segmentation": ("dice", "pixel_accuracy"),
}
_EVAL_CHUNK = 512  # test samples per forward pass


class HeldOut(Protocol):
    """A test set: x [n, ...] inputs, y [n] labels or [n, H, W] masks (`Samples` fits)."""

    x: Tensor
    y: Tensor


@torch.no_grad()
def _scores(model: nn.Module, x: Tensor) -> Tensor:
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i:i + _EVAL_CHUNK]) for i in range(0, int(x.shape[0]), _EVAL_CHUNK)])
    finally:
        model.train(was_training)


def site_metrics(model: nn.Module, x: Tensor, y: Tensor, task: str) -> dict[str, float]:
    """The task's metrics (TASK_METRICS[task]) of `model` on (x, y), in eval mode; all NaN
    for an empty split."""
    if int(y.shape[0]) == 0:
        return {name: math.nan for name in TASK_METRICS[task]}
    scores = _scores(model, x)
    check_output(scores, y)
    if task == "classification":
        return classification_metrics(scores, y)
    return segmentation_metrics(scores, y)


def _constant_scores(label: int, like: Tensor, num_classes: int) -> Tensor:
    """Scores that call every sample (every pixel) class `label` and rank nothing."""
    shape = (int(like.shape[0]), num_classes, *like.shape[1:])
    scores = torch.zeros(shape)
    scores[:, label] = 1.0
    return scores


def _most_frequent(labels: Tensor, num_classes: int) -> int:
    return int(torch.bincount(labels.reshape(-1), minlength=num_classes).argmax())


def majority_class(train_labels: Mapping[str, Tensor], test_labels: Mapping[str, Tensor],
                   held_out_labels: Tensor | None, num_classes: int, task: str) -> dict[str, Any]:
    """The trivial baseline: {"sites": {site: metrics of always predicting the site's own
    most frequent training class on its test split}, "global": metrics of always
    predicting the pooled most frequent training class on the held-out set (or {})}.
    For segmentation "class" means pixel class (almost always background)."""

    def score(label: int, y: Tensor) -> dict[str, float]:
        if int(y.shape[0]) == 0:
            return {name: math.nan for name in TASK_METRICS[task]}
        scores = _constant_scores(label, y, num_classes)
        return classification_metrics(scores, y) if task == "classification" else segmentation_metrics(scores, y)

    sites = {name: score(_most_frequent(train_labels[name], num_classes), y) for name, y in test_labels.items()}
    pooled = _most_frequent(torch.cat([y.reshape(-1) for y in train_labels.values()]), num_classes)
    return {"sites": sites, "global": score(pooled, held_out_labels) if held_out_labels is not None else {}}


def mean_over(rows: Iterable[Mapping[str, float]], metrics: Sequence[str]) -> dict[str, float]:
    """Per metric, the unweighted mean of the rows' values, undefined ones left out (NaN
    when none is defined)."""
    rows = list(rows)
    return {m: mean_and_std([row.get(m, math.nan) for row in rows])["mean"] for m in metrics}


def largest_drop(series: Sequence[float], after: int) -> float:
    """The largest fall of `series` (one value per round, round 1 first) from one round to
    the next, among rounds after round `after`; 0.0 when it never falls, NaN when no pair
    of defined values is left."""
    pairs = [(a, b) for a, b in zip(series[after - 1:], series[after:]) if not (math.isnan(a) or math.isnan(b))]
    if not pairs:
        return math.nan
    return max(0.0, max(a - b for a, b in pairs))
