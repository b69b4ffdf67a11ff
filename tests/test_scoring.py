"""How compare scores models (scenarios/scoring.py): the majority-class floor, means over
models and the round-to-round stability figure."""

from __future__ import annotations

import math

import pytest
import torch

from scenarios.scoring import largest_drop, majority_class, mean_over


def test_majority_class_scores_the_trivial_prediction_per_site_and_globally():
    train = {"a": torch.tensor([0, 0, 0, 1]), "b": torch.tensor([1, 1, 1, 1, 1, 1, 1, 0])}
    tests = {"a": torch.tensor([0, 0, 0, 1]), "b": torch.tensor([1, 1, 1, 1])}
    floor = majority_class(train, tests, torch.tensor([0, 1, 1, 0, 0, 0]), 2, "classification")
    a, b = floor["sites"]["a"], floor["sites"]["b"]
    assert a["accuracy"] == pytest.approx(0.75) and a["balanced_accuracy"] == pytest.approx(0.5) and a["auc"] == 0.5
    assert b["accuracy"] == 1.0 and math.isnan(b["auc"]) and b["balanced_accuracy"] == 1.0  # one class: AUC undefined
    pooled = floor["global"]  # pooled training labels: 7 ones, 5 zeros -> always 1
    assert pooled["accuracy"] == pytest.approx(2 / 6) and pooled["sensitivity"] == 1.0 and pooled["specificity"] == 0.0


def test_majority_class_for_segmentation_predicts_background_everywhere():
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    masks[:, 1:3, 1:3] = 1
    floor = majority_class({"a": masks}, {"a": masks}, None, 3, "segmentation")
    assert floor["sites"]["a"]["pixel_accuracy"] == pytest.approx(12 / 16)
    assert floor["sites"]["a"]["dice"] == pytest.approx(0.5)  # organ missed (0), lesion absent and not called (1)
    assert floor["global"] == {}


def test_largest_drop_counts_only_falls_after_the_given_round():
    series = [0.5, 0.9, 0.4, 0.6, 0.7, 0.72, 0.69, 0.75, math.nan, 0.6]
    assert largest_drop(series, after=1) == pytest.approx(0.5)  # round 2 -> 3
    assert largest_drop(series, after=5) == pytest.approx(0.03)  # 6 -> 7; the NaN round breaks the pairs
    assert largest_drop([0.1, 0.2, 0.3], after=1) == 0.0
    assert math.isnan(largest_drop([0.1, 0.2], after=5))


def test_mean_over_leaves_undefined_values_out():
    rows = [{"auc": 0.8, "accuracy": 0.5}, {"auc": math.nan, "accuracy": 0.7}, {"accuracy": 0.9}]
    means = mean_over(rows, ["auc", "accuracy", "dice"])
    assert means["auc"] == pytest.approx(0.8) and means["accuracy"] == pytest.approx(0.7) and math.isnan(means["dice"])
