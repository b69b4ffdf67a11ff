"""Evaluation metrics for the comparison study: accuracy, sensitivity, specificity and ROC
AUC for classification, Dice and pixel accuracy for segmentation, and mean +- std over
repeats -- the metrics of the Guan et al. survey of federated learning for medical imaging.

Pure torch/numpy. Everything returns plain Python floats. A metric that is undefined on
its input (no positives, no negatives, no samples) is NaN; the functions never raise on
degenerate input, only on malformed input (wrong shapes, labels out of range).

Definitions (class 1 is the positive class in the binary case):
  accuracy     = (TP + TN) / n                  fraction of argmax predictions that are right
  balanced accuracy = mean over the classes present of each class's recall
                 (binary with both classes: (sensitivity + specificity) / 2; a constant
                 prediction scores 1 / classes present, whatever the class mix)
  sensitivity  = TP / (TP + FN)                 recall / true-positive rate
  specificity  = TN / (TN + FP)                 true-negative rate
  AUC          = P(score(pos) > score(neg)) + 1/2 P(score(pos) == score(neg)),
                 the Mann-Whitney U statistic over n_pos * n_neg pairs divided by that
                 count, which is the area under the ROC curve (Hanley & McNeil, 1982)
  Dice         = 2 |A n B| / (|A| + |B|)        per class, A = predicted, B = true pixels
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["classification_metrics", "roc_auc", "dice", "segmentation_metrics", "mean_and_std", "site_means"]

_NAN = math.nan
# Rows within this of summing to 1, with every entry in [0, 1], are taken as probabilities.
_PROB_TOL = 1e-4


def _nanmean(values: Sequence[float]) -> float:
    """Mean of the non-NaN values; NaN when there are none (and no RuntimeWarning)."""
    kept = [v for v in values if not math.isnan(v)]
    return math.fsum(kept) / len(kept) if kept else _NAN


def _ratio(num: int, den: int) -> float:
    return num / den if den > 0 else _NAN


def _as_labels(labels: Tensor | np.ndarray, n: int | None = None) -> np.ndarray:
    y = torch.as_tensor(labels).detach().cpu()
    if y.ndim == 2 and y.shape[1] == 1:  # MedMNIST stores labels as [n, 1]
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"labels must have shape [n], got {tuple(y.shape)}")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{y.shape[0]} labels for {n} predictions")
    if y.is_floating_point():
        if not bool(torch.all(y == torch.round(y))):
            raise ValueError("labels must be integer class indices")
    return y.to(torch.int64).numpy()


def _check_range(y: np.ndarray, num_classes: int, what: str) -> None:
    if y.size and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"{what} must lie in [0, {num_classes - 1}], got values in "
                         f"[{int(y.min())}, {int(y.max())}]")


def _scores(logits_or_probs: Tensor | np.ndarray) -> np.ndarray:
    """[n, C] float64 scores, each column monotone in that class's probability: the input
    itself when its rows are already probabilities, else the one-vs-rest log-odds of the
    softmax, z_c - logsumexp_{j != c} z_j = log(p_c / (1 - p_c)). These rank samples
    exactly as softmax probabilities do, but confident logits do not round to tied 1.0s
    (for C == 2 the class-1 score is simply z_1 - z_0)."""
    x = torch.as_tensor(logits_or_probs).detach().cpu().to(torch.float64)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"scores must have shape [n, C] with C >= 2, got {tuple(x.shape)}")
    if x.shape[0] and _looks_like_probs(x):
        return x.numpy()
    num_classes = x.shape[1]
    others = x.unsqueeze(1).expand(-1, num_classes, -1).clone()  # [n, c, j] = z_j
    others[:, torch.arange(num_classes), torch.arange(num_classes)] = -math.inf
    return (x - torch.logsumexp(others, dim=2)).numpy()


def _looks_like_probs(x: Tensor) -> bool:
    return bool(torch.all(torch.isfinite(x)) and torch.all(x >= 0) and torch.all(x <= 1)
                and torch.all(torch.abs(x.sum(dim=1) - 1) <= _PROB_TOL))


def _mann_whitney_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC = U / (n_pos * n_neg), U from mid-ranks (tied scores share their average
    rank, which counts a tied positive/negative pair as 1/2)."""
    n_pos = int(positive.sum())
    n_neg = int(positive.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return _NAN
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mid_ranks = (ends - counts) + (counts + 1) / 2.0  # 1-based average rank per distinct score
    rank_sum = float(mid_ranks[inverse.reshape(-1)][positive].sum())
    u = rank_sum - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def roc_auc(scores: Tensor | np.ndarray, positive: Tensor | np.ndarray) -> float:
    """ROC AUC of 1-D `scores` for the boolean (or 0/1) target `positive`, by the
    Mann-Whitney U statistic with ties counted as 1/2. NaN when either class is absent."""
    s = torch.as_tensor(scores).detach().cpu().to(torch.float64).reshape(-1).numpy()
    p = torch.as_tensor(positive).detach().cpu().reshape(-1).numpy().astype(bool)
    if s.shape != p.shape:
        raise ValueError(f"{s.size} scores for {p.size} targets")
    return _mann_whitney_auc(s, p)


def classification_metrics(logits_or_probs: Tensor, labels: Tensor) -> dict[str, float]:
    """{"accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc"} of [n, C] scores against [n]
    integer labels (a [n, 1] label column is accepted too).

    Scores may be logits or probabilities: rows that are all in [0, 1] and sum to 1 are
    used as probabilities, anything else is taken as logits and gets a softmax (ranked by
    its log-odds, which avoids ties from float saturation). The predicted class is the argmax
    (ties go to the lowest index), so for C == 2 a sample is called positive when
    p(class 1) > 0.5.

    Binary (C == 2): class 1 is positive; sensitivity = TP/(TP+FN), specificity =
    TN/(TN+FP), AUC = ROC AUC of the class-1 score (Mann-Whitney, ties count 1/2).

    Multi-class (C > 2): one-vs-rest per class, each metric the unweighted (macro) mean
    over the classes present in `labels`. A class that never occurs in `labels` is skipped
    for all three (its sensitivity and AUC are undefined); a prediction of such a class is
    still an error in accuracy and a false negative of the sample's true class. A
    per-class value that is undefined (e.g. specificity when only one class is present)
    is left out of the mean.

    Balanced accuracy is the mean recall over the classes present in `labels` (defined
    whenever there is a sample).

    Undefined metrics are NaN, never an exception: empty input gives all NaN; a single
    class in `labels` gives NaN AUC, and NaN specificity (binary with only positives, or
    multi-class) or NaN sensitivity (binary with only negatives)."""
    scores = _scores(logits_or_probs)
    n, num_classes = scores.shape
    y = _as_labels(labels, n)
    _check_range(y, num_classes, "labels")
    if n == 0:
        return {"accuracy": _NAN, "balanced_accuracy": _NAN, "sensitivity": _NAN, "specificity": _NAN, "auc": _NAN}
    pred = scores.argmax(axis=1)
    accuracy = float((pred == y).mean())
    present = np.unique(y).tolist()
    balanced = math.fsum(float(np.mean(pred[y == c] == c)) for c in present) / len(present)

    def one_vs_rest(c: int) -> tuple[float, float, float]:
        pos, called = y == c, pred == c
        tp = int(np.sum(pos & called))
        fn = int(np.sum(pos & ~called))
        fp = int(np.sum(~pos & called))
        tn = int(np.sum(~pos & ~called))
        return _ratio(tp, tp + fn), _ratio(tn, tn + fp), _mann_whitney_auc(scores[:, c], pos)

    if num_classes == 2:
        sensitivity, specificity, auc = one_vs_rest(1)
    else:
        per_class = [one_vs_rest(c) for c in present]
        sensitivity = _nanmean([m[0] for m in per_class])
        specificity = _nanmean([m[1] for m in per_class])
        auc = _nanmean([m[2] for m in per_class])
    return {"accuracy": accuracy, "balanced_accuracy": balanced, "sensitivity": sensitivity,
            "specificity": specificity, "auc": auc}


def _label_map(mask: Tensor | np.ndarray, what: str) -> np.ndarray:
    m = torch.as_tensor(mask).detach().cpu()
    if m.is_floating_point() and not bool(torch.all(m == torch.round(m))):
        raise ValueError(f"{what} must be an integer label map")
    return m.to(torch.int64).numpy()


def dice(pred_mask: Tensor, true_mask: Tensor, num_classes: int, ignore_background: bool = True) -> float:
    """Mean Dice coefficient over classes of two integer label maps of the same shape
    (typically [n, H, W]). Per class c with A = {pred == c}, B = {true == c}:
    Dice_c = 2|A n B| / (|A| + |B|), counted over all pixels of the batch together (for
    a per-image mean, call this per image). A class absent from both prediction and truth
    counts as 1.0 (nothing to find, nothing wrongly found); present in only one, 0.0.
    With `ignore_background`, class 0 is left out of the mean (foreground Dice).
    NaN for empty masks, or when no class is left to average (num_classes 1 with
    ignore_background)."""
    pred = _label_map(pred_mask, "pred_mask")
    true = _label_map(true_mask, "true_mask")
    if pred.shape != true.shape:
        raise ValueError(f"pred_mask {pred.shape} and true_mask {true.shape} differ in shape")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    _check_range(pred.reshape(-1), num_classes, "pred_mask")
    _check_range(true.reshape(-1), num_classes, "true_mask")
    classes = range(1 if ignore_background else 0, num_classes)
    if pred.size == 0 or len(classes) == 0:
        return _NAN
    pred, true = pred.reshape(-1), true.reshape(-1)
    # Pixel counts per class and the intersection, via bincount (intersection = agreeing pixels).
    pred_count = np.bincount(pred, minlength=num_classes)
    true_count = np.bincount(true, minlength=num_classes)
    inter = np.bincount(pred[pred == true], minlength=num_classes)
    scores = []
    for c in classes:
        denom = int(pred_count[c] + true_count[c])
        scores.append(1.0 if denom == 0 else 2.0 * int(inter[c]) / denom)
    return math.fsum(scores) / len(scores)


def segmentation_metrics(logits: Tensor, labels: Tensor, ignore_background: bool = True) -> dict[str, float]:
    """{"dice", "pixel_accuracy"} of [n, C, H, W] logits (or probabilities: the argmax over
    C is the same) against [n, H, W] integer labels. Dice as in `dice` with
    num_classes = C (foreground classes only by default); pixel accuracy = fraction of
    pixels whose argmax class is right. Both NaN for empty input."""
    x = torch.as_tensor(logits).detach().cpu()
    y = _label_map(labels, "labels")
    if x.ndim < 2 or y.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"logits {tuple(x.shape)} and labels {tuple(y.shape)} do not match "
                         f"as [n, C, H, W] and [n, H, W]")
    num_classes = int(x.shape[1])
    _check_range(y.reshape(-1), num_classes, "labels")
    if y.size == 0:
        return {"dice": _NAN, "pixel_accuracy": _NAN}
    pred = x.argmax(dim=1).numpy()
    return {
        "dice": dice(pred, y, num_classes, ignore_background=ignore_background),
        "pixel_accuracy": float((pred == y).mean()),
    }


def mean_and_std(values: Sequence[float]) -> dict[str, float]:
    """{"mean", "std"} of `values` ignoring NaNs: the mean and the sample standard
    deviation (ddof = 1, as for mean +- std over repeated splits). std is 0.0 for a single
    value; both are NaN when no non-NaN value is left. None counts as missing, like NaN."""
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not kept:
        return {"mean": _NAN, "std": _NAN}
    mean = math.fsum(kept) / len(kept)
    if len(kept) == 1:
        return {"mean": mean, "std": 0.0}
    var = math.fsum((v - mean) ** 2 for v in kept) / (len(kept) - 1)
    return {"mean": mean, "std": math.sqrt(var)}


def site_means(rows: Mapping[str, Mapping[str, float]], weights: Mapping[str, float],
               metrics: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per metric, the mean over sites of `rows` ({site: {metric: value}}) both unweighted
    and weighted by `weights` (e.g. each site's test-set size), and which sites it is
    undefined at: {"mean", "weighted_mean", "defined": count, "undefined": [sites]}.

    An undefined value (NaN, None or missing: a site whose test split holds one class
    has no AUC) is left out of both means but named in "undefined", never dropped in
    silence; a metric undefined everywhere has NaN means."""
    out: dict[str, dict[str, Any]] = {}
    for metric in metrics:
        defined: list[tuple[float, float]] = []
        undefined: list[str] = []
        for site, row in rows.items():
            value = row.get(metric)
            if value is None or math.isnan(float(value)):
                undefined.append(site)
            else:
                defined.append((float(value), float(weights.get(site, 0.0))))
        total = math.fsum(w for _, w in defined)
        out[metric] = {
            "mean": math.fsum(v for v, _ in defined) / len(defined) if defined else _NAN,
            "weighted_mean": math.fsum(v * w for v, w in defined) / total if total > 0 else _NAN,
            "defined": len(defined),
            "undefined": undefined,
        }
    return out
