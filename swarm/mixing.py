"""Mixing matrices and how fast a topology mixes.

D-PSGD averages x_i <- sum_j W_ij x_j with Metropolis-Hastings weights (swarm.schedule); the
spectral gap 1 - max(|lambda_2|, |lambda_n|) of W says how quickly repeated averaging
reaches consensus (Boyd et al., "Fast linear iterations for distributed averaging", 2004).
A gap of 1 is one-step averaging (complete graph); 0 means some part never mixes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import networkx as nx
import numpy as np

from .schedule import metropolis_hastings_weight
from .topology import union_graph


def mh_matrix(graph: nx.Graph) -> np.ndarray:
    """The Metropolis-Hastings matrix of `graph` in node order: symmetric and doubly
    stochastic. A directed graph is mixed as its symmetric closure, as the nodes do."""
    if graph.is_directed():
        graph = graph.to_undirected()
    index = {node: i for i, node in enumerate(graph)}
    weights = np.zeros((len(index), len(index)))
    for u, v in graph.edges:
        if u != v:
            weights[index[u], index[v]] = weights[index[v], index[u]] = metropolis_hastings_weight(graph.degree(u), graph.degree(v))
    np.fill_diagonal(weights, 1.0 - weights.sum(axis=1))
    return weights


def spectral_gap(weights: np.ndarray) -> float:
    """1 - the second largest eigenvalue modulus of a stochastic matrix."""
    if np.allclose(weights, weights.T):
        eigenvalues = np.linalg.eigvalsh(weights)  # ascending: lambda_n first, lambda_1 = 1 last
        second = max(abs(eigenvalues[-2]), abs(eigenvalues[0]))
    else:
        second = np.sort(np.abs(np.linalg.eigvals(weights)))[-2]
    return max(0.0, 1.0 - float(second))


def topology_stats(graph: nx.Graph) -> dict[str, Any]:
    """Size, degrees, diameter (None if disconnected) and MH spectral gap of a static graph."""
    graph = graph.to_undirected() if graph.is_directed() else graph
    degrees = [d for _, d in graph.degree()]
    connected = nx.is_connected(graph)
    return {
        "nodes": graph.number_of_nodes(),
        "edges": graph.number_of_edges(),
        "degree_min": min(degrees),
        "degree_mean": sum(degrees) / len(degrees),
        "degree_max": max(degrees),
        "connected": connected,
        "components": nx.number_connected_components(graph),
        "diameter": nx.diameter(graph) if connected else None,
        "spectral_gap": spectral_gap(mh_matrix(graph)),
    }


def schedule_stats(graphs: Sequence[nx.Graph]) -> dict[str, Any]:
    """Stats of the union of a time-varying topology's round graphs (the links nodes open)
    plus the per-round MH spectral gaps: what the averaging sees each round."""
    gaps = [spectral_gap(mh_matrix(graph)) for graph in graphs]
    return topology_stats(union_graph(graphs)) | {
        "period": len(graphs),
        "directed": graphs[0].is_directed(),
        "round_spectral_gap_mean": math.fsum(gaps) / len(gaps),
        "round_spectral_gap_min": min(gaps),
    }
