"""Who talks to whom in each round.

A static topology uses the manifest's neighbour lists in every round. A time-varying one
(a new random s-out or regular graph every round, or a schedule read from a file) is
resolved when the plan is built and embedded in the manifest as `plan.schedule`, so every
node reads the same signed graphs instead of re-drawing them with a random generator whose
output may differ between library versions:

    "schedule": {"members": [name, ...], "directed": bool,
                 "graphs": [[[j, ...] for each member i] for each round]}

graphs[r][i] lists the members that member i sends to in round r + 1 (indices into
`members`); an undirected graph lists every edge at both ends. Rounds past the last graph
cycle through the list again. The manifest's neighbour lists are then the union of every
round's links: the sockets a node opens."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


def metropolis_hastings_weight(degree_i: int, degree_j: int) -> float:
    """w_ij = 1 / (1 + max(d_i, d_j)) for a link i-j: symmetric, and with
    w_ii = 1 - sum_j w_ij the mixing matrix is doubly stochastic."""
    return 1.0 / (1 + max(degree_i, degree_j))


@dataclass(frozen=True)
class RoundGraph:
    """One round's links as directed adjacency: out_links[name] are the members it sends to."""

    out_links: Mapping[str, tuple[str, ...]]
    in_links: Mapping[str, tuple[str, ...]]
    directed: bool

    @classmethod
    def from_out_links(cls, out_links: Mapping[str, Sequence[str]], directed: bool) -> RoundGraph:
        out = {name: tuple(sorted(peers)) for name, peers in out_links.items()}
        incoming: dict[str, list[str]] = {name: [] for name in out}
        for name, peers in out.items():
            for peer in peers:
                incoming[peer].append(name)
        return cls(out, {name: tuple(sorted(peers)) for name, peers in incoming.items()}, directed)

    def degree(self, name: str) -> int:
        """Undirected degree: the distinct members `name` exchanges with this round."""
        return len(set(self.out_links[name]) | set(self.in_links[name]))


class Schedule:
    def __init__(self, neighbours: Mapping[str, Sequence[str]], graphs: Sequence[RoundGraph] | None = None) -> None:
        self._peers = {name: tuple(sorted(peers)) for name, peers in neighbours.items()}
        self._static = RoundGraph.from_out_links(self._peers, directed=False)
        self._graphs = tuple(graphs or ())

    @classmethod
    def from_plan(cls, neighbours: Mapping[str, Sequence[str]], schedule: Mapping[str, Any] | None) -> Schedule:
        """The schedule of a plan: its neighbour lists and, if present, its per-round graphs
        (checked: indices in range, no self links, every link among the neighbour lists)."""
        if not schedule:
            return cls(neighbours)
        return cls(neighbours, parse_graphs(schedule, neighbours))

    @property
    def members(self) -> tuple[str, ...]:
        return tuple(self._peers)

    @property
    def dynamic(self) -> bool:
        return bool(self._graphs)

    @property
    def period(self) -> int:
        return len(self._graphs) or 1

    def graph(self, round_no: int) -> RoundGraph:
        if not self._graphs:
            return self._static
        return self._graphs[(max(round_no, 1) - 1) % len(self._graphs)]

    def peers(self, name: str) -> tuple[str, ...]:
        """Everyone `name` may talk to in some round (the sockets it opens)."""
        return self._peers[name]

    def send_to(self, name: str, round_no: int) -> tuple[str, ...]:
        return self.graph(round_no).out_links[name]

    def hear_from(self, name: str, round_no: int) -> tuple[str, ...]:
        return self.graph(round_no).in_links[name]

    def exchange_with(self, name: str, round_no: int) -> tuple[str, ...]:
        graph = self.graph(round_no)
        return tuple(sorted(set(graph.out_links[name]) | set(graph.in_links[name])))

    def degree(self, name: str, round_no: int) -> int:
        return self.graph(round_no).degree(name)

    def mixing_weights(self, name: str, round_no: int) -> dict[str, float]:
        """`name`'s row of the round's Metropolis-Hastings matrix (the graph taken as
        undirected), itself included; the weights sum to 1."""
        degree = self.degree(name, round_no)
        row = {peer: metropolis_hastings_weight(degree, self.degree(peer, round_no)) for peer in self.exchange_with(name, round_no)}
        row[name] = 1.0 - sum(row.values())
        return row


def parse_graphs(schedule: Mapping[str, Any], neighbours: Mapping[str, Sequence[str]]) -> list[RoundGraph]:
    where = "plan.schedule"
    if not isinstance(schedule, Mapping) or set(schedule) != {"members", "directed", "graphs"}:
        raise ConfigError(f"{where}: must be a table with exactly members, directed and graphs")
    members, directed, graphs = schedule["members"], schedule["directed"], schedule["graphs"]
    if not isinstance(members, list) or sorted(members) != sorted(neighbours) or len(set(members)) != len(members):
        raise ConfigError(f"{where}.members: must list every member exactly once")
    if type(directed) is not bool:
        raise ConfigError(f"{where}.directed: must be true or false, got {directed!r}")
    if not isinstance(graphs, list) or not graphs:
        raise ConfigError(f"{where}.graphs: must be a non-empty list of per-round graphs")
    allowed = {name: set(peers) for name, peers in neighbours.items()}
    parsed = []
    for r, graph in enumerate(graphs):
        if not isinstance(graph, list) or len(graph) != len(members):
            raise ConfigError(f"{where}.graphs[{r}]: must list the out-links of each of the {len(members)} members")
        out_links: dict[str, list[str]] = {}
        for i, links in enumerate(graph):
            if not isinstance(links, list) or not all(type(j) is int and 0 <= j < len(members) and j != i for j in links):
                raise ConfigError(f"{where}.graphs[{r}][{i}]: must be a list of other members' indices (0 to {len(members) - 1})")
            names = [members[j] for j in links]
            stray = [peer for peer in names if peer not in allowed[members[i]]]
            if stray:
                raise ConfigError(f"{where}.graphs[{r}][{i}]: {members[i]} -> {stray[0]} is not among plan.neighbours")
            out_links[members[i]] = names
        round_graph = RoundGraph.from_out_links(out_links, directed)
        if not directed and any(set(round_graph.out_links[n]) != set(round_graph.in_links[n]) for n in members):
            raise ConfigError(f"{where}.graphs[{r}]: an undirected graph must list every link at both ends")
        parsed.append(round_graph)
    return parsed


def schedule_document(members: Sequence[str], graphs: Sequence[Mapping[str, Sequence[str]]], directed: bool) -> dict[str, Any]:
    """The plan's `schedule` section for per-round out-link maps (name -> names)."""
    index = {name: i for i, name in enumerate(members)}
    return {
        "members": list(members),
        "directed": directed,
        "graphs": [[sorted(index[peer] for peer in graph.get(name, ())) for name in members] for graph in graphs],
    }


def union_of_links(members: Sequence[str], graphs: Sequence[Mapping[str, Sequence[str]]]) -> dict[str, list[str]]:
    """The neighbour lists (symmetric) that cover every round's links."""
    union: dict[str, set[str]] = {name: set() for name in members}
    for graph in graphs:
        for name, peers in graph.items():
            for peer in peers:
                union[name].add(peer)
                union[peer].add(name)
    return {name: sorted(peers) for name, peers in union.items()}
