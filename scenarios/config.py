"""A scenario file: a whole federation (plan + how many hospitals + their data) in one TOML."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodes.sources import DataSource, data_source
from nodes.plan import build_plan
from swarm.config import check_keys, get_bool, get_float, get_int, get_str, read_toml, table
from swarm.errors import ConfigError

SECTIONS = {"scenario", "plan", "topology", "protocol", "model", "training", "data", "baselines", "compare"}


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

    @classmethod
    def load(cls, path: Path) -> ScenarioConfig:
        values = read_toml(path, "scenario")
        where = str(path)
        check_keys(values, SECTIONS, where)
        scenario = table(values, "scenario", where)
        check_keys(scenario, {"name", "nodes", "host", "timeout"}, "scenario")
        plan = table(values, "plan", where)
        check_keys(plan, {"rounds"}, "plan")
        baselines = table(values, "baselines", where)
        check_keys(baselines, {"local_only", "pooled"}, "baselines")
        nodes = get_int(scenario, "nodes", "scenario", default=6, minimum=2, maximum=64)
        data = table(values, "data", where)
        if "site" in data or "sites" in data:
            raise ConfigError("data.sites/data.site: set by the runner from scenario.nodes; remove them from the scenario")
        config = cls(
            name=get_str(scenario, "name", "scenario", default=Path(path).stem),
            nodes=nodes,
            host=get_str(scenario, "host", "scenario", default="127.0.0.1"),
            timeout=get_float(scenario, "timeout", "scenario", default=170.0, minimum=1.0),
            rounds=get_int(plan, "rounds", "plan", default=20, minimum=1, maximum=1000),
            topology=table(values, "topology", where),
            protocol=table(values, "protocol", where),
            model=table(values, "model", where),
            training=table(values, "training", where),
            data=data,
            local_only=get_bool(baselines, "local_only", "baselines", default=True),
            pooled=get_bool(baselines, "pooled", "baselines", default=True),
            source=Path(path).read_text(),
            compare=table(values, "compare", where),
        )
        config.plan_for([f"site-{i}" for i in range(nodes)])  # fail now, not in six processes
        return config

    def plan_for(self, names: list[str]) -> dict[str, Any]:
        """The manifest's plan for members `names`; validates every section."""
        task = self.data_source().task_shape().plan_table()
        return build_plan(names, self.rounds, self.topology, self.protocol, self.model, self.training, task)

    def data_table(self, site: int | None = None) -> dict[str, Any]:
        """The [data] table of one site (or of the whole federation when `site` is None)."""
        return self.data | {"sites": self.nodes} | ({} if site is None else {"site": site})

    def data_source(self) -> DataSource:
        return data_source(self.data_table())
