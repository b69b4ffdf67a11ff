"""`swarm-scenario attack-study`: attack x defence x Byzantine share, every cell a real federation.

    [study]
    scenario = "byzantine-base"      # a path relative to this file, or a name in scenarios/
    attacks = ["sign_flip", {kind = "alie", z = 1.5}]   # scenarios.attacks kinds (or tables)
    defences = ["mean", "median", {rule = "krum", f = 1}]  # swarm.merge rules (or tables)
    shares = [0.1, 0.2, 0.3]         # fraction of Byzantine sites
    seeds = [0]                      # data, topology and placement seed of each repeat
    placement = "random"             # or "spread" (see scenarios.attackers)
    rounds = 12                      # optional override of [plan] rounds
    timeout = 300                    # optional override of [scenario] timeout

Besides the attack cells, every defence runs once per seed without an attack: the honest
baseline each attacked cell is compared with. A defence that the scenario's topology
cannot support (Krum's n >= 2f+3 in some neighbourhood) is refused before anything runs.
Resumable like a sweep (same OUT layout: cells/, sweep.json); results in
scenarios.attack_report."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import model_validator

from swarm.config import Table, invalid_value, read_toml, refuse, setting
from swarm.errors import ConfigError

from .config import ROUNDS, TIMEOUT, ScenarioConfig, Section, Sections
from .sweep import Entry, _scenario_path, label

NO_ATTACK = "none"


@dataclass(frozen=True)
class StudyCell:
    attack: str  # as shown, e.g. "alie z=1.0" or "none"
    defence: str  # as shown, e.g. "krum f=1"
    share: float  # 0 for the no-attack baseline
    seed: int
    config: ScenarioConfig

    @property
    def id(self) -> str:
        # "_" separates the parts of an id, so the names' own underscores become "-".
        parts = [label(name.replace("_", "-").replace(" ", "-").replace("=", "")) for name in (self.attack, self.defence)]
        return f"{parts[0]}_{parts[1]}_p{round(100 * self.share):02d}_s{self.seed}"

    def describe(self) -> str:
        attack = "no attack" if self.attack == NO_ATTACK else f"{self.attack} at {100 * self.share:.0f}%"
        return f"{attack}, defence {self.defence}, seed {self.seed}"

    def fingerprint(self) -> str:
        config = self.config
        settings = json.dumps({
            "scenario": config.source, "topology": config.topology, "protocol": config.protocol, "nodes": config.nodes,
            "data": config.data, "training": config.training, "model": config.model, "rounds": config.rounds,
            "timeout": config.timeout, "merge": config.merge, "attack": config.attack,
        }, sort_keys=True, default=str)
        return hashlib.sha256(settings.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Study:
    path: Path
    source: str
    cells: tuple[StudyCell, ...]


class StudyFile(Sections):
    study: Section = {}


class StudyTable(Table):
    """The [study] table: the scenario and the grid."""

    TABLE: ClassVar[str] = "study"
    scenario: str = setting(example="byzantine-base")  # a path relative to the study file, or a name in scenarios/
    attacks: list[Entry]  # scenarios.attacks kinds, or tables with a kind and its parameters
    defences: list[Entry]  # swarm.merge rules, or tables with a rule and its parameters
    shares: list[float] = [0.1, 0.2, 0.3]  # fraction of Byzantine sites
    seeds: list[int] = [0]  # data, topology and placement seed of each repeat
    placement: Literal["random", "spread"] = "random"
    rounds: int | None = setting(None, **ROUNDS, example=12)  # None: the scenario's
    timeout: float | None = setting(None, **TIMEOUT, example=300.0)  # None: the scenario's

    @model_validator(mode="before")
    @classmethod
    def _grid(cls, values: Any) -> Any:
        # The axes' messages give TOML examples, which their types cannot say.
        if not isinstance(values, dict):
            return values
        _names_or_tables(values, "attacks", "kind", "alie")
        _names_or_tables(values, "defences", "rule", "median")
        shares = values.get("shares", [0.1, 0.2, 0.3])
        if not isinstance(shares, list) or not shares or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and 0 < s < 1 for s in shares):
            raise invalid_value("shares", "a non-empty list of fractions between 0 and 1", shares, [0.1, 0.2, 0.3])
        seeds = values.get("seeds", [0])
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
            raise invalid_value("seeds", "a non-empty list of integers >= 0", seeds, [0])
        return values


def _names_or_tables(study: dict[str, Any], key: str, name_key: str, example: str) -> None:
    values = study.get(key)
    if not isinstance(values, list) or not values:
        raise refuse(key, f'must be a non-empty list of names or tables (example: {key} = ["{example}"])')
    for index, value in enumerate(values):
        if not isinstance(value, str) and not (isinstance(value, dict) and isinstance(value.get(name_key), str)):
            raise refuse(f"{key}[{index}]", f'must be a name or a table with {name_key} (example: {{{name_key} = "{example}"}})')


def _tables(entries: list[Entry], name_key: str) -> list[dict[str, Any]]:
    """Each entry as a table: a name alone becomes {name_key = name}."""
    return [{name_key: entry} if isinstance(entry, str) else dict(entry) for entry in entries]


def _shown(entry: dict[str, Any], name_key: str) -> str:
    """e.g. "krum f=1": the name, then its parameters (sorted)."""
    params = " ".join(f"{key}={entry[key]}" for key in sorted(entry) if key != name_key)
    return entry[name_key] + (f" {params}" if params else "")


def load_study(path: Path) -> Study:
    """Read and validate a study file and every cell's scenario before anything runs."""
    path = Path(path)
    study = StudyTable.from_dict(StudyFile.from_dict(read_toml(path, "study"), str(path)).study, "study")
    base = ScenarioConfig.load(_scenario_path(path, study.scenario)).replace(local_only=False, pooled=False)
    if study.timeout is not None:
        base = base.replace(timeout=study.timeout)
    attacks = _tables(study.attacks, "kind")
    defences = _tables(study.defences, "rule")
    cells = []
    for seed in study.seeds:
        for defence in defences:
            cells.append(_cell(base, None, defence, 0.0, seed, study.rounds, study.placement))
            for attack in attacks:
                for share in study.shares:
                    cells.append(_cell(base, attack, defence, share, seed, study.rounds, study.placement))
    ids = [cell.id for cell in cells]
    if len(set(ids)) != len(ids):
        raise ConfigError("study: a cell appears twice; list each attack, defence, share and seed once")
    return Study(path, path.read_text(), tuple(cells))


def _cell(base: ScenarioConfig, attack: dict[str, Any] | None, defence: dict[str, Any], share: float, seed: int, rounds: int | None, placement: str) -> StudyCell:
    attack_label = NO_ATTACK if attack is None else _shown(attack, "kind")
    cell = StudyCell(attack_label, _shown(defence, "rule"), share, seed, base)
    attack_table = {} if attack is None else attack | {"share": share, "placement": placement} | ({"seed": seed} if placement == "random" else {})
    try:
        config = base.with_overrides(rounds=rounds, seed=seed, name=cell.id).replace(merge=defence, attack=attack_table)
        config.check()  # refuses a rule the topology cannot support, and bad attack tables
    except ConfigError as error:
        raise ConfigError(f"study cell {cell.id}: {error}") from None
    return replace(cell, config=config)
