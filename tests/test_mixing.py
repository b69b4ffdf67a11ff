"""Metropolis-Hastings mixing matrices and spectral gaps (regression values from DESIGN.md)."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from swarm.mixing import mh_matrix, schedule_stats, spectral_gap, topology_stats
from swarm.schedule import Schedule
from swarm.topology import build_round_graphs, build_topology, resolve_topology


@pytest.mark.parametrize(("name", "n", "params", "gap", "decimals"), [
    ("ring", 8, {}, 0.1953, 4),
    ("ring", 16, {}, 0.0507, 4),
    ("ring", 64, {}, 0.0032, 4),
    ("torus", 16, {"rows": 4, "cols": 4}, 0.40, 2),
    ("torus", 64, {"rows": 8, "cols": 8}, 0.117, 3),
    ("complete", 8, {}, 1.0, 4),
])
def test_spectral_gap_regression_values(name, n, params, gap, decimals):
    assert round(spectral_gap(mh_matrix(build_topology(name, n, params))), decimals) == gap


def _s_out_round() -> nx.DiGraph:
    return build_round_graphs("random-s-out", 10, {"s": 2}, seed=3, rounds=1)[0]


@pytest.mark.parametrize("graph", [
    nx.cycle_graph(7), nx.star_graph(6), nx.barabasi_albert_graph(20, 2, seed=1), _s_out_round(),
], ids=["ring", "star", "barabasi-albert", "random-s-out round"])
def test_mh_matrix_is_symmetric_and_doubly_stochastic(graph):
    weights = mh_matrix(graph)
    assert np.allclose(weights, weights.T)
    assert np.allclose(weights.sum(axis=1), 1.0)
    assert (weights >= -1e-12).all()


def test_mh_matrix_of_a_directed_round_matches_what_the_nodes_use():
    names = [f"h{i}" for i in range(10)]
    table = {"name": "random-s-out", "s": 2, "seed": 3, "period": 1}
    neighbours, document = resolve_topology(table, names, rounds=1)
    schedule = Schedule.from_plan(neighbours, document)
    weights = mh_matrix(_s_out_round())
    for i, name in enumerate(names):
        row = schedule.mixing_weights(name, 1)
        expected = {names[j]: weights[i, j] for j in range(10) if weights[i, j] > 0}
        assert row == pytest.approx(expected)


def test_spectral_gap_of_a_disconnected_graph_is_zero():
    assert spectral_gap(mh_matrix(nx.disjoint_union(nx.cycle_graph(4), nx.cycle_graph(4)))) == pytest.approx(0.0, abs=1e-12)


def test_topology_stats():
    stats = topology_stats(build_topology("star", 6))
    assert stats | {"spectral_gap": None} == {
        "nodes": 6, "edges": 5, "degree_min": 1, "degree_mean": 10 / 6, "degree_max": 5,
        "connected": True, "components": 1, "diameter": 2, "spectral_gap": None,
    }
    split = topology_stats(nx.disjoint_union(nx.path_graph(3), nx.path_graph(2)))
    assert (split["connected"], split["components"], split["diameter"]) == (False, 2, None)


def test_schedule_stats_average_the_round_gaps_and_describe_the_union():
    graphs = build_round_graphs("dynamic-regular", 12, {"degree": 3}, seed=1, rounds=5)
    stats = schedule_stats(graphs)
    gaps = [spectral_gap(mh_matrix(g)) for g in graphs]
    assert stats["period"] == 5 and stats["directed"] is False
    assert stats["round_spectral_gap_mean"] == pytest.approx(sum(gaps) / 5)
    assert stats["round_spectral_gap_min"] == pytest.approx(min(gaps))
    neighbours, _ = resolve_topology({"name": "dynamic-regular", "degree": 3, "seed": 1, "period": 5}, [str(i) for i in range(12)], 5)
    assert stats["edges"] == sum(len(peers) for peers in neighbours.values()) // 2
