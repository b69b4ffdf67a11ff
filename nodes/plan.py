"""Building and checking the training plan that goes into a federation manifest.

Everything a node will need from the plan is validated here, at creation time, so a typo
fails on the coordinator's desk instead of deep inside six node processes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gossip import PROTOCOLS
from swarm.config import check_keys, get_int, get_str
from swarm.errors import ConfigError
from swarm.manifest import Plan
from swarm.topology import build_topology, check_neighbour_lists, neighbour_lists

from .learner import Task
from .models import build_model

EXPLICIT = "explicit"  # topology name for neighbour lists written out in the plan
MAX_ROUNDS = 1000  # a model reply carries at most 1024 log entries; see nodes.node


def protocol_params(protocol: Mapping[str, Any], where: str = "plan.protocol") -> tuple[type, Any]:
    """(protocol class, validated parameters) for the plan's [protocol] table."""
    values = dict(protocol)
    name = values.pop("name", "braintorrent")
    if name not in PROTOCOLS:
        raise ConfigError(f"{where}.name: unknown protocol {name!r}; choose one of: {', '.join(sorted(PROTOCOLS))}")
    cls, params_cls = PROTOCOLS[name]
    return cls, params_cls.from_dict(values, where)


def build_plan(
    member_names: list[str],
    rounds: int,
    topology: Mapping[str, Any],
    protocol: Mapping[str, Any],
    model: Mapping[str, Any],
    training: Mapping[str, Any],
    task: Mapping[str, Any],
    neighbours: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A plan document (JSON-ready) with the topology resolved into neighbour lists, or with
    the explicit `neighbours` lists when the topology is named "explicit"."""
    get_int({"rounds": rounds}, "rounds", "plan", minimum=1, maximum=MAX_ROUNDS)
    topology = dict(topology)
    check_keys(topology, {"name", "degree", "seed"}, "topology")
    name = get_str(topology, "name", "topology", default="ring")
    if name == EXPLICIT:
        resolved = _explicit_neighbours(neighbours, member_names)
    elif neighbours:
        raise ConfigError(f'neighbours: given, but topology.name is {name!r}; set name = "{EXPLICIT}" to use your own lists')
    else:
        seed = get_int(topology, "seed", "topology", default=0)
        resolved = neighbour_lists(build_topology(name, len(member_names), topology, seed), member_names)
    plan = {
        "rounds": rounds,
        "topology": topology | {"name": name},
        "neighbours": resolved,
        "protocol": dict(protocol) | {"name": dict(protocol).get("name", "braintorrent")},
        "model": dict(model),
        "training": dict(training),
        "task": dict(task),
    }
    check_plan_sections(plan["protocol"], plan["model"], plan["training"], plan["task"])
    return plan


def _explicit_neighbours(neighbours: Mapping[str, Any] | None, member_names: list[str]) -> dict[str, list[str]]:
    if not neighbours or set(neighbours) != set(member_names):
        raise ConfigError(f'neighbours: with topology.name = "{EXPLICIT}", list every member\'s neighbours, e.g. {member_names[0]} = ["{member_names[-1]}"]')
    for member, peers in neighbours.items():
        if not isinstance(peers, list) or not peers or not all(isinstance(p, str) for p in peers):
            raise ConfigError(f"neighbours.{member}: must be a non-empty list of member names, got {peers!r}")
    resolved = {member: sorted(peers) for member, peers in neighbours.items()}
    check_neighbour_lists(resolved)
    return resolved


def check_plan_sections(protocol: Mapping, model: Mapping, training: Mapping, task: Mapping) -> Task:
    protocol_params(protocol)
    check_keys(task, {"num_features", "num_classes"}, "plan.task")
    for key in ("num_features", "num_classes"):
        get_int(task, key, "plan.task", minimum=1 if key == "num_features" else 2)
    parsed = Task.from_plan(model, training)
    model = build_model(parsed.model_name, parsed.model_params, task["num_features"], task["num_classes"], parsed.init_seed)
    parsed.sharing.local_names(model)
    return parsed


def check_plan(plan: Plan) -> Task:
    """Re-validate a plan read from a manifest (it may have been written by hand)."""
    get_int({"rounds": plan.rounds}, "rounds", "plan", minimum=1, maximum=MAX_ROUNDS)
    return check_plan_sections(plan.protocol, plan.model, plan.training, plan.task)
