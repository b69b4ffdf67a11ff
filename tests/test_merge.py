"""BrainTorrent's sample-weighted merge of state dicts."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.merge import weighted_mean


def state(w, b, steps=0):
    return {
        "w": torch.tensor(w, dtype=torch.float32),
        "b": torch.tensor(b, dtype=torch.float32),
        "steps": torch.tensor(steps, dtype=torch.int64),
    }


def test_hand_computed_two_models():
    merged = weighted_mean([(1, state([0.0, 4.0], [1.0], 5)), (3, state([4.0, 8.0], [-1.0], 9))])
    # 1/4 * first + 3/4 * second
    assert torch.equal(merged["w"], torch.tensor([3.0, 7.0]))
    assert torch.equal(merged["b"], torch.tensor([-0.5]))


def test_hand_computed_three_models_weights_need_not_sum_to_one():
    merged = weighted_mean([
        (100, {"x": torch.tensor([[1.0, 2.0]])}),
        (300, {"x": torch.tensor([[2.0, 2.0]])}),
        (600, {"x": torch.tensor([[0.0, 12.0]])}),
    ])
    # 0.1 * [1, 2] + 0.3 * [2, 2] + 0.6 * [0, 12] = [0.7, 8.0]
    assert torch.allclose(merged["x"], torch.tensor([[0.7, 8.0]]), atol=1e-6, rtol=0)
    assert merged["x"].shape == (1, 2)


def test_integer_tensors_come_from_the_first_state():
    merged = weighted_mean([(1, state([1.0], [1.0], steps=5)), (1, state([3.0], [3.0], steps=9))])
    assert merged["steps"].dtype == torch.int64
    assert int(merged["steps"]) == 5
    bools = weighted_mean([(1, {"m": torch.tensor([True, False])}), (5, {"m": torch.tensor([False, False])})])
    assert torch.equal(bools["m"], torch.tensor([True, False]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtype_is_kept(dtype):
    a = {"x": torch.tensor([1.0, 2.0], dtype=dtype)}
    b = {"x": torch.tensor([3.0, 4.0], dtype=dtype)}
    merged = weighted_mean([(1.0, a), (1.0, b)])
    assert merged["x"].dtype == dtype
    assert torch.equal(merged["x"], torch.tensor([2.0, 3.0], dtype=dtype))


def test_accumulates_in_high_precision():
    # Averaging many float16 copies of one value gives back exactly that value (rounding
    # each 1/7 share to float16 and adding in float16 would not).
    value = {"x": torch.tensor([60000.0, 0.1, -3.3], dtype=torch.float16)}
    merged = weighted_mean([(1, value)] * 7)
    assert torch.equal(merged["x"], value["x"])


def test_result_does_not_alias_inputs():
    a = state([1.0], [2.0], 3)
    merged = weighted_mean([(1, a)])
    merged["w"].add_(1)
    merged["steps"].add_(1)
    assert float(a["w"]) == 1.0 and int(a["steps"]) == 3


def test_zero_weight_state_contributes_nothing():
    merged = weighted_mean([(0, state([100.0], [100.0])), (2, state([1.0], [2.0]))])
    assert torch.equal(merged["w"], torch.tensor([1.0]))


@pytest.mark.parametrize(
    "states",
    [
        [],
        [(0, state([1.0], [1.0])), (0, state([1.0], [1.0]))],
        [(-1, state([1.0], [1.0])), (2, state([1.0], [1.0]))],
        [(math.nan, state([1.0], [1.0]))],
        [(math.inf, state([1.0], [1.0]))],
        [("3", state([1.0], [1.0]))],
    ],
)
def test_bad_weights(states):
    with pytest.raises(ValueError):
        weighted_mean(states)


def test_mismatched_keys():
    a = state([1.0], [1.0])
    b = {k: v for k, v in a.items() if k != "b"}
    with pytest.raises(ValueError, match="keys differ"):
        weighted_mean([(1, a), (1, b)])
    with pytest.raises(ValueError, match="keys differ"):
        weighted_mean([(1, b), (1, a)])


def test_mismatched_shapes_and_dtypes():
    with pytest.raises(ValueError, match="shape"):
        weighted_mean([(1, state([1.0], [1.0])), (1, state([1.0, 2.0], [1.0]))])
    with pytest.raises(ValueError, match="dtype"):
        weighted_mean([(1, {"x": torch.zeros(2)}), (1, {"x": torch.zeros(2, dtype=torch.float64)})])


finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32)


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.lists(finite, min_size=3, max_size=3), min_size=1, max_size=5),
    weights=st.lists(st.floats(min_value=0.01, max_value=1e3), min_size=5, max_size=5),
    scale=st.floats(min_value=1e-3, max_value=1e3),
)
def test_matches_the_formula_and_ignores_weight_scale(values, weights, scale):
    weights = weights[: len(values)]
    states = [(w, {"x": torch.tensor(v, dtype=torch.float32)}) for w, v in zip(weights, values)]
    merged = weighted_mean(states)["x"]
    total = math.fsum(weights)
    expected = [math.fsum(w / total * v[i] for w, v in zip(weights, values)) for i in range(3)]
    assert torch.allclose(merged.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-3)
    rescaled = weighted_mean([(w * scale, s) for w, s in states])["x"]
    assert torch.allclose(rescaled, merged, rtol=1e-6, atol=1e-3)
    # A convex combination stays within the inputs' range.
    stacked = torch.stack([s["x"] for _, s in states])
    assert (merged >= stacked.min(0).values - 1e-3).all() and (merged <= stacked.max(0).values + 1e-3).all()
