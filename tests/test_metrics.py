"""Metrics against hand-computed values (confusion matrices and pair counts written out
below), with brute-force pairwise AUC as an independent check."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from nodes.metrics import classification_metrics, dice, mean_and_std, roc_auc, segmentation_metrics, site_means


def pairwise_auc(scores: list[float], positive: list[bool]) -> float:
    """The AUC definition itself: over all (positive, negative) pairs, 1 if the positive
    scores higher, 1/2 on a tie, 0 otherwise; divided by the number of pairs."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    total = 0.0
    for a in pos:
        for b in neg:
            total += 1.0 if a > b else 0.5 if a == b else 0.0
    return total / (len(pos) * len(neg))


def binary_probs(p1: list[float]) -> torch.Tensor:
    p = torch.tensor(p1, dtype=torch.float64)
    return torch.stack([1 - p, p], dim=1)


# --- binary ------------------------------------------------------------------------

# 10 samples, 4 positives then 6 negatives; p(class 1) per sample.
Y10 = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
P10 = [0.9, 0.8, 0.7, 0.3, 0.6, 0.4, 0.2, 0.1, 0.1, 0.05]
# Called positive when p > 0.5:
#               pred 1   pred 0
#   true 1      TP = 3   FN = 1     (0.3 missed)
#   true 0      FP = 1   TN = 5     (0.6 false alarm)
# AUC pairs (4 x 6 = 24): 0.9, 0.8, 0.7 each beat all 6 negatives; 0.3 beats 0.2, 0.1,
# 0.1, 0.05 -> 6 + 6 + 6 + 4 = 22 -> 22/24.


def test_binary_ten_samples_from_probabilities() -> None:
    m = classification_metrics(binary_probs(P10), torch.tensor(Y10))
    assert m["accuracy"] == pytest.approx(8 / 10)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(5 / 6)
    assert m["auc"] == pytest.approx(22 / 24)
    assert m["auc"] == pytest.approx(pairwise_auc(P10, [y == 1 for y in Y10]))
    assert all(isinstance(v, float) for v in m.values())


def test_binary_logits_give_the_same_metrics_as_probabilities() -> None:
    probs = binary_probs(P10)
    logits = torch.log(probs) + torch.tensor([[3.0], [-1.0]]).repeat(5, 1)  # any per-row shift
    assert classification_metrics(logits.float(), torch.tensor(Y10)) == pytest.approx(
        classification_metrics(probs, torch.tensor(Y10)))


def test_labels_as_a_column_are_accepted() -> None:
    m = classification_metrics(binary_probs(P10), torch.tensor(Y10).reshape(-1, 1))
    assert m["auc"] == pytest.approx(22 / 24)


def test_auc_with_ties_counts_half() -> None:
    pos = [0.8, 0.5, 0.5, 0.2]
    neg = [0.5, 0.2, 0.2, 0.1]
    # 0.8 beats 4; each 0.5 beats 0.2, 0.2, 0.1 and ties 0.5 -> 3.5; 0.2 beats 0.1 and
    # ties two 0.2s -> 2. (4 + 3.5 + 3.5 + 2) / 16 = 13/16.
    scores = pos + neg
    target = [True] * 4 + [False] * 4
    assert roc_auc(torch.tensor(scores), torch.tensor(target)) == pytest.approx(13 / 16)
    assert pairwise_auc(scores, target) == pytest.approx(13 / 16)
    m = classification_metrics(binary_probs(scores), torch.tensor([1] * 4 + [0] * 4))
    assert m["auc"] == pytest.approx(13 / 16)


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_definition_with_many_ties(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 5, (60,), generator=g).double() / 4  # only 5 distinct values
    target = torch.rand(60, generator=g) < 0.4
    expected = pairwise_auc(scores.tolist(), target.tolist())
    assert roc_auc(scores, target) == pytest.approx(expected, abs=1e-12)
    m = classification_metrics(torch.stack([1 - scores, scores], 1), target.long())
    assert m["auc"] == pytest.approx(expected, abs=1e-12)


def test_perfect_and_inverted_predictions() -> None:
    y = torch.tensor([0, 0, 0, 1, 1])
    good = binary_probs([0.1, 0.2, 0.3, 0.7, 0.9])
    assert classification_metrics(good, y) == {"accuracy": 1.0, "balanced_accuracy": 1.0, "sensitivity": 1.0, "specificity": 1.0, "auc": 1.0}
    bad = binary_probs([0.9, 0.8, 0.7, 0.3, 0.1])
    assert classification_metrics(bad, y) == {"accuracy": 0.0, "balanced_accuracy": 0.0, "sensitivity": 0.0, "specificity": 0.0, "auc": 0.0}


def test_saturated_logits_do_not_create_ties() -> None:
    # softmax of these would round to exactly 1.0 for both positives and the negative.
    logits = torch.tensor([[0.0, 60.0], [0.0, 50.0], [0.0, 40.0], [0.0, -5.0]], dtype=torch.float64)
    y = torch.tensor([1, 1, 0, 0])
    assert classification_metrics(logits, y)["auc"] == 1.0
    three = torch.tensor([[0.0, 0.0, 60.0], [0.0, 1.0, 50.0], [50.0, 0.0, 40.0], [0.0, 60.0, 0.0]],
                         dtype=torch.float64)
    y3 = torch.tensor([2, 2, 0, 1])
    # Class 2 one-vs-rest: positives 60, 50 (log-odds ~60, ~50) above the negatives.
    assert classification_metrics(three, y3)["auc"] == 1.0


def test_all_tied_scores_give_auc_one_half() -> None:
    m = classification_metrics(torch.zeros(6, 2), torch.tensor([0, 1, 0, 1, 1, 0]))
    assert m["auc"] == 0.5
    # Argmax ties go to class 0: everything is called negative.
    assert m["sensitivity"] == 0.0 and m["specificity"] == 1.0 and m["accuracy"] == 0.5


# --- multi-class -------------------------------------------------------------------

# 9 samples, classes 0 (x4), 1 (x3), 2 (x2). Probability rows and their argmax:
P3 = [
    [0.7, 0.2, 0.1],  # y0 -> 0
    [0.6, 0.3, 0.1],  # y0 -> 0
    [0.5, 0.1, 0.4],  # y0 -> 0
    [0.3, 0.6, 0.1],  # y0 -> 1
    [0.2, 0.7, 0.1],  # y1 -> 1
    [0.1, 0.5, 0.4],  # y1 -> 1
    [0.1, 0.3, 0.6],  # y1 -> 2
    [0.2, 0.2, 0.6],  # y2 -> 2
    [0.5, 0.1, 0.4],  # y2 -> 0
]
Y3 = [0, 0, 0, 0, 1, 1, 1, 2, 2]
# Confusion matrix (rows true, columns predicted):
#            p0  p1  p2
#   t0        3   1   0
#   t1        0   2   1
#   t2        1   0   1
# accuracy = 6/9
# class 0: TP 3, FN 1, FP 1, TN 4 -> sens 3/4, spec 4/5
# class 1: TP 2, FN 1, FP 1, TN 5 -> sens 2/3, spec 5/6
# class 2: TP 1, FN 1, FP 1, TN 6 -> sens 1/2, spec 6/7
# One-vs-rest AUC from the class's own column:
#   class 0: pos 0.7 0.6 0.5 0.3 vs neg 0.2 0.1 0.1 0.2 0.5 -> 5 + 5 + 4.5 + 4 = 18.5 / 20
#   class 1: pos 0.7 0.5 0.3 vs neg 0.2 0.3 0.1 0.6 0.2 0.1 -> 6 + 5 + 4.5 = 15.5 / 18
#   class 2: pos 0.6 0.4 vs neg 0.1 0.1 0.4 0.1 0.1 0.4 0.6 -> 6.5 + 5 = 11.5 / 14


def test_three_class_macro_metrics() -> None:
    m = classification_metrics(torch.tensor(P3), torch.tensor(Y3))
    assert m["accuracy"] == pytest.approx(6 / 9)
    assert m["sensitivity"] == pytest.approx((3 / 4 + 2 / 3 + 1 / 2) / 3)  # = 23/36
    assert m["sensitivity"] == pytest.approx(23 / 36)
    assert m["specificity"] == pytest.approx((4 / 5 + 5 / 6 + 6 / 7) / 3)
    assert m["auc"] == pytest.approx((18.5 / 20 + 15.5 / 18 + 11.5 / 14) / 3)
    brute = [pairwise_auc([row[c] for row in P3], [y == c for y in Y3]) for c in range(3)]
    assert brute == pytest.approx([18.5 / 20, 15.5 / 18, 11.5 / 14])


def test_three_class_from_logits_matches_probabilities() -> None:
    probs = torch.tensor(P3, dtype=torch.float64)
    logits = torch.log(probs) + 2.5
    from_logits = classification_metrics(logits, torch.tensor(Y3))
    from_probs = classification_metrics(probs, torch.tensor(Y3))
    for key in ("accuracy", "sensitivity", "specificity"):
        assert from_logits[key] == pytest.approx(from_probs[key])
    # The exact ties of P3 do not survive log/softmax round-off, so check the logits AUC
    # on tie-free random logits against the pairwise definition on softmax probabilities.
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(40, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (40,), generator=g)
    probs = torch.softmax(logits, dim=1)
    expected = sum(pairwise_auc(probs[:, c].tolist(), (y == c).tolist()) for c in range(4)) / 4
    assert classification_metrics(logits, y)["auc"] == pytest.approx(expected, abs=1e-12)


def test_class_absent_from_labels_is_skipped() -> None:
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.3, 0.2, 0.5], [0.2, 0.7, 0.1], [0.1, 0.6, 0.3]])
    y = torch.tensor([0, 0, 1, 1])  # class 2 never occurs; predictions are 0, 2, 1, 1
    # class 0: TP 1, FN 1 (called 2), FP 0, TN 2 -> sens 1/2, spec 1; AUC 1
    # class 1: TP 2, FN 0, FP 0, TN 2 -> sens 1, spec 1; AUC 1
    m = classification_metrics(probs, y)
    assert m == pytest.approx({"accuracy": 3 / 4, "balanced_accuracy": 3 / 4, "sensitivity": 3 / 4,
                               "specificity": 1.0, "auc": 1.0})


# --- degenerate and bad input --------------------------------------------------------

def test_empty_input_is_all_nan() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for c in (2, 4):
            m = classification_metrics(torch.zeros(0, c), torch.zeros(0, dtype=torch.long))
            assert set(m) == {"accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc"}
            assert all(math.isnan(v) for v in m.values())


def test_binary_single_class_gives_nan_for_undefined_metrics() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        only_pos = classification_metrics(binary_probs([0.9, 0.2, 0.7]), torch.tensor([1, 1, 1]))
        only_neg = classification_metrics(binary_probs([0.9, 0.2, 0.7]), torch.tensor([0, 0, 0]))
    assert only_pos["accuracy"] == pytest.approx(2 / 3) and only_pos["sensitivity"] == pytest.approx(2 / 3)
    assert math.isnan(only_pos["specificity"]) and math.isnan(only_pos["auc"])
    assert only_neg["accuracy"] == pytest.approx(1 / 3) and only_neg["specificity"] == pytest.approx(1 / 3)
    assert math.isnan(only_neg["sensitivity"]) and math.isnan(only_neg["auc"])


def test_multiclass_single_class_gives_nan_for_undefined_metrics() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(torch.tensor(P3[:4]), torch.tensor([0, 0, 0, 0]))
    assert m["accuracy"] == pytest.approx(3 / 4) and m["sensitivity"] == pytest.approx(3 / 4)
    assert math.isnan(m["specificity"]) and math.isnan(m["auc"])


def test_bad_shapes_and_labels_raise_value_error() -> None:
    with pytest.raises(ValueError):
        classification_metrics(torch.zeros(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        classification_metrics(torch.zeros(3, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError):
        classification_metrics(torch.zeros(3), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError):
        dice(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3), 2)
    with pytest.raises(ValueError):
        dice(torch.full((1, 2, 2), 3), torch.zeros(1, 2, 2), 3)


# --- segmentation -------------------------------------------------------------------

PRED = [[0, 1, 1],
        [0, 1, 2],
        [2, 2, 0]]
TRUE = [[0, 1, 0],
        [1, 1, 2],
        [2, 0, 0]]
# class 0: |A| 3, |B| 4, |A n B| 2 ((0,0), (2,2))  -> 4/7
# class 1: |A| 3, |B| 3, |A n B| 2 ((0,1), (1,1))  -> 4/6
# class 2: |A| 3, |B| 2, |A n B| 2 ((1,2), (2,0))  -> 4/5
# pixels right: (0,0) (0,1) (1,1) (1,2) (2,0) (2,2) -> 6/9


def test_dice_on_tiny_masks() -> None:
    pred, true = torch.tensor([PRED]), torch.tensor([TRUE])
    assert dice(pred, true, 3) == pytest.approx((4 / 6 + 4 / 5) / 2)  # = 11/15
    assert dice(pred, true, 3, ignore_background=False) == pytest.approx((4 / 7 + 4 / 6 + 4 / 5) / 3)
    # Class 3 appears in neither map: it counts as 1.0.
    assert dice(pred, true, 4) == pytest.approx((4 / 6 + 4 / 5 + 1.0) / 3)
    assert dice(true, true, 3) == 1.0


def test_dice_class_in_only_one_map_is_zero() -> None:
    pred = torch.tensor([[[0, 2], [0, 0]]])
    true = torch.tensor([[[0, 1], [0, 0]]])
    # class 1: only in truth -> 0; class 2: only predicted -> 0
    assert dice(pred, true, 3) == 0.0


def test_dice_pools_pixels_over_the_batch() -> None:
    # image 1: truth 4 foreground pixels, predicted all 4 -> per-image Dice 1
    # image 2: truth 1 foreground pixel, predicted none -> per-image Dice 0
    # pooled: |A| 4, |B| 5, |A n B| 4 -> 8/9 (a per-image mean would be 1/2)
    true = torch.tensor([[[1, 1], [1, 1]], [[1, 0], [0, 0]]])
    pred = torch.tensor([[[1, 1], [1, 1]], [[0, 0], [0, 0]]])
    assert dice(pred, true, 2) == pytest.approx(8 / 9)


def test_segmentation_metrics_from_logits() -> None:
    pred = torch.tensor([PRED])
    logits = 5.0 * torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float() - 1.0
    m = segmentation_metrics(logits, torch.tensor([TRUE]))
    assert m == pytest.approx({"dice": 11 / 15, "pixel_accuracy": 6 / 9})
    with_bg = segmentation_metrics(logits, torch.tensor([TRUE]), ignore_background=False)
    assert with_bg["dice"] == pytest.approx((4 / 7 + 4 / 6 + 4 / 5) / 3)


def test_segmentation_degenerate_input() -> None:
    m = segmentation_metrics(torch.zeros(0, 3, 4, 4), torch.zeros(0, 4, 4, dtype=torch.long))
    assert math.isnan(m["dice"]) and math.isnan(m["pixel_accuracy"])
    assert math.isnan(dice(torch.zeros(0, 2, 2), torch.zeros(0, 2, 2), 3))
    assert math.isnan(dice(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), 1))  # nothing but background
    # All background in both: every foreground class is absent from both -> 1.0.
    assert dice(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), 3) == 1.0
    with pytest.raises(ValueError):
        segmentation_metrics(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))


# --- mean and std -------------------------------------------------------------------

def test_mean_and_std() -> None:
    # mean 2.5; deviations +-1.5, +-0.5 -> sum of squares 5; ddof 1 -> 5/3
    assert mean_and_std([1.0, 2.0, 3.0, 4.0]) == pytest.approx({"mean": 2.5, "std": math.sqrt(5 / 3)})
    assert mean_and_std([1.0, math.nan, 3.0]) == pytest.approx({"mean": 2.0, "std": math.sqrt(2.0)})
    assert mean_and_std([0.7]) == {"mean": 0.7, "std": 0.0}
    assert mean_and_std([0.7, math.nan]) == {"mean": 0.7, "std": 0.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for empty in ([], [math.nan, math.nan]):
            r = mean_and_std(empty)
            assert math.isnan(r["mean"]) and math.isnan(r["std"])


# --- balanced accuracy and means over sites ---------------------------------------------

def test_balanced_accuracy_does_not_reward_predicting_the_majority_class() -> None:
    y = torch.tensor([0] * 9 + [1])
    always_zero = binary_probs([0.1] * 10)
    m = classification_metrics(always_zero, y)
    assert m["accuracy"] == pytest.approx(0.9) and m["balanced_accuracy"] == pytest.approx(0.5)
    three = torch.tensor([[0.9, 0.05, 0.05]] * 6)
    assert classification_metrics(three, torch.tensor([0, 0, 0, 0, 1, 2]))["balanced_accuracy"] == pytest.approx(1 / 3)
    # one class present: its recall (defined), while AUC is not
    single = classification_metrics(binary_probs([0.9, 0.2, 0.7]), torch.tensor([1, 1, 1]))
    assert single["balanced_accuracy"] == pytest.approx(2 / 3) and math.isnan(single["auc"])


def test_site_means_are_unweighted_and_weighted_and_name_undefined_sites() -> None:
    rows = {"a": {"accuracy": 0.9, "auc": 0.8}, "b": {"accuracy": 0.6, "auc": math.nan}, "c": {"accuracy": 0.3}}
    means = site_means(rows, {"a": 100, "b": 300, "c": 600}, ["accuracy", "auc", "dice"])
    assert means["accuracy"] == {"mean": pytest.approx(0.6), "weighted_mean": pytest.approx((90 + 180 + 180) / 1000),
                                 "defined": 3, "undefined": []}
    assert means["auc"]["mean"] == pytest.approx(0.8) and means["auc"]["weighted_mean"] == pytest.approx(0.8)
    assert means["auc"]["defined"] == 1 and means["auc"]["undefined"] == ["b", "c"]
    assert math.isnan(means["dice"]["mean"]) and means["dice"]["undefined"] == ["a", "b", "c"]
