"""Robust merge rules: hand-computed results on tiny models, outliers suppressed, validation,
and the plan table that picks a rule."""

from __future__ import annotations

import math

import pytest
import torch

from swarm.errors import ConfigError
from swarm.merge import (
    DOS,
    MERGE_RULES,
    Krum,
    Mean,
    Median,
    MergeSpec,
    MultiKrum,
    SelfCentredClipping,
    TrimmedMean,
    check_neighbourhood,
    parse_merge,
    weighted_mean,
)
from swarm.merge.clipping import adaptive_radius
from swarm.merge.dos import robust_z_scores
from swarm.merge.krum import krum_scores

ROBUST = [Median(), TrimmedMean(), Krum(), MultiKrum(), SelfCentredClipping(), DOS()]


def models(*vectors, weights=None, dtype=torch.float32):
    """Candidates holding one tensor "x"; weights default to 1."""
    weights = weights or [1.0] * len(vectors)
    return [(w, {"x": torch.tensor(v, dtype=dtype)}) for w, v in zip(weights, vectors)]


def merged_x(rule, candidates, f=0):
    return rule.merge(candidates, f)["x"].double()


def close(actual, expected, tol=1e-6):
    return torch.allclose(actual.double(), torch.tensor(expected, dtype=torch.float64), atol=tol, rtol=0)


# --- median ------------------------------------------------------------------------------

def test_median_ignores_the_outlier_that_moves_the_mean():
    candidates = models([1.0, -5.0], [2.0, 0.0], [3.0, 5.0], [4.0, 10.0], [1000.0, -1000.0])
    assert close(merged_x(Median(), candidates, f=1), [3.0, 0.0])
    assert close(merged_x(Mean(), candidates), [202.0, -198.0])


def test_median_of_an_even_count_averages_the_middle_two_and_ignores_weights():
    candidates = models([1.0], [2.0], [3.0], [100.0], weights=[1, 1, 1, 1000])
    assert close(merged_x(Median(), candidates, f=1), [2.5])


# --- trimmed mean ------------------------------------------------------------------------

def test_trimmed_mean_drops_f_from_each_end():
    candidates = models([1.0, 0.0], [2.0, 10.0], [3.0, 20.0], [4.0, 30.0], [1000.0, -1000.0])
    # first coordinate: drop 1 and 1000, mean(2, 3, 4); second: drop -1000 and 30, mean(0, 10, 20)
    assert close(merged_x(TrimmedMean(), candidates, f=1), [3.0, 10.0])
    # f = 2 keeps only the middle value
    assert close(merged_x(TrimmedMean(), candidates, f=2), [3.0, 10.0])


def test_trimmed_mean_with_f_0_is_the_unweighted_mean():
    assert close(merged_x(TrimmedMean(), models([0.0], [4.0], weights=[1, 100]), f=0), [2.0])


# --- Krum --------------------------------------------------------------------------------

KRUM_POINTS = ([0.0], [1.0], [2.0], [4.0], [100.0])
# n = 5, f = 1: each score sums the squared distances to the n - f - 2 = 2 nearest others:
# 0 -> 1 + 4 = 5, 1 -> 1 + 1 = 2, 2 -> 1 + 4 = 5, 4 -> 4 + 9 = 13, 100 -> 96^2 + 98^2 = 18820
KRUM_SCORES = [5.0, 2.0, 5.0, 13.0, 18820.0]


def test_krum_scores_by_hand():
    vectors = torch.tensor(KRUM_POINTS, dtype=torch.float64)
    assert krum_scores(vectors, f=1).tolist() == KRUM_SCORES


def test_krum_picks_the_lowest_score():
    candidates = models(*KRUM_POINTS, weights=[1, 2, 3, 4, 5])
    assert close(merged_x(Krum(), candidates, f=1), [1.0])


def test_krum_measures_distance_over_all_tensors_at_once():
    w = [0.0, 1.0, 2.0, 4.0, 100.0]
    b = [5.0, 6.0, 7.0, 8.0, 9.0]
    candidates = [(1, {"w": torch.tensor([wi]), "b": torch.tensor([bi])}) for wi, bi in zip(w, b)]
    # joint squared distances: 0-1: 1+1, 0-2: 4+4, 0-3: 16+9, 1-2: 1+1, 1-3: 9+4, 2-3: 4+1, so the
    # scores (2 nearest) are 10, 4, 7, 18 and the outlier's: candidate 1 wins, both tensors from it.
    merged = Krum().merge(candidates, f=1)
    assert float(merged["w"]) == 1.0 and float(merged["b"]) == 6.0


def test_multi_krum_averages_the_m_best_by_their_weights():
    candidates = models(*KRUM_POINTS, weights=[1, 2, 3, 4, 5])
    # m = 3: candidates 1, 0, 2 (scores 2, 5, 5): (0*1 + 1*2 + 2*3) / (1 + 2 + 3)
    assert close(merged_x(MultiKrum(m=3), candidates, f=1), [8 / 6])
    # m defaults to n - f = 4: candidate 3 joins with its weight 4 capped at the median 3,
    # the outlier never does: (0*1 + 1*2 + 2*3 + 4*3) / (1 + 2 + 3 + 3)
    assert close(merged_x(MultiKrum(), candidates, f=1), [20 / 9])
    assert close(merged_x(Mean(), candidates), [524 / 15], tol=1e-5)


def test_claimed_weights_cannot_buy_a_candidate_the_merge():
    # A chosen candidate (or a clipped neighbour) claiming 10^18 samples counts as the median.
    candidates = models(*KRUM_POINTS, weights=[1, 1, 1e18, 1, 1])
    assert close(merged_x(MultiKrum(m=3), candidates, f=1), [1.0])  # (0 + 1 + 2) / 3
    clipped = SelfCentredClipping().merge(models([0.0], [1.0], [2.0], [100.0], weights=[1, 1, 1, 1e18]))
    assert close(clipped["x"], [1.25])  # 0 + (1 + 2 + 2) / 4, as with equal weights


def test_multi_krum_refuses_when_the_chosen_have_no_weight():
    candidates = models(*KRUM_POINTS, weights=[0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="weight 0"):
        MultiKrum(m=2).merge(candidates, f=1)


def test_multi_krum_m_must_be_positive():
    with pytest.raises(ValueError, match="m must be"):
        MultiKrum(m=0)


# --- self-centred clipping ---------------------------------------------------------------

def test_clipping_radius_is_the_second_largest_neighbour_distance():
    assert float(adaptive_radius(torch.tensor([5.0, 2.0, 100.0], dtype=torch.float64))) == 5.0
    assert float(adaptive_radius(torch.tensor([7.0, 3.0], dtype=torch.float64))) == 3.0


def clipping_candidates(outlier_scale=20.0):
    # One model as two tensors, "w" the first coordinate and "b" the second; own = (0, 0).
    points = [(0.0, 0.0), (3.0, 4.0), (0.0, 2.0), (3.0 * outlier_scale, 4.0 * outlier_scale)]
    return [(1, {"w": torch.tensor([p[0]]), "b": torch.tensor([p[1]])}) for p in points]


def test_clipping_pulls_the_farthest_neighbour_in_to_the_radius():
    # Distances (over both tensors) 5, 2, 100, so tau = 5: (60, 80) is clipped to (3, 4),
    # the others pass. Result: (0, 0) + 1/4 * ((3, 4) + (0, 2) + (3, 4)) = (1.5, 2.5).
    merged = SelfCentredClipping().merge(clipping_candidates())
    assert close(merged["w"], [1.5]) and close(merged["b"], [2.5])
    plain = Mean().merge(clipping_candidates())
    assert close(plain["w"], [15.75]) and close(plain["b"], [21.5])


@pytest.mark.parametrize("scale", [20.0, 1e3, 1e6])
def test_clipping_bounds_the_pull_however_far_the_outlier_is(scale):
    merged = SelfCentredClipping().merge(clipping_candidates(scale))
    assert close(merged["w"], [1.5], tol=1e-5) and close(merged["b"], [2.5], tol=1e-5)


def test_clipping_needs_two_neighbours_to_have_a_radius():
    # With one neighbour its own distance would be the radius: nothing clipped, however far.
    with pytest.raises(ValueError, match="needs at least 3"):
        SelfCentredClipping().merge(models([0.0, 0.0], [3.0, 4.0], weights=[1, 3]))


def test_clipping_is_centred_on_candidate_0():
    own_first = models([0.0], [1.0], [2.0], [100.0])
    outlier_first = models([100.0], [0.0], [1.0], [2.0])
    # Centred on 0: differences 1, 2, 100, tau = 2, so 0 + (1 + 2 + 2) / 4.
    assert close(merged_x(SelfCentredClipping(), own_first), [1.25])
    # Centred on 100: differences -100, -99, -98, tau = 99, so 100 - (99 + 99 + 98) / 4.
    assert close(merged_x(SelfCentredClipping(), outlier_first), [26.0])


# --- DOS ---------------------------------------------------------------------------------

def test_robust_z_scores_by_hand():
    # median 3, absolute deviations 2, 1, 0, 1, 97, MAD 1
    z = robust_z_scores(torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0], dtype=torch.float64))
    assert close(z, [v / 1.4826 for v in (-2.0, -1.0, 0.0, 1.0, 97.0)])


def test_robust_z_scores_when_the_mad_is_0():
    # median 1, deviations 0, 0, 0, 4: MAD 0, so the mean absolute deviation (1) stands in
    z = robust_z_scores(torch.tensor([1.0, 1.0, 1.0, 5.0], dtype=torch.float64))
    assert close(z, [0.0, 0.0, 0.0, 4.0 / 1.2533])
    assert robust_z_scores(torch.full((3,), 2.0, dtype=torch.float64)).tolist() == [0.0, 0.0, 0.0]


def test_dos_weights_by_hand():
    candidates = models([1.0, 0.0], [2.0, 0.0], [0.0, 3.0])
    # Euclidean distances 0-1: 1, 0-2: sqrt(10), 1-2: sqrt(13); median distance to the others:
    m0, m1, m2 = (1 + math.sqrt(10)) / 2, (1 + math.sqrt(13)) / 2, (math.sqrt(10) + math.sqrt(13)) / 2
    # median m1, deviations m1 - m0, 0, m2 - m1, MAD m1 - m0
    euclidean = [-1 / 1.4826, 0.0, (m2 - m1) / (1.4826 * (m1 - m0))]
    # Cosine distances 0-1: 0, 0-2: 1, 1-2: 1; medians 0.5, 0.5, 1; MAD 0, mean deviation 1/6
    cosine = [0.0, 0.0, 0.5 / (1.2533 / 6)]
    exp = [math.exp(-(e + c)) for e, c in zip(euclidean, cosine)]
    weights = [v / sum(exp) for v in exp]
    flat_weights = DOS().weights(_flat(candidates))
    assert close(flat_weights, weights)
    expected = [weights[0] * 1 + weights[1] * 2, weights[2] * 3]
    assert close(merged_x(DOS(), candidates), expected)


def _flat(candidates):
    from swarm.merge.base import FlatCandidates, check_candidates

    return FlatCandidates.of(*check_candidates(candidates, "test"), "test")


def dos_candidates(claimed=1.0, outlier=-20.0):
    honest = [[1.0, 1.1, 0.9], [1.1, 1.0, 1.0], [0.9, 1.0, 1.1], [1.0, 0.9, 1.0]]
    return models(*honest, [outlier] * 3, weights=[1.0, 1.0, 1.0, 1.0, claimed])


def test_dos_gives_the_outlier_the_smallest_weight():
    weights = DOS().weights(_flat(dos_candidates()))
    assert int(weights.argmin()) == 4
    assert float(weights[4]) < 1e-3
    merged = merged_x(DOS(), dos_candidates())
    assert close(merged, [1.0, 1.0, 1.0], tol=0.1)
    assert not close(merged_x(Mean(), dos_candidates()), [1.0, 1.0, 1.0], tol=1.0)


def test_dos_ignores_claimed_weights_unless_asked():
    assert torch.equal(merged_x(DOS(), dos_candidates(1.0)), merged_x(DOS(), dos_candidates(1e9)))
    # A milder outlier, whose softmax weight does not underflow to 0.
    flat = _flat(dos_candidates(1e9, outlier=2.0))
    plain = DOS().weights(flat)
    weighted = DOS(use_given_weights=True).weights(flat)
    expected = plain * flat.weights / (plain * flat.weights).sum()
    assert torch.allclose(weighted, expected)
    assert float(weighted[4]) > float(plain[4])


# --- every robust rule -------------------------------------------------------------------

F_FOR = {"mean": 0, "clipping": 0, "dos": 0}


@pytest.mark.parametrize("rule", ROBUST, ids=lambda r: r.name)
def test_one_far_outlier_barely_moves_a_robust_rule(rule):
    honest = [[0.0, 0.2, 0.4], [0.3, 0.1, 0.5], [0.6, 0.4, 0.2], [0.2, 0.7, 0.3]]
    candidates = models(*honest, [1e6, -1e6, 1e6])
    honest_mean = torch.tensor(honest, dtype=torch.float64).mean(dim=0)
    f = F_FOR.get(rule.name, 1)
    assert float((merged_x(rule, candidates, f) - honest_mean).norm()) < 1.0
    assert float((merged_x(Mean(), candidates) - honest_mean).norm()) > 1e5


@pytest.mark.parametrize("rule", [Mean(), *ROBUST], ids=lambda r: r.name)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes_are_kept_and_other_tensors_come_from_candidate_0(rule, dtype):
    value = torch.tensor([60000.0, 0.1, -3.3], dtype=dtype)
    candidates = [
        (1 + i, {"x": value.clone(), "steps": torch.tensor(7 + i), "mask": torch.tensor([i == 0, True])})
        for i in range(5)
    ]
    merged = rule.merge(candidates, F_FOR.get(rule.name, 1))
    assert merged["x"].dtype == dtype
    # Exact after rounding back to the narrow dtypes; float64 keeps the float64 sums' last bits.
    assert torch.allclose(merged["x"], value, rtol=1e-12, atol=0)
    if dtype != torch.float64:
        assert torch.equal(merged["x"], value)
    assert merged["steps"].dtype == torch.int64 and int(merged["steps"]) == 7
    assert torch.equal(merged["mask"], torch.tensor([True, True]))


@pytest.mark.parametrize("rule", ROBUST, ids=lambda r: r.name)
def test_result_does_not_alias_inputs(rule):
    candidates = models(*([[1.0, 2.0]] * 5), dtype=torch.float64)
    merged = rule.merge(candidates, F_FOR.get(rule.name, 1))
    merged["x"].add_(1)
    assert all(state["x"].tolist() == [1.0, 2.0] for _, state in candidates)


def test_mean_rule_is_weighted_mean():
    candidates = models([0.0, 4.0], [4.0, 8.0], weights=[1, 3])
    assert torch.equal(Mean().merge(candidates)["x"], weighted_mean(candidates)["x"])


# --- validation --------------------------------------------------------------------------

GOOD = models([1.0], [2.0], [3.0], [4.0], [5.0])


@pytest.mark.parametrize("rule", ROBUST, ids=lambda r: r.name)
@pytest.mark.parametrize(
    "candidates, message",
    [
        ([], "no states"),
        ([(-1, {"x": torch.zeros(1)}), *GOOD[1:]], "finite and >= 0"),
        ([(math.nan, {"x": torch.zeros(1)}), *GOOD[1:]], "finite and >= 0"),
        ([(True, {"x": torch.zeros(1)}), *GOOD[1:]], "not a number"),
        ([(0, {"x": torch.zeros(1)})] * 5, "total weight"),
        ([{"x": torch.zeros(1)}, *GOOD[1:]], "not a \\(weight, state\\) pair"),
        ([*GOOD[:4], (1, {"y": torch.zeros(1)})], "keys differ"),
        ([*GOOD[:4], (1, {"x": torch.zeros(2)})], "shape"),
        ([*GOOD[:4], (1, {"x": torch.zeros(1, dtype=torch.float64)})], "dtype"),
        ([*GOOD[:4], (1, {"x": torch.tensor([math.nan])})], "state 4 holds NaN"),
        ([(1, {"x": torch.zeros(1, dtype=torch.complex64)})] * 5, "complex"),
    ],
)
def test_malformed_candidates_are_refused(rule, candidates, message):
    with pytest.raises(ValueError, match=message):
        rule.merge(candidates, 0)


@pytest.mark.parametrize(
    "rule, f, count",
    [(Median(), 1, 2), (TrimmedMean(), 1, 2), (TrimmedMean(), 2, 4), (Krum(), 1, 4), (Krum(), 0, 2),
     (MultiKrum(), 1, 4), (MultiKrum(m=4), 1, 4), (SelfCentredClipping(), 0, 2), (DOS(), 0, 2)],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_too_few_candidates_are_refused(rule, f, count):
    with pytest.raises(ValueError, match="needs at least"):
        rule.merge(GOOD[:count], f)


@pytest.mark.parametrize("f", [-1, 1.0, True])
def test_f_must_be_a_non_negative_integer(f):
    with pytest.raises(ValueError, match="f must be"):
        Median().merge(GOOD, f)


@pytest.mark.parametrize(
    "rule, minimums",
    [(Mean(), [1, 1, 1]), (Median(), [1, 3, 5]), (TrimmedMean(), [1, 3, 5]), (Krum(), [3, 5, 7]),
     (MultiKrum(), [3, 5, 7]), (MultiKrum(m=6), [6, 7, 8]), (SelfCentredClipping(), [3, 3, 3]), (DOS(), [3, 3, 3])],
    ids=repr,
)
def test_minimum_candidates(rule, minimums):
    assert [rule.minimum_candidates(f) for f in (0, 1, 2)] == minimums


# --- the plan table ----------------------------------------------------------------------

def test_registry_names():
    assert list(MERGE_RULES) == ["mean", "median", "trimmed_mean", "krum", "multi_krum", "clipping", "dos"]
    assert all(cls.name == name for name, cls in MERGE_RULES.items())


def test_parse_merge_defaults_and_values():
    assert parse_merge({}, "merge") == MergeSpec("mean", 0, None)
    assert parse_merge({"rule": "krum", "f": 1}, "merge") == MergeSpec("krum", 1, None)
    spec = parse_merge({"rule": "multi_krum", "f": 1, "m": 3}, "merge")
    assert spec == MergeSpec("multi_krum", 1, 3)
    rule = spec.build()
    assert isinstance(rule, MultiKrum) and rule.m == 3
    assert isinstance(parse_merge({"rule": "clipping"}, "merge").build(), SelfCentredClipping)


def test_spec_merges_with_its_rule_and_f():
    candidates = models(*KRUM_POINTS, weights=[1, 2, 3, 4, 5])
    assert close(parse_merge({"rule": "multi_krum", "f": 1, "m": 3}).merge(candidates)["x"], [8 / 6])
    assert close(parse_merge({"rule": "trimmed_mean", "f": 1}).merge(models([1.0], [2.0], [9.0]))["x"], [2.0])


@pytest.mark.parametrize(
    "table, message",
    [
        ({"rule": "krun"}, r"plan\.merge\.rule: must be one of: mean, median, trimmed_mean, krum, multi_krum, clipping, dos, got 'krun'"),
        ({"rule": 3}, r"plan\.merge\.rule: must be one of"),
        ({"rule": "krum", "fault": 1}, r"plan\.merge\.fault: unknown key, got 'fault' = 1 \(known keys: rule, f, m, tau\)"),
        ({"rule": "krum", "f": -1}, r"plan\.merge\.f: must be an integer >= 0, got -1"),
        ({"rule": "krum", "f": 1.5}, r"plan\.merge\.f: must be an integer"),
        ({"rule": "krum", "f": True}, r"plan\.merge\.f: must be an integer"),
        ({"rule": "clipping", "f": 1}, r"plan\.merge\.f: rule clipping does not use f.*median, trimmed_mean, krum, multi_krum"),
        ({"rule": "mean", "f": 2}, r"plan\.merge\.f: rule mean does not use f"),
        ({"rule": "krum", "m": 3}, r"plan\.merge\.m: only rule multi_krum uses m"),
        ({"rule": "multi_krum", "m": 0}, r"plan\.merge\.m: must be an integer >= 1"),
        ("krum", r"plan\.merge: must be a table"),
    ],
)
def test_parse_merge_errors_name_the_field(table, message):
    with pytest.raises(ConfigError, match=message):
        parse_merge(table, "plan.merge")


def test_check_neighbourhood_refuses_krum_below_2f_plus_3():
    spec = parse_merge({"rule": "krum", "f": 1})
    with pytest.raises(ConfigError) as caught:
        check_neighbourhood(spec, 3, "hospital-a")
    assert str(caught.value) == (
        "merge.rule krum with f = 1 needs at least 5 models per merge (n >= 2f+3); "
        "hospital-a merges at most 3 (itself and 2 neighbours): lower f to 0, "
        "choose median, trimmed_mean, clipping or dos, or use a denser topology"
    )
    with pytest.raises(ConfigError, match="needs at least 5"):
        check_neighbourhood(spec, 4, "hospital-a")
    check_neighbourhood(spec, 5, "hospital-a")


def test_check_neighbourhood_refuses_trimmed_mean_with_n_at_most_2f():
    spec = parse_merge({"rule": "trimmed_mean", "f": 2})
    with pytest.raises(ConfigError, match=r"trimmed_mean with f = 2 needs at least 5 models per merge \(n >= 2f\+1\); "
                                          r"hospital-b merges at most 4 \(itself and 3 neighbours\): lower f to 1"):
        check_neighbourhood(spec, 4, "hospital-b")
    with pytest.raises(ConfigError, match="needs at least 3"):
        check_neighbourhood(parse_merge({"rule": "trimmed_mean", "f": 1}), 2, "hospital-b")
    check_neighbourhood(spec, 5, "hospital-b")


def test_check_neighbourhood_for_rules_without_f():
    with pytest.raises(ConfigError, match=r"merge\.rule dos needs at least 3 .*itself and 1 neighbour\): "
                                          r"use a denser topology$"):
        check_neighbourhood(parse_merge({"rule": "dos"}), 2, "hospital-c")
    with pytest.raises(ConfigError, match=r"clipping needs at least 3 .*: use a denser topology$"):
        check_neighbourhood(parse_merge({"rule": "clipping"}), 2, "hospital-c")
    check_neighbourhood(parse_merge({"rule": "clipping"}), 3, "hospital-c")
    check_neighbourhood(parse_merge({}), 1, "hospital-c")


def test_check_neighbourhood_counts_multi_krum_m():
    spec = parse_merge({"rule": "multi_krum", "f": 1, "m": 5})
    with pytest.raises(ConfigError, match=r"multi_krum with f = 1, m = 5 needs at least 6 .*n >= 2f\+3 and n >= m\+f"):
        check_neighbourhood(spec, 5, "hospital-d")
    check_neighbourhood(spec, 6, "hospital-d")


def test_clipping_with_a_fixed_radius_works_with_one_neighbour():
    # Pairwise gossip: own (0, 0), one neighbour at distance 5 clipped to tau = 1.
    merged = parse_merge({"rule": "clipping", "tau": 1.0}).merge(models([0.0, 0.0], [3.0, 4.0], weights=[1, 1]))
    assert close(merged["x"], [0.3, 0.4])
    assert SelfCentredClipping(tau=1.0).minimum_candidates(0) == 2
    check_neighbourhood(parse_merge({"rule": "clipping", "tau": 0.5}), 2, "hospital-c")
    assert parse_merge({"rule": "clipping", "tau": 0.5}).describe() == "clipping with tau = 0.5"
    with pytest.raises(ConfigError, match=r"merge\.tau: only rule clipping uses tau"):
        parse_merge({"rule": "median", "tau": 1.0})
    with pytest.raises(ConfigError, match=r"merge\.tau"):
        parse_merge({"rule": "clipping", "tau": 0})
