"""Topologies read from files: edge lists, GraphML, JSON, schedules; bad files give one
ConfigError naming topology.path."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import pytest

from swarm.errors import ConfigError
from swarm.topology import build_round_graphs, build_topology

SQUARE_WITH_TAIL = {(0, 1), (1, 2), (2, 3), (0, 3), (3, 4)}


def edges(graph: nx.Graph) -> set[tuple[int, int]]:
    return {tuple(sorted(edge)) for edge in graph.edges}


def read(path: Path, n: int = 5) -> nx.Graph:
    return build_topology("file", n, {"path": str(path)})


def test_edge_list_with_comments_and_a_lone_node(tmp_path):
    path = tmp_path / "graph.txt"
    path.write_text("# a square with a tail\n0 1\n1 2  # inline comment\n\n2 3\n3 0\n3 4\n")
    assert edges(read(path)) == SQUARE_WITH_TAIL
    path.write_text("0 1\n1 2\n2\n")  # a lone label declares a node: here a repeat
    assert edges(read(path, 3)) == {(0, 1), (1, 2)}


def test_labels_become_members_in_sorted_order(tmp_path):
    path = tmp_path / "graph.txt"
    path.write_text("c a\na b\n")  # a=0, b=1, c=2
    assert edges(read(path, 3)) == {(0, 2), (0, 1)}
    path.write_text("10 9\n9 1\n")  # numeric labels sort numerically: 1=0, 9=1, 10=2
    assert edges(read(path, 3)) == {(1, 2), (0, 1)}


def test_graphml(tmp_path):
    path = tmp_path / "graph.graphml"
    nx.write_graphml(nx.Graph(SQUARE_WITH_TAIL), path)
    assert edges(read(path)) == SQUARE_WITH_TAIL


@pytest.mark.parametrize("document", [
    {"0": [1, 3], "1": [2], "2": [3], "3": [4], "4": []},
    nx.node_link_data(nx.Graph(SQUARE_WITH_TAIL), edges="links"),
    nx.node_link_data(nx.Graph(SQUARE_WITH_TAIL)),
    nx.adjacency_data(nx.Graph(SQUARE_WITH_TAIL)),
], ids=["adjacency-map", "node-link-links", "node-link-edges", "networkx-adjacency"])
def test_json_formats(tmp_path, document):
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(document))
    assert edges(read(path)) == SQUARE_WITH_TAIL


@pytest.mark.parametrize(("name", "content", "fragment"), [
    ("missing.txt", None, "not found"),
    ("graph.txt", "0 1 2\n", "line 1"),
    ("graph.txt", "0 1\n1 2\n", "has 3 nodes but the federation has 5 members"),
    ("graph.txt", "0 0\n0 1\n1 2\n2 3\n3 4\n", "to itself"),
    ("graph.json", "{not json", "not valid JSON"),
    ("graph.json", "[1, 2]", "must map each node"),
    ("graph.json", '{"0": [{"x": 1}]}', "must be a node label"),
    ("graph.graphml", "<graphml><garbage", "not a valid GraphML"),
    ("graph.txt", b"\xff\xfe\x00", "cannot read"),
])
def test_bad_files_name_topology_path(tmp_path, name, content, fragment):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        read(path)
    message = str(caught.value)
    assert message.startswith("topology.path: ") and fragment in message and "\n" not in message


def test_file_needs_a_path():
    with pytest.raises(ConfigError, match=r"topology\.path: missing"):
        build_topology("file", 4, {})


def test_a_disconnected_file_is_refused_unless_allowed(tmp_path):
    path = tmp_path / "graph.txt"
    path.write_text("0 1\n2 3\n")
    with pytest.raises(ConfigError, match=r"disconnected \(2 components\); set allow_disconnected = true"):
        read(path, 4)
    assert edges(build_topology("file", 4, {"path": str(path), "allow_disconnected": True})) == {(0, 1), (2, 3)}


def test_schedule_file_both_forms(tmp_path):
    path = tmp_path / "schedule.json"
    rounds = [[[0, 1], [2, 3]], [[1, 2], [3, 0]]]
    path.write_text(json.dumps(rounds))
    graphs = build_round_graphs("schedule-file", 4, {"path": str(path)})
    assert [edges(g) for g in graphs] == [{(0, 1), (2, 3)}, {(1, 2), (0, 3)}]
    assert not graphs[0].is_directed()
    path.write_text(json.dumps({"graphs": rounds, "directed": True}))
    graphs = build_round_graphs("schedule-file", 4, {"path": str(path)})
    assert graphs[0].is_directed() and set(graphs[1].edges) == {(1, 2), (3, 0)}


@pytest.mark.parametrize(("document", "fragment"), [
    ([], "non-empty list"),
    ({"graphs": [[[0, 1]]], "extra": 1}, "unexpected or missing keys"),
    ({"graphs": [[[0, 1]]], "directed": "yes"}, "directed must be true or false"),
    ([[[0, 4]]], "member indices 0 to 3"),
    ([[[1, 1]]], "to itself"),
    ([[[0, 1], [2, 3]], [[0, 1]]], "disconnected"),  # members 2, 3 never meet 0, 1
])
def test_bad_schedule_files(tmp_path, document, fragment):
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match="^topology") as caught:
        build_round_graphs("schedule-file", 4, {"path": str(path)})
    assert fragment in str(caught.value)
