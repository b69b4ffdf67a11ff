"""A scenario file: a whole federation (plan + how many hospitals + their data) in one TOML."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nodes.sources import DataSource, data_source
from nodes.plan import build_plan, with_weights_digest
from swarm.config import check_keys, get_bool, get_float, get_int, get_optional_int, get_str, read_toml, table
from swarm.errors import ConfigError, ManifestError
from swarm.manifest import check_reachability

from .attackers import pick_attackers

SECTIONS = {"scenario", "plan", "topology", "protocol", "model", "training", "merge", "attack", "data", "baselines", "compare"}
MAX_NODES = 1024
BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class ScenarioConfig:
    name: str
    nodes: int
    host: str
    timeout: float  # seconds the federation may run before the runner stops it
    rounds: int
    topology: dict[str, Any]
    protocol: dict[str, Any]
    model: dict[str, Any]
    training: dict[str, Any]
    data: dict[str, Any]
    local_only: bool
    pooled: bool
    source: str  # the TOML text, saved beside the results
    compare: dict[str, Any]  # settings of `swarm-scenario compare`, checked by scenarios.compare
    nodes_per_worker: int | None = None  # None: chosen from the node and core counts
    backend: str = "local"  # where worker processes run: this machine, or a Ray cluster
    merge: dict[str, Any] = field(default_factory=dict)  # the plan's merge rule (swarm.merge)
    attack: dict[str, Any] = field(default_factory=dict)  # which sites are Byzantine (scenarios.attackers)
    insecure: bool = False  # workers run without CurveZMQ (debugging only)
    outbound_only: tuple[int, ...] = ()  # indices of the sites that bind nothing and only dial out

    @classmethod
    def load(cls, path: Path, data_path: str | Path | None = None) -> ScenarioConfig:
        """Read and check a scenario file; `data_path` replaces its `[data] path` (a data
        file on this disk, such as a MedMNIST .npz) before anything is checked."""
        values = read_toml(path, "scenario")
        where = str(path)
        check_keys(values, SECTIONS, where)
        scenario = table(values, "scenario", where)
        check_keys(scenario, {"name", "nodes", "host", "timeout", "nodes_per_worker", "backend", "outbound_only"}, "scenario")
        plan = table(values, "plan", where)
        check_keys(plan, {"rounds"}, "plan")
        baselines = table(values, "baselines", where)
        check_keys(baselines, {"local_only", "pooled"}, "baselines")
        nodes = get_int(scenario, "nodes", "scenario", default=6, minimum=2, maximum=MAX_NODES)
        data = table(values, "data", where)
        if "site" in data or "sites" in data:
            raise ConfigError("data.sites/data.site: set by the runner from scenario.nodes; remove them from the scenario")
        if data_path is not None:
            data["path"] = str(data_path)
        for key in ("path", "root"):  # node processes may start elsewhere
            if isinstance(data.get(key), str) and data[key]:
                data[key] = str(Path(data[key]).expanduser().resolve())
        model = table(values, "model", where)
        if isinstance(model.get("init_weights"), str):  # relative to the scenario file; its digest for every use
            model["init_weights"] = str((Path(path).parent / Path(model["init_weights"]).expanduser()).resolve())
            model = with_weights_digest(model, None)
        config = cls(
            name=get_str(scenario, "name", "scenario", default=Path(path).stem),
            nodes=nodes,
            host=get_str(scenario, "host", "scenario", default="127.0.0.1"),
            timeout=get_float(scenario, "timeout", "scenario", default=170.0, minimum=1.0),
            rounds=get_int(plan, "rounds", "plan", default=20, minimum=1, maximum=1000),
            topology=table(values, "topology", where),
            protocol=table(values, "protocol", where),
            model=model,
            training=table(values, "training", where),
            data=data,
            local_only=get_bool(baselines, "local_only", "baselines", default=True),
            pooled=get_bool(baselines, "pooled", "baselines", default=True),
            source=Path(path).read_text(),
            compare=table(values, "compare", where),
            nodes_per_worker=get_optional_int(scenario, "nodes_per_worker", "scenario", minimum=1, maximum=MAX_NODES, example=8),
            backend=get_str(scenario, "backend", "scenario", default="local", choices=BACKENDS),
            merge=table(values, "merge", where),
            attack=table(values, "attack", where),
            outbound_only=_site_indices(scenario, "outbound_only", nodes),
        )
        config.check()
        return config

    def check(self) -> None:
        """Validate the plan (and the attackers) for this many members: fail now, not in a
        hundred processes."""
        names = [f"site-{i}" for i in range(self.nodes)]
        plan = self.plan_for(names)
        self.attackers(names, plan["neighbours"])
        try:
            check_reachability({names[i] for i in self.outbound_only}, plan["neighbours"])
        except ManifestError as exc:  # said of the sites by index, as outbound_only lists them
            raise ConfigError("scenario.outbound_only: " + str(exc).split(": ", 1)[1].replace("site-", "site ")) from None

    def attackers(self, names: list[str], neighbours: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
        """site name -> its site.toml [attack] table, for the Byzantine sites of this scenario."""
        return pick_attackers(self.attack, names, neighbours)

    def with_overrides(
        self,
        *,
        nodes: int | None = None,
        topology: str | dict[str, Any] | None = None,
        protocol: str | dict[str, Any] | None = None,
        rounds: int | None = None,
        seed: int | None = None,
        name: str | None = None,
    ) -> ScenarioConfig:
        """This scenario with some settings replaced (command-line overrides, sweep cells),
        validated like a loaded file. A topology or protocol given by name alone keeps the
        file's parameters when the name is unchanged and drops them otherwise; `seed`
        sets the data and topology seeds together."""
        changes: dict[str, Any] = {}
        if nodes is not None:
            changes["nodes"] = get_int({"nodes": nodes}, "nodes", "--nodes", minimum=2, maximum=MAX_NODES)
        if rounds is not None:
            changes["rounds"] = get_int({"rounds": rounds}, "rounds", "--rounds", minimum=1, maximum=1000)
        if topology is not None:
            changes["topology"] = _named_table(self.topology, topology, "ring")
        if protocol is not None:
            changes["protocol"] = _named_table(self.protocol, protocol, "braintorrent")
        if seed is not None:
            seed = get_int({"seed": seed}, "seed", "--seed", minimum=0)
            changes["data"] = self.data | {"seed": seed}
            changes["topology"] = changes.get("topology", self.topology) | {"seed": seed}
        if name is not None:
            changes["name"] = name
        config = replace(self, **changes)
        config.check()
        return config

    def plan_for(self, names: list[str]) -> dict[str, Any]:
        """The manifest's plan for members `names`; validates every section."""
        task = self.data_source().task_shape().plan_table()
        return build_plan(names, self.rounds, self.topology, self.protocol, self.model, self.training, task, merge=self.merge)

    def data_table(self, site: int | None = None) -> dict[str, Any]:
        """The [data] table of one site (or of the whole federation when `site` is None)."""
        return self.data | {"sites": self.nodes} | ({} if site is None else {"site": site})

    def data_source(self) -> DataSource:
        return data_source(self.data_table())

    def check_data(self) -> None:
        """Load the first site's data now, so that a data file without a split or a partition
        that leaves a site nothing to train on fails before any process starts."""
        self.data_source().load_site(0)


def _named_table(current: dict[str, Any], new: str | dict[str, Any], default_name: str) -> dict[str, Any]:
    if isinstance(new, dict):
        return dict(new)
    return dict(current) if current.get("name", default_name) == new else {"name": new}


def _site_indices(values: dict[str, Any], key: str, nodes: int) -> tuple[int, ...]:
    indices = values.get(key, [])
    if not isinstance(indices, list) or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < nodes for i in indices):
        raise ConfigError(f"scenario.{key}: must be a list of site indices from 0 to {nodes - 1}, got {indices!r} (example: {key} = [2])")
    return tuple(sorted(set(indices)))
