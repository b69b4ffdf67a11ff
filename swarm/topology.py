"""Federation topologies built with networkx from a [topology] table.

A topology decides who talks to whom; the resolved neighbour lists (and, for a time-varying
topology, the per-round graphs: see swarm.schedule) go into the manifest's training plan, so
every node agrees on the graphs without recomputing them. Node i of a graph is member i.

Every table may set `name`, `seed` (random graphs are a function of it) and
`allow_disconnected` (default false: a disconnected graph, or union of round graphs, is
refused). The other keys each topology allows:

    static           keys             meaning
    ring, line, star, complete        star: member 0 is the hub
    grid, torus      rows, cols       2-D lattice (torus: periodic); default the most square
                                      rows x cols == nodes
    exponential                       i linked with i + 2^k mod n for 2^k < n
    random-regular   degree           a random degree-regular graph (default 3)
    erdos-renyi      p                each link present with probability p
    watts-strogatz   k, p             ring of k nearest neighbours (even, default 4), each
                                      rewired with probability p (default 0.1)
    barabasi-albert  m                preferential attachment, m links per new node (default 2)
    file             path             edge list, GraphML or JSON (see swarm.topology_files)

    time-varying     keys             each round of the period (default: the plan's rounds)
    random-s-out     s, period        every member sends to s distinct random others (default 2)
    dynamic-regular  degree, period   a fresh random degree-regular graph (default 3)
    schedule-file    path             per-round edge lists read from a JSON file
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import networkx as nx
from pydantic import ConfigDict, ValidationInfo, model_validator

from .config import Table, invalid_value, setting
from .errors import ConfigError
from .schedule import schedule_document, union_of_links
from .topology_files import read_graph_file, read_schedule_file

WHERE = "topology"
MAX_PERIOD = 1000  # distinct round graphs; later rounds cycle through them again
# The schedule shares the manifest's 4 MiB limit with the member cards and neighbour lists.
MAX_SCHEDULE_BYTES = 3 * 1024 * 1024

# -- tables ------------------------------------------------------------------------------


class _Named(Table):
    """A [topology] table's name alone (its other keys are its topology's table's to check)."""

    model_config = ConfigDict(extra="ignore")
    TABLE: ClassVar[str] = WHERE

    name: str = "ring"


class TopologyTable(_Named):
    """What every [topology] table may set; each topology's table adds its own keys."""

    model_config = ConfigDict(extra="forbid")
    # Keys whose largest value depends on the number of nodes n: key -> (smallest value,
    # how far below n the largest is, example).
    UP_TO_NODES: ClassVar[dict[str, tuple[int, int, int]]] = {}

    seed: int = setting(0, ge=0, le=2**62)  # random graphs are a function of it
    allow_disconnected: bool = False  # a disconnected graph (or union of round graphs) is refused unless true

    @model_validator(mode="before")
    @classmethod
    def _within_nodes(cls, values: Any, info: ValidationInfo) -> Any:
        n = (info.context or {}).get("nodes")  # the number of nodes, where topology_table knows it
        if n is None or not isinstance(values, Mapping):
            return values
        for key, (low, below, example) in cls.UP_TO_NODES.items():
            value, high = values.get(key), n - below
            if key in values and (isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high):
                raise invalid_value(key, f"an integer from {low} to {high}", value, min(example, high))
        return values


class Grid(TopologyTable):
    UP_TO_NODES = {"rows": (1, 0, 1), "cols": (1, 0, 1)}
    rows: int | None = setting(None, ge=1, example=1)
    cols: int | None = setting(None, ge=1, example=1)


class RandomRegular(TopologyTable):
    degree: int = setting(3, ge=1, le=2**62)


class ErdosRenyi(TopologyTable):
    p: float = setting(ge=0.0, le=1.0, example=0.3)


class WattsStrogatz(TopologyTable):
    UP_TO_NODES = {"k": (2, 1, 2)}
    k: int = setting(4, ge=2)
    p: float = setting(0.1, ge=0.0, le=1.0)


class BarabasiAlbert(TopologyTable):
    UP_TO_NODES = {"m": (1, 1, 2)}
    m: int = setting(2, ge=1)


class GraphFile(TopologyTable):
    path: str = setting(example="graph.txt")


class _Periodic(TopologyTable):
    period: int | None = setting(None, ge=1, le=MAX_PERIOD, example=10)  # None: the plan's rounds (at most MAX_PERIOD)


class RandomSOut(_Periodic):
    UP_TO_NODES = {"s": (1, 1, 2)}
    s: int = setting(2, ge=1)


class DynamicRegular(RandomRegular, _Periodic):
    pass


class ScheduleFile(TopologyTable):
    path: str = setting(example="schedule.json")


StaticBuilder = Callable[[int, Any, int], nx.Graph]
RoundsBuilder = Callable[[int, Any, int, int], list[nx.Graph]]


class Topology(NamedTuple):
    build: StaticBuilder | RoundsBuilder
    table: type[TopologyTable]
    time_varying: bool = False


# -- static ------------------------------------------------------------------------------


def _ring(n: int, params: TopologyTable, seed: int) -> nx.Graph:
    return nx.cycle_graph(n)


def _line(n: int, params: TopologyTable, seed: int) -> nx.Graph:
    return nx.path_graph(n)


def _star(n: int, params: TopologyTable, seed: int) -> nx.Graph:
    return nx.star_graph(n - 1)  # hub 0, leaves 1..n-1


def _complete(n: int, params: TopologyTable, seed: int) -> nx.Graph:
    return nx.complete_graph(n)


def _grid(n: int, params: Grid, seed: int, periodic: bool = False) -> nx.Graph:
    rows, cols = _grid_shape(n, params)
    lattice = nx.grid_2d_graph(rows, cols, periodic=periodic)
    return nx.relabel_nodes(lattice, {(r, c): r * cols + c for r, c in lattice})  # row-major


def _torus(n: int, params: Grid, seed: int) -> nx.Graph:
    return _grid(n, params, seed, periodic=True)


def _most_square(n: int) -> tuple[int, int]:
    rows = max(d for d in range(1, int(n**0.5) + 1) if n % d == 0)
    return rows, n // rows


def _grid_shape(n: int, params: Grid) -> tuple[int, int]:
    """(rows, cols) with rows * cols == n: as given, the missing one derived, or the most square."""
    given = {key: size for key, size in (("rows", params.rows), ("cols", params.cols)) if size is not None}
    if not given:
        return _most_square(n)
    if len(given) == 2:
        rows, cols = given["rows"], given["cols"]
        if rows * cols != n:
            raise ConfigError(f"topology.rows: rows * cols = {rows} * {cols} = {rows * cols}, but there are {n} nodes; "
                              f"make them multiply to {n} (example: rows = {_most_square(n)[0]}, cols = {_most_square(n)[1]})")
        return rows, cols
    (key, size), = given.items()
    if n % size:
        raise ConfigError(f"topology.{key}: {size} does not divide {n} nodes; use a divisor of {n} "
                          f"(example: {key} = {_most_square(n)[0]}) or leave it out")
    return (size, n // size) if key == "rows" else (n // size, size)


def _exponential(n: int, params: TopologyTable, seed: int) -> nx.Graph:
    graph = nx.empty_graph(n)
    for k in range((n - 1).bit_length()):  # every k with 2^k <= n - 1
        graph.add_edges_from((i, (i + 2**k) % n) for i in range(n))
    return graph


def _random_regular(n: int, params: RandomRegular, seed: int) -> nx.Graph:
    degree = _regular_degree(n, params)
    if params.allow_disconnected:
        return nx.random_regular_graph(degree, n, seed=seed)
    # Retry a few seeds: a random regular graph is occasionally disconnected.
    for attempt in range(100):
        graph = nx.random_regular_graph(degree, n, seed=seed + attempt)
        if nx.is_connected(graph):
            return graph
    raise ConfigError(f"topology.degree: no connected {degree}-regular graph found on {n} nodes")


def _regular_degree(n: int, params: RandomRegular) -> int:
    degree = params.degree
    if degree >= n or (degree * n) % 2:
        raise ConfigError(
            f"topology.degree: a {degree}-regular graph on {n} nodes does not exist "
            f"(need degree < nodes and degree*nodes even; example: degree = 4)"
        )
    return degree


def _erdos_renyi(n: int, params: ErdosRenyi, seed: int) -> nx.Graph:
    return nx.gnp_random_graph(n, params.p, seed=seed)


def _watts_strogatz(n: int, params: WattsStrogatz, seed: int) -> nx.Graph:
    k, p = params.k, params.p
    if k % 2:
        raise ConfigError(f"topology.k: must be even (k/2 ring neighbours on each side), got {k} (example: k = {k - 1})")
    if params.allow_disconnected:
        return nx.watts_strogatz_graph(n, k, p, seed=seed)
    try:
        return nx.connected_watts_strogatz_graph(n, k, p, tries=100, seed=seed)
    except nx.NetworkXError:
        raise ConfigError(f"topology.p: no connected Watts-Strogatz graph with k = {k}, p = {p} in 100 tries; lower p or raise k") from None


def _barabasi_albert(n: int, params: BarabasiAlbert, seed: int) -> nx.Graph:
    return nx.barabasi_albert_graph(n, params.m, seed=seed)


def _file(n: int, params: GraphFile, seed: int) -> nx.Graph:
    return read_graph_file(params.path, n)


# -- time-varying ------------------------------------------------------------------------


def _period(params: _Periodic, rounds: int) -> int:
    return params.period if params.period is not None else min(rounds, MAX_PERIOD)


def _random_s_out(n: int, params: RandomSOut, seed: int, rounds: int) -> list[nx.Graph]:
    s = params.s
    rng = random.Random(seed)
    graphs = []
    for _ in range(_period(params, rounds)):
        graph = nx.DiGraph()
        graph.add_nodes_from(range(n))
        for i in range(n):
            # s distinct others: draw from 0..n-2 and skip over i.
            graph.add_edges_from((i, k + (k >= i)) for k in rng.sample(range(n - 1), s))
        graphs.append(graph)
    return graphs


def _dynamic_regular(n: int, params: DynamicRegular, seed: int, rounds: int) -> list[nx.Graph]:
    degree = _regular_degree(n, params)
    rng = random.Random(seed)  # one stream: every round draws a different graph
    return [nx.random_regular_graph(degree, n, seed=rng) for _ in range(_period(params, rounds))]


def _schedule_file(n: int, params: ScheduleFile, seed: int, rounds: int) -> list[nx.Graph]:
    path = params.path
    rounds_edges, directed = read_schedule_file(path, n)
    if len(rounds_edges) > MAX_PERIOD:
        raise ConfigError(f"topology.path: {path} has {len(rounds_edges)} round graphs; at most {MAX_PERIOD} (later rounds cycle through them)")
    graphs = []
    for edges in rounds_edges:
        graph = nx.DiGraph() if directed else nx.Graph()
        graph.add_nodes_from(range(n))
        graph.add_edges_from(edges)
        graphs.append(graph)
    return graphs


TOPOLOGIES: dict[str, Topology] = {
    "ring": Topology(_ring, TopologyTable),
    "line": Topology(_line, TopologyTable),
    "star": Topology(_star, TopologyTable),
    "complete": Topology(_complete, TopologyTable),
    "grid": Topology(_grid, Grid),
    "torus": Topology(_torus, Grid),
    "exponential": Topology(_exponential, TopologyTable),
    "random-regular": Topology(_random_regular, RandomRegular),
    "erdos-renyi": Topology(_erdos_renyi, ErdosRenyi),
    "watts-strogatz": Topology(_watts_strogatz, WattsStrogatz),
    "barabasi-albert": Topology(_barabasi_albert, BarabasiAlbert),
    "file": Topology(_file, GraphFile),
    "random-s-out": Topology(_random_s_out, RandomSOut, time_varying=True),
    "dynamic-regular": Topology(_dynamic_regular, DynamicRegular, time_varying=True),
    "schedule-file": Topology(_schedule_file, ScheduleFile, time_varying=True),
}


# -- resolution --------------------------------------------------------------------------


def is_time_varying(name: str) -> bool:
    return _known(name).time_varying


def topology_name(table: Mapping[str, Any]) -> str:
    """The `name` of a [topology] table (default "ring"), checked to be a string; not yet
    checked to be a topology ("explicit" is the plan's own, nodes.plan)."""
    return _Named.from_dict(table, WHERE).name


def topology_table(table: Mapping[str, Any] | TopologyTable, n: int) -> TopologyTable:
    """A [topology] table checked as its topology's Table, for a graph on `n` nodes (some
    bounds depend on it: k <= n - 1, ...)."""
    if isinstance(table, TopologyTable):
        return table
    topology = _known(topology_name(table))
    return topology.table.from_dict(table, WHERE, context={"nodes": n})


def topology_graphs(table: Mapping[str, Any] | TopologyTable, n: int, rounds: int = 1) -> list[nx.Graph]:
    """The graphs of a [topology] table on nodes 0..n-1: one for a static topology, one per
    round of the period for a time-varying one (nx.DiGraph where links are one-way).
    ConfigError for unknown names or keys, bad parameters or a disconnected (union) graph."""
    params = topology_table(table, n)
    if is_time_varying(params.name):
        return build_round_graphs(params.name, n, params, params.seed, rounds)
    return [build_topology(params.name, n, params, params.seed)]


def build_topology(name: str, n: int, params: Mapping[str, Any] | TopologyTable | None = None, seed: int = 0) -> nx.Graph:
    """The static graph `name` on nodes 0..n-1 (`params`: its table's keys, without the
    name); ConfigError for impossible parameters."""
    topology = _checked(name, n, time_varying=False)
    checked = _params(name, n, params)
    graph = topology.build(n, checked, seed)
    _check_connected(f"the {name} graph", graph, checked.allow_disconnected)
    return graph


def build_round_graphs(name: str, n: int, params: Mapping[str, Any] | TopologyTable | None = None, seed: int = 0, rounds: int = 1) -> list[nx.Graph]:
    """One graph per round of the time-varying topology `name`; their union must be connected."""
    topology = _checked(name, n, time_varying=True)
    checked = _params(name, n, params)
    graphs = topology.build(n, checked, seed, rounds)
    _check_connected(f"the union of the {len(graphs)} {name} round graphs", union_graph(graphs), checked.allow_disconnected)
    return graphs


def _params(name: str, n: int, params: Mapping[str, Any] | TopologyTable | None) -> TopologyTable:
    if isinstance(params, TopologyTable):
        return params
    return topology_table({**(params or {}), "name": name}, n)


def resolve_topology(
    table: Mapping[str, Any], member_names: Sequence[str], rounds: int
) -> tuple[dict[str, list[str]], dict[str, Any] | None]:
    """(neighbour lists, schedule document or None) of a [topology] table for the plan: the
    neighbour lists are the union of every round's links (swarm.schedule)."""
    names = list(member_names)
    params = topology_table(table, len(names))
    graphs = topology_graphs(params, len(names), rounds)
    name = params.name
    if is_time_varying(name):
        links = [out_links(graph, names) for graph in graphs]
        neighbours = union_of_links(names, links)
        schedule: dict[str, Any] | None = schedule_document(names, links, directed=graphs[0].is_directed())
        _check_schedule_size(schedule, len(graphs), len(names), "period" in type(params).model_fields)
    else:
        neighbours, schedule = neighbour_lists(graphs[0], names), None
    for member, peers in neighbours.items():
        if not peers:  # even with allow_disconnected: a node must have someone to talk to
            raise ConfigError(f"topology: {member} has no links in the {name} graph; change its parameters or seed so every member has a neighbour")
    return neighbours, schedule


def union_graph(graphs: Sequence[nx.Graph]) -> nx.Graph:
    """Every link of any round, undirected."""
    union = nx.Graph()
    for graph in graphs:
        union.add_nodes_from(graph)
        union.add_edges_from(graph.edges)
    return union


def out_links(graph: nx.Graph, names: Sequence[str]) -> dict[str, list[str]]:
    """Member name -> the names it sends to (both ends of every link if undirected)."""
    return {names[i]: [names[j] for j in graph.neighbors(i)] for i in range(len(names))}


def neighbour_lists(graph: nx.Graph, names: list[str]) -> dict[str, list[str]]:
    """Map each member name to its sorted neighbour names (node i of the graph is names[i])."""
    return {names[i]: sorted(names[j] for j in graph.neighbors(i)) for i in range(len(names))}


def check_neighbour_lists(neighbours: Mapping[str, list[str]], allow_disconnected: bool = False) -> None:
    """Refuse an explicit neighbour list that is asymmetric, self-looped or (unless allowed)
    disconnected."""
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
    if len(graph) > 1 and not allow_disconnected and not nx.is_connected(graph):
        raise ConfigError("plan.neighbours: the neighbour graph is disconnected; link the parts or set topology.allow_disconnected = true")


def _known(name: str) -> Topology:
    if name not in TOPOLOGIES:
        raise ConfigError(f"topology.name: unknown topology {name!r}; choose one of: {', '.join(TOPOLOGIES)}")
    return TOPOLOGIES[name]


def _checked(name: str, n: int, time_varying: bool) -> Topology:
    topology = _known(name)
    if topology.time_varying != time_varying:
        raise ConfigError(f"topology.name: {name!r} is {'static' if time_varying else 'time-varying'}; resolve it with resolve_topology")
    if n < 2:
        raise ConfigError(f"topology: a federation needs at least 2 nodes, got {n}")
    return topology


def _check_connected(what: str, graph: nx.Graph, allowed: bool) -> None:
    if allowed or nx.is_connected(graph):
        return
    components = nx.number_connected_components(graph)
    raise ConfigError(f"topology: {what} on {len(graph)} nodes is disconnected ({components} components); "
                      "set allow_disconnected = true to run it anyway")


def _check_schedule_size(schedule: Mapping[str, Any], period: int, n: int, has_period: bool) -> None:
    size = _manifest_bytes(schedule)
    if size > MAX_SCHEDULE_BYTES:
        fits = max(1, int(0.95 * period * MAX_SCHEDULE_BYTES / size))  # 5% margin: rounds differ in size
        fix = f"lower it (example: period = {fits})" if has_period else f"keep at most {fits} round graphs in the file"
        raise ConfigError(f"topology.{'period' if has_period else 'path'}: {period} round graphs on {n} members take "
                          f"{size / 2**20:.1f} MiB in the manifest (limit {MAX_SCHEDULE_BYTES / 2**20:g} MiB); {fix}")


def _manifest_bytes(schedule: Mapping[str, Any]) -> int:
    """The schedule's size as the manifest writes it (json indent=2, at the depth of
    plan.schedule): compact JSON plus the newline and indentation before each element and
    each non-empty list's closing bracket (computed, since indented encoding is slow)."""
    graphs = schedule["graphs"]
    member_lists = [links for graph in graphs for links in graph]
    indices = sum(len(links) for links in member_lists)
    nonempty = sum(1 for links in member_lists if links)
    layout = 13 * indices + 11 * (len(member_lists) + nonempty) + 18 * len(graphs)
    return len(json.dumps(schedule, separators=(",", ":"))) + layout + 80 + 9 * len(schedule["members"])
