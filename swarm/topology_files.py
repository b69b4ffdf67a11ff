"""Reading topologies from files: a static graph (`file`) or per-round graphs (`schedule-file`).

Static graphs may be written as
- an edge list (any other suffix): one `a b` link per line, a lone `a` for a node without
  links, `#` starts a comment;
- GraphML (`.graphml`);
- JSON (`.json`): an adjacency map {"a": ["b", "c"], ...}, or networkx's node-link or
  adjacency format.
Node labels become member indices in sorted order (numerically when every label is an
integer), so labels 0..n-1 are member indices and a file naming members that sort like the
member list needs no renumbering.

A schedule file is JSON: {"graphs": [[[i, j], ...] per round], "directed": false} or just the
list of per-round edge lists, with member indices 0..n-1 as nodes."""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import networkx as nx

from .errors import ConfigError

WHERE = "topology.path"


def read_graph_file(path: str, n: int) -> nx.Graph:
    """The undirected graph in `path` on nodes 0..n-1; ConfigError naming topology.path when the
    file is unreadable, malformed, self-looped or does not have exactly n nodes."""
    suffix = Path(path).suffix.lower()
    if suffix == ".graphml":
        graph = _read_graphml(path)
    elif suffix == ".json":
        graph = _graph_from_json(_read_json(path), path)
    else:
        graph = _graph_from_edge_list(_read_text(path), path)
    return _numbered(nx.Graph(graph), path, n)


def read_schedule_file(path: str, n: int) -> tuple[list[list[tuple[int, int]]], bool]:
    """(per-round edge lists, directed) from a schedule file; indices are checked against n."""
    document = _read_json(path)
    directed = False
    if isinstance(document, dict):
        unknown = set(document) - {"graphs", "directed"}
        if unknown or "graphs" not in document:
            raise ConfigError(f'{WHERE}: {path} must hold {{"graphs": [...], "directed": false}} (unexpected or missing keys: {sorted(unknown) or ["graphs"]})')
        directed = document.get("directed", False)
        if type(directed) is not bool:
            raise ConfigError(f"{WHERE}: {path}: directed must be true or false, got {directed!r}")
        document = document["graphs"]
    if not isinstance(document, list) or not document:
        raise ConfigError(f"{WHERE}: {path}: graphs must be a non-empty list of per-round edge lists like [[0, 1], [1, 2]]")
    return [_round_edges(edges, r, path, n) for r, edges in enumerate(document)], directed


def _round_edges(edges: Any, r: int, path: str, n: int) -> list[tuple[int, int]]:
    if not isinstance(edges, list):
        raise ConfigError(f"{WHERE}: {path}: graphs[{r}] must be a list of [i, j] pairs, got {edges!r}")
    checked = []
    for edge in edges:
        if not (isinstance(edge, list) and len(edge) == 2 and all(type(i) is int and 0 <= i < n for i in edge)):
            raise ConfigError(f"{WHERE}: {path}: graphs[{r}] has {edge!r}; each link is [i, j] with member indices 0 to {n - 1}")
        if edge[0] == edge[1]:
            raise ConfigError(f"{WHERE}: {path}: graphs[{r}] links member {edge[0]} to itself; remove the self loop")
        checked.append((edge[0], edge[1]))
    return checked


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{WHERE}: {path} not found; check the path (relative paths start in the current directory)") from None
    except IsADirectoryError:
        raise ConfigError(f"{WHERE}: {path} is a directory; name the graph file itself") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{WHERE}: cannot read {path} ({exc.__class__.__name__}); check the file") from None


def _read_json(path: str) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{WHERE}: {path} is not valid JSON ({exc}); fix the syntax") from None


def _read_graphml(path: str) -> nx.Graph:
    _read_text(path)  # the same messages for missing or unreadable files
    try:
        return nx.read_graphml(path)
    except Exception as exc:  # networkx raises assorted XML and parse errors
        raise ConfigError(f"{WHERE}: {path} is not a valid GraphML file ({exc.__class__.__name__}: {exc}); fix or re-export it") from None


def _graph_from_edge_list(text: str, path: str) -> nx.Graph:
    graph = nx.Graph()
    for line_no, line in enumerate(text.splitlines(), 1):
        tokens = line.split("#", 1)[0].split()
        if len(tokens) > 2:
            raise ConfigError(f"{WHERE}: {path} line {line_no}: expected 'a b' (one link per line), got {line.strip()!r}")
        graph.add_nodes_from(tokens)
        if len(tokens) == 2:
            graph.add_edge(*tokens)
    return graph


def _graph_from_json(document: Any, path: str) -> nx.Graph:
    if isinstance(document, dict) and _is_node_list(document.get("nodes")):
        try:
            if "adjacency" in document:
                return nx.adjacency_graph(document)
            return nx.node_link_graph(document, edges="links" if "links" in document else "edges")
        except (KeyError, TypeError, ValueError, nx.NetworkXError) as exc:
            raise ConfigError(f"{WHERE}: {path} is not a valid networkx JSON graph ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(document, dict) or not all(isinstance(peers, list) for peers in document.values()):
        raise ConfigError(f'{WHERE}: {path} must map each node to its neighbours, like {{"0": [1, 2], "1": [0]}}')
    graph = nx.Graph()
    for node, peers in document.items():
        graph.add_node(node)
        for peer in peers:
            if not isinstance(peer, (str, int)) or isinstance(peer, bool):
                raise ConfigError(f"{WHERE}: {path}: neighbour {peer!r} of {node!r} must be a node label (string or integer)")
            graph.add_edge(node, str(peer))  # JSON object keys are strings: match them
    return graph


def _is_node_list(nodes: Any) -> bool:
    return isinstance(nodes, list) and all(isinstance(node, dict) for node in nodes)


def _numbered(graph: nx.Graph, path: str, n: int) -> nx.Graph:
    loops = list(nx.selfloop_edges(graph))
    if loops:
        raise ConfigError(f"{WHERE}: {path} links node {loops[0][0]!r} to itself; remove the self loop")
    if len(graph) != n:
        raise ConfigError(f"{WHERE}: {path} has {len(graph)} nodes but the federation has {n} members; make them match")
    order = _sorted_labels(list(graph))
    return nx.relabel_nodes(graph, {label: i for i, label in enumerate(order)})


def _sorted_labels(labels: Sequence[Hashable]) -> list[Hashable]:
    # Numeric order where every label is an integer, so "10" comes after "9".
    try:
        return sorted(labels, key=lambda label: int(str(label)))
    except ValueError:
        return sorted(labels, key=str)
