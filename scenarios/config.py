"""A scenario file: a whole federation (plan + how many hospitals + their data) in one TOML."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import ValidationInfo, field_validator

from nodes.sources import DataSource, data_source
from nodes.plan import MAX_ROUNDS, build_plan, with_weights_digest
from swarm.config import Table, invalid_value, read_toml, refuse, setting
from swarm.errors import ConfigError, ManifestError
from swarm.manifest import check_reachability

from .attackers import pick_attackers

MAX_NODES = 1024
BACKENDS = ("local", "ray")
# Bounds shared by every table that sets these (scenario, sweep, study, command-line overrides);
# given to setting() rather than as an Annotated alias, which would hide them from the messages
# of an optional field.
NODES: dict[str, Any] = {"ge": 2, "le": MAX_NODES}
ROUNDS: dict[str, Any] = {"ge": 1, "le": MAX_ROUNDS}  # the plan's own bound (nodes.plan)
TIMEOUT: dict[str, Any] = {"ge": 1.0}
SEED: dict[str, Any] = {"ge": 0, "le": 2**62}

Section = dict[str, Any]  # a table kept as written, for the module that reads it to check


class Sections(Table):
    """A TOML file of tables. Each is only checked to be a table here and then by its own Table
    under its own name (`scenario.nodes`, not `<file>.scenario.nodes`), as a reader of the file
    names it."""

    @field_validator("*", mode="before")
    @classmethod
    def _a_table(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, dict):
            raise refuse("", f"must be a table like [{info.field_name}], got {value!r}")
        return value


class ScenarioFile(Sections):
    scenario: Section = {}
    plan: Section = {}
    topology: Section = {}
    protocol: Section = {}
    model: Section = {}
    training: Section = {}
    merge: Section = {}
    attack: Section = {}
    data: Section = {}
    baselines: Section = {}
    compare: Section = {}


class ScenarioTable(Table):
    """The file's [scenario] table: the hospitals and where they run."""

    TABLE: ClassVar[str] = "scenario"
    name: str | None = setting(None, example="quickstart")  # None: the file's name
    nodes: int = setting(6, **NODES)
    host: str = "127.0.0.1"
    timeout: float = setting(170.0, **TIMEOUT)  # seconds the federation may run before the runner stops it
    nodes_per_worker: int | None = setting(None, ge=1, le=MAX_NODES, example=8)  # None: chosen from the node and core counts
    backend: Literal[BACKENDS] = "local"  # where worker processes run: this machine, or a Ray cluster
    outbound_only: tuple[int, ...] = ()  # indices of the sites that bind nothing and only dial out

    @field_validator("outbound_only", mode="before")
    @classmethod
    def _site_indices(cls, indices: Any, info: ValidationInfo) -> Any:
        nodes = info.data.get("nodes")
        if nodes is None:  # refused itself
            return indices
        if not isinstance(indices, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < nodes for i in indices):
            raise invalid_value("", f"a list of site indices from 0 to {nodes - 1}", indices, [2])
        return tuple(sorted(set(indices)))


class PlanTable(Table):
    """The file's [plan] table (the rest of the plan is in its own tables)."""

    TABLE: ClassVar[str] = "plan"
    rounds: int = setting(20, **ROUNDS)


class Baselines(Table):
    """The file's [baselines] table: which baselines a run computes besides the federation."""

    TABLE: ClassVar[str] = "baselines"
    local_only: bool = True
    pooled: bool = True


class ScenarioConfig(ScenarioTable, PlanTable, Baselines):
    """A whole scenario: the [scenario], [plan] and [baselines] settings, and the plan's and the
    data's tables as written (checked by `check`, which builds the plan)."""

    TABLE: ClassVar[str] = "scenario"
    name: str
    topology: Section
    protocol: Section
    model: Section
    training: Section
    data: Section
    source: str = setting(min_length=0)  # the TOML text, saved beside the results
    compare: Section  # settings of `swarm-scenario compare`, checked by scenarios.compare
    merge: Section = {}  # the plan's merge rule (swarm.merge)
    attack: Section = {}  # which sites are Byzantine (scenarios.attackers)
    insecure: bool = False  # workers run without CurveZMQ (debugging only)

    @classmethod
    def load(cls, path: Path, data_path: str | Path | None = None) -> ScenarioConfig:
        """Read and check a scenario file; `data_path` replaces its `[data] path` (a data
        file on this disk, such as a MedMNIST .npz) before anything is checked."""
        tables = ScenarioFile.from_dict(read_toml(path, "scenario"), str(path))
        scenario = ScenarioTable.from_dict(tables.scenario, "scenario")
        plan = PlanTable.from_dict(tables.plan, "plan")
        baselines = Baselines.from_dict(tables.baselines, "baselines")
        data = dict(tables.data)
        if "site" in data or "sites" in data:
            raise ConfigError("data.sites/data.site: set by the runner from scenario.nodes; remove them from the scenario")
        if data_path is not None:
            data["path"] = str(data_path)
        for key in ("path", "root"):  # node processes may start elsewhere
            if isinstance(data.get(key), str) and data[key]:
                data[key] = str(Path(data[key]).expanduser().resolve())
        model = dict(tables.model)
        if isinstance(model.get("init_weights"), str):  # relative to the scenario file; its digest for every use
            model["init_weights"] = str((Path(path).parent / Path(model["init_weights"]).expanduser()).resolve())
            model = with_weights_digest(model, None)
        config = cls(
            **scenario.fields() | {"name": scenario.name or Path(path).stem},
            **plan.fields(),
            **baselines.fields(),
            topology=tables.topology,
            protocol=tables.protocol,
            model=model,
            training=tables.training,
            data=data,
            source=Path(path).read_text(),
            compare=tables.compare,
            merge=tables.merge,
            attack=tables.attack,
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
            changes["nodes"] = _Overrides.from_dict({"nodes": nodes}, "--nodes").nodes
        if rounds is not None:
            changes["rounds"] = _Overrides.from_dict({"rounds": rounds}, "--rounds").rounds
        if topology is not None:
            changes["topology"] = _named_table(self.topology, topology, "ring")
        if protocol is not None:
            changes["protocol"] = _named_table(self.protocol, protocol, "braintorrent")
        if seed is not None:
            seed = _Overrides.from_dict({"seed": seed}, "--seed").seed
            changes["data"] = self.data | {"seed": seed}
            changes["topology"] = changes.get("topology", self.topology) | {"seed": seed}
        if name is not None:
            changes["name"] = name
        config = self.replace(**changes)
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


class _Overrides(Table):
    """The arguments of `with_overrides` that are checked, each under its command-line option."""

    nodes: int | None = setting(None, **NODES, example=2)
    rounds: int | None = setting(None, **ROUNDS, example=1)
    seed: int | None = setting(None, **SEED, example=1)


def _named_table(current: dict[str, Any], new: str | dict[str, Any], default_name: str) -> dict[str, Any]:
    if isinstance(new, dict):
        return dict(new)
    return dict(current) if current.get("name", default_name) == new else {"name": new}
