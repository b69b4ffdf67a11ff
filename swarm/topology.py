"""Federation topologies built with networkx from a name and parameters.

A topology decides who talks to whom; the resolved neighbour lists go into the manifest's
training plan, so every node agrees on the graph without recomputing it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import networkx as nx

from .errors import ConfigError

Builder = Callable[[int, Mapping[str, Any], int], nx.Graph]


def _ring(n: int, params: Mapping[str, Any], seed: int) -> nx.Graph:
    return nx.cycle_graph(n)


def _complete(n: int, params: Mapping[str, Any], seed: int) -> nx.Graph:
    return nx.complete_graph(n)


def _random_regular(n: int, params: Mapping[str, Any], seed: int) -> nx.Graph:
    degree = _int_param(params, "degree", 3, minimum=1)
    if degree >= n or (degree * n) % 2:
        raise ConfigError(
            f"topology.degree: a {degree}-regular graph on {n} nodes does not exist "
            f"(need degree < nodes and degree*nodes even; example: degree = 4)"
        )
    # Retry a few seeds: a random regular graph is occasionally disconnected.
    for attempt in range(100):
        graph = nx.random_regular_graph(degree, n, seed=seed + attempt)
        if nx.is_connected(graph):
            return graph
    raise ConfigError(f"topology.degree: no connected {degree}-regular graph found on {n} nodes")


TOPOLOGIES: dict[str, Builder] = {
    "ring": _ring,
    "complete": _complete,
    "random-regular": _random_regular,
}


def _int_param(params: Mapping[str, Any], key: str, default: int, minimum: int) -> int:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"topology.{key}: must be an integer >= {minimum}, got {value!r} "
            f"(example: {key} = {max(default, minimum)})"
        )
    return value


def build_topology(name: str, n: int, params: Mapping[str, Any] | None = None, seed: int = 0) -> nx.Graph:
    """The graph `name` on nodes 0..n-1; ConfigError for unknown names or impossible parameters."""
    if name not in TOPOLOGIES:
        known = ", ".join(sorted(TOPOLOGIES))
        raise ConfigError(f"topology.name: unknown topology {name!r}; choose one of: {known}")
    if n < 2:
        raise ConfigError(f"topology: a federation needs at least 2 nodes, got {n}")
    graph = TOPOLOGIES[name](n, params or {}, seed)
    if not nx.is_connected(graph):
        raise ConfigError(f"topology.name: the {name!r} graph on {n} nodes is disconnected")
    return graph


def neighbour_lists(graph: nx.Graph, names: list[str]) -> dict[str, list[str]]:
    """Map each member name to its sorted neighbour names (node i of the graph is names[i])."""
    return {names[i]: sorted(names[j] for j in graph.neighbors(i)) for i in range(len(names))}


def check_neighbour_lists(neighbours: Mapping[str, list[str]]) -> None:
    """Refuse an explicit neighbour list that is asymmetric, self-looped or disconnected."""
    graph = nx.Graph()
    graph.add_nodes_from(neighbours)
    for name, peers in neighbours.items():
        for peer in peers:
            if peer == name:
                raise ConfigError(f"plan.neighbours.{name}: a node cannot be its own neighbour")
            if peer not in neighbours:
                raise ConfigError(f"plan.neighbours.{name}: {peer!r} is not a member")
            if name not in neighbours[peer]:
                raise ConfigError(
                    f"plan.neighbours.{name}: lists {peer!r} but {peer!r} does not list {name!r}; "
                    "links must be symmetric"
                )
            graph.add_edge(name, peer)
    if len(graph) > 1 and not nx.is_connected(graph):
        raise ConfigError("plan.neighbours: the neighbour graph is disconnected")
