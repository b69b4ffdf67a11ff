"""Topology construction and resolution into plan neighbour lists and schedules; the plan
and manifest carrying a schedule; the `swarm-scenario topology` command."""

from __future__ import annotations

import json

import networkx as nx
import pytest
from click.testing import CliRunner

from nodes.plan import build_plan
from scenarios.cli import main as scenario_cli
from swarm.errors import ConfigError, ManifestError
from swarm.manifest import Member, build_manifest
from swarm import topology
from swarm.schedule import Schedule
from swarm.topology import (
    MAX_PERIOD, _manifest_bytes, build_round_graphs, build_topology, check_neighbour_lists, resolve_topology,
    topology_graphs,
)

NAMES = [f"h{i}" for i in range(8)]


def degrees(graph: nx.Graph) -> list[int]:
    return sorted(d for _, d in graph.degree())


def edge_set(graph: nx.Graph) -> set[tuple[int, int]]:
    return {tuple(sorted(edge)) for edge in graph.edges}


# -- static constructors -----------------------------------------------------------------


def test_simple_shapes():
    assert edge_set(build_topology("ring", 5)) == {(0, 1), (1, 2), (2, 3), (3, 4), (0, 4)}
    assert edge_set(build_topology("line", 4)) == {(0, 1), (1, 2), (2, 3)}
    star = build_topology("star", 6)
    assert star.degree(0) == 5 and degrees(star) == [1] * 5 + [5]
    assert build_topology("complete", 6).number_of_edges() == 15


def test_exponential_links_powers_of_two():
    graph = build_topology("exponential", 16)
    assert degrees(graph) == [7] * 16  # offsets +-1, +-2, +-4 and 8 (= -8 mod 16)
    assert set(graph.neighbors(0)) == {1, 2, 4, 8, 15, 14, 12}
    assert degrees(build_topology("exponential", 10)) == [6] * 10  # +-1, +-2, +-4; +8 = -2 mod 10 adds nothing
    assert edge_set(build_topology("exponential", 2)) == {(0, 1)}


def test_grid_and_torus_shapes():
    grid = build_topology("grid", 12)  # most square: 3 x 4
    assert grid.number_of_edges() == 3 * 3 + 2 * 4 and degrees(grid).count(2) == 4
    assert set(grid.neighbors(5)) == {1, 4, 6, 9}  # row-major: (1, 1) has neighbours up, left, right, down
    wide = build_topology("grid", 12, {"rows": 2})
    assert wide.number_of_edges() == 2 * 5 + 6
    torus = build_topology("torus", 16)
    assert degrees(torus) == [4] * 16 and torus.number_of_edges() == 32
    assert set(torus.neighbors(0)) == {1, 3, 4, 12}
    assert build_topology("torus", 12, {"rows": 3, "cols": 4}).number_of_edges() == 24
    assert edge_set(build_topology("grid", 5)) == edge_set(nx.path_graph(5))  # prime: 1 x 5


@pytest.mark.parametrize(("name", "params", "fragment"), [
    ("torus", {"rows": 3}, "topology.rows: 3 does not divide 16 nodes"),
    ("grid", {"cols": 5}, "topology.cols: 5 does not divide"),
    ("grid", {"rows": 2, "cols": 4}, "topology.rows: rows * cols = 2 * 4 = 8, but there are 16 nodes"),
    ("grid", {"rows": 0}, "topology.rows: must be an integer from 1 to 16"),
    ("random-regular", {"degree": 16}, "topology.degree: a 16-regular graph on 16 nodes does not exist"),
    ("erdos-renyi", {}, "topology.p: missing; add e.g. p = 0.3"),
    ("erdos-renyi", {"p": 1.5}, "topology.p: must be a number in [0, 1]"),
    ("watts-strogatz", {"k": 3}, "topology.k: must be even"),
    ("watts-strogatz", {"k": 20}, "topology.k: must be an integer from 2 to 15"),
    ("barabasi-albert", {"m": 0}, "topology.m: must be an integer from 1 to 15"),
    ("random-s-out", {"s": 16}, "topology.s: must be an integer from 1 to 15"),
    ("random-s-out", {"period": MAX_PERIOD + 1}, "topology.period: must be an integer from 1 to 1000"),
    ("dynamic-regular", {"degree": 3}, "topology.degree: a 3-regular graph on 15 nodes does not exist"),
    ("ring", {"degree": 4}, "topology.degree: unknown key"),
    ("torus", {"p": 0.1}, "topology.p: unknown key"),
    ("ring", {"allow_disconnected": "yes"}, "topology.allow_disconnected: must be true or false"),
    ("moebius", {}, "topology.name: unknown topology 'moebius'; choose one of: ring, line"),
])
def test_bad_parameters_name_the_key(name, params, fragment):
    n = 15 if name == "dynamic-regular" else 16
    with pytest.raises(ConfigError) as caught:
        topology_graphs({"name": name, **params}, n, rounds=10)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(("name", "params"), [
    ("random-regular", {"degree": 4}), ("erdos-renyi", {"p": 0.4}), ("watts-strogatz", {"k": 4, "p": 0.3}),
    ("barabasi-albert", {"m": 2}),
])
def test_random_graphs_are_deterministic_given_the_seed(name, params):
    first = build_topology(name, 20, params, seed=5)
    assert edge_set(first) == edge_set(build_topology(name, 20, params, seed=5))
    assert any(edge_set(first) != edge_set(build_topology(name, 20, params, seed=s)) for s in range(6, 9))
    assert nx.is_connected(first)


def test_random_graph_properties():
    assert degrees(build_topology("random-regular", 20, {"degree": 4})) == [4] * 20
    assert build_topology("barabasi-albert", 20, {"m": 2}).number_of_edges() == 2 * (20 - 2)
    assert build_topology("watts-strogatz", 20, {"k": 4, "p": 0.2}).number_of_edges() == 40  # rewiring keeps the count
    assert build_topology("erdos-renyi", 10, {"p": 1.0}).number_of_edges() == 45


def test_disconnected_graphs_are_refused_unless_allowed():
    table = {"name": "erdos-renyi", "p": 0.05}
    with pytest.raises(ConfigError, match=r"^topology: the erdos-renyi graph on 16 nodes is disconnected \(\d+ components\); "
                                          r"set allow_disconnected = true to run it anyway$"):
        topology_graphs(table, 16)
    graph, = topology_graphs(table | {"allow_disconnected": True}, 16)
    assert not nx.is_connected(graph)


def test_a_member_without_links_is_refused_even_when_disconnection_is_allowed():
    with pytest.raises(ConfigError, match="has no links in the erdos-renyi graph"):
        resolve_topology({"name": "erdos-renyi", "p": 0.0, "allow_disconnected": True}, NAMES, rounds=1)


def test_check_neighbour_lists_allows_disconnection_on_request():
    split = {"a": ["b"], "b": ["a"], "c": ["d"], "d": ["c"]}
    with pytest.raises(ConfigError, match="disconnected"):
        check_neighbour_lists(split)
    check_neighbour_lists(split, allow_disconnected=True)


# -- time-varying ------------------------------------------------------------------------


def test_random_s_out_rounds():
    graphs = build_round_graphs("random-s-out", 10, {"s": 3}, seed=1, rounds=7)
    assert len(graphs) == 7 and all(g.is_directed() for g in graphs)
    assert all(g.out_degree(i) == 3 and not g.has_edge(i, i) for g in graphs for i in range(10))
    assert len({frozenset(g.edges) for g in graphs}) == 7  # a new draw every round
    again = build_round_graphs("random-s-out", 10, {"s": 3}, seed=1, rounds=7)
    assert [set(g.edges) for g in graphs] == [set(g.edges) for g in again]


def test_dynamic_regular_rounds_and_period():
    graphs = build_round_graphs("dynamic-regular", 10, {"degree": 3, "period": 4}, seed=2, rounds=50)
    assert len(graphs) == 4 and all(degrees(g) == [3] * 10 for g in graphs)
    assert len({frozenset(edge_set(g)) for g in graphs}) == 4
    assert len(build_round_graphs("dynamic-regular", 10, {"degree": 3}, rounds=2000)) == MAX_PERIOD


@pytest.mark.parametrize("table", [
    {"name": "random-s-out", "s": 2, "seed": 4},
    {"name": "dynamic-regular", "degree": 3, "period": 6},
])
def test_time_varying_resolution_gives_a_schedule_the_nodes_accept(table):
    neighbours, document = resolve_topology(table, NAMES, rounds=12)
    schedule = Schedule.from_plan(neighbours, document)
    assert schedule.dynamic and schedule.period == table.get("period", 12)
    union = {name: set() for name in NAMES}
    for round_no in range(1, schedule.period + 1):
        for name in NAMES:
            for peer in schedule.exchange_with(name, round_no):
                union[name].add(peer)
    assert {name: sorted(peers) for name, peers in union.items()} == neighbours
    if table["name"] == "random-s-out":
        assert document["directed"] and all(len(schedule.send_to(name, 1)) == 2 for name in NAMES)


def test_static_resolution_has_no_schedule():
    neighbours, document = resolve_topology({"name": "ring"}, NAMES[:4], rounds=5)
    assert document is None and neighbours == {"h0": ["h1", "h3"], "h1": ["h0", "h2"], "h2": ["h1", "h3"], "h3": ["h0", "h2"]}


def test_a_schedule_too_large_for_the_manifest_is_refused(monkeypatch):
    monkeypatch.setattr(topology, "MAX_SCHEDULE_BYTES", 2**16)  # smaller than the real limit: faster
    names = [f"site-{i:03d}" for i in range(16)]
    with pytest.raises(ConfigError, match=r"^topology\.period: 1000 round graphs on 16 members take .* MiB .* \(example: period = (\d+)\)$") as caught:
        resolve_topology({"name": "random-s-out", "s": 2}, names, rounds=1000)
    fits = int(caught.value.args[0].rsplit("= ", 1)[1].rstrip(")"))
    resolve_topology({"name": "random-s-out", "s": 2, "period": fits}, names, rounds=1000)  # the suggestion fits


def test_manifest_size_estimate_matches_the_indented_encoding():
    _, document = resolve_topology({"name": "random-s-out", "s": 3, "period": 9}, NAMES, rounds=9)
    exact = len(json.dumps({"plan": {"schedule": document}}, indent=2))
    assert exact <= _manifest_bytes(document) <= exact + 100


# -- the plan and the manifest -----------------------------------------------------------

PLAN_SECTIONS = ({"name": "dpsgd"}, {"name": "mlp", "hidden": [4]}, {}, {"num_features": 4, "num_classes": 2})


def members(n: int) -> list[Member]:
    return [Member(f"h{i}", bytes([i]) * 32, f"{i:040d}", f"tcp://127.0.0.1:{7000 + i}") for i in range(n)]


def test_plan_and_manifest_carry_the_schedule():
    plan = build_plan(NAMES, 6, {"name": "random-s-out", "s": 1, "period": 3}, *PLAN_SECTIONS)
    assert len(plan["schedule"]["graphs"]) == 3
    manifest = build_manifest("fed", members(8), plan)
    assert manifest.plan.schedule == plan["schedule"]
    assert Schedule.from_plan(manifest.plan.neighbours, manifest.plan.schedule).period == 3
    assert "schedule" not in build_plan(NAMES, 6, {"name": "ring"}, *PLAN_SECTIONS)
    assert build_manifest("fed", members(8), build_plan(NAMES, 6, {"name": "ring"}, *PLAN_SECTIONS)).plan.schedule is None


def test_manifest_refuses_a_schedule_outside_the_neighbour_lists():
    plan = build_plan(NAMES[:4], 3, {"name": "ring"}, *PLAN_SECTIONS)
    plan["schedule"] = {"members": NAMES[:4], "directed": True, "graphs": [[[2], [], [], []]]}  # h0 -> h2: not a ring link
    with pytest.raises(ManifestError, match=r"^manifest\.plan\.schedule\.graphs\[0\]\[0\]: h0 -> h2 is not among plan\.neighbours"):
        build_manifest("fed", members(4), plan)


def test_manifest_honours_allow_disconnected():
    plan = build_plan(NAMES[:4], 3, {"name": "ring"}, *PLAN_SECTIONS)
    plan["neighbours"] = {"h0": ["h1"], "h1": ["h0"], "h2": ["h3"], "h3": ["h2"]}
    with pytest.raises(ManifestError, match="disconnected"):
        build_manifest("fed", members(4), plan)
    plan["topology"] = {"name": "explicit", "allow_disconnected": True}
    assert build_manifest("fed", members(4), plan).plan.neighbours["h2"] == ("h3",)


# -- the command -------------------------------------------------------------------------


def invoke(*args: str):
    return CliRunner().invoke(scenario_cli, ["topology", *args])


def test_cli_json_stats():
    result = invoke("torus", "rows=4", "--nodes", "16", "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["topology"] == {"name": "torus", "rows": 4}
    assert (stats["nodes"], stats["edges"], stats["degree_max"], stats["diameter"]) == (16, 32, 4, 4)
    assert round(stats["spectral_gap"], 2) == 0.40


def test_cli_table_and_time_varying():
    result = invoke("ring", "--nodes", "8")
    assert result.exit_code == 0 and "0.1953" in result.output and "diameter" in result.output
    result = invoke("random-s-out", "s=2", "--nodes", "12", "--rounds", "5", "--seed", "3", "--json")
    stats = json.loads(result.output)
    assert stats["time_varying"] and stats["period"] == 5 and stats["topology"]["seed"] == 3
    assert 0 < stats["round_spectral_gap_mean"] <= stats["spectral_gap"]
    assert "per round" in invoke("dynamic-regular", "degree=4", "--nodes", "10").output


def test_cli_parses_values():
    result = invoke("erdos-renyi", "p=0.05", "allow_disconnected=true", "--nodes", "16", "--json")
    stats = json.loads(result.output)
    assert stats["topology"]["p"] == 0.05 and stats["connected"] is False and stats["diameter"] is None


@pytest.mark.parametrize(("args", "fragment"), [
    (["torus", "rows=3", "--nodes", "16"], "topology.rows: 3 does not divide 16 nodes"),
    (["ring", "degree", "--nodes", "8"], "topology parameter 'degree': expected key=value"),
    (["ring", "name=line", "--nodes", "8"], "give the topology name as the first argument"),
    (["erdos-renyi", "p=0.05", "--nodes", "16"], "set allow_disconnected = true"),
    (["file", "path=/nonexistent/graph.txt", "--nodes", "4"], "topology.path: /nonexistent/graph.txt not found"),
])
def test_cli_user_errors_are_one_line_exit_2(args, fragment):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.output
