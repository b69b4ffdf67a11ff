"""Building and checking the training plan that goes into a federation manifest.

Everything a node will need from the plan is validated here, at creation time, so a typo
fails on the coordinator's desk instead of deep inside six node processes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import model_validator

from gossip import PROTOCOLS
from swarm.config import Table, invalid_value, refuse, setting
from swarm.errors import ConfigError
from swarm.manifest import Plan
from swarm.merge import MergeSpec, check_neighbourhood
from swarm.topology import TopologyTable, check_neighbour_lists, resolve_topology, topology_name

from .learner import Task
from .models import build_model, file_sha256, without_initial_weights
from .privacy import check_private_model

EXPLICIT = "explicit"  # topology name for neighbour lists written out in the plan
MAX_ROUNDS = 1000  # a model reply carries at most 1024 log entries; see nodes.node


class _Rounds(Table):
    TABLE: ClassVar[str] = "plan"

    rounds: int = setting(ge=1, le=MAX_ROUNDS)


class TaskTable(Table):
    """The plan's [task] table: what every site's data must look like."""

    TABLE: ClassVar[str] = "plan.task"

    input_shape: list[int] | None = None  # [features], [channels, height, width] or [channels, depth, height, width]
    num_features: int | None = setting(None, ge=1, le=2**62, example=32)  # for tables, instead of input_shape
    num_classes: int = setting(ge=2, le=2**62, example=3)
    kind: Literal["classification", "segmentation"] = "classification"

    @model_validator(mode="before")
    @classmethod
    def _shape_whole(cls, values: Any) -> Any:
        shape = values.get("input_shape") if isinstance(values, Mapping) else None
        if shape is not None and (not isinstance(shape, list) or not 1 <= len(shape) <= 4
                                  or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)):
            raise invalid_value("input_shape", "[features], [channels, height, width] or [channels, depth, height, width]",
                                shape, [1, 28, 28])
        return values

    @model_validator(mode="after")
    def _a_shape(self) -> TaskTable:
        if self.input_shape is None and self.num_features is None:
            raise refuse("num_features", "missing; add e.g. num_features = 32")
        return self

    @property
    def shape(self) -> tuple[int, ...]:
        """`input_shape`, or for tables (num_features,)."""
        if self.input_shape is not None:
            return tuple(self.input_shape)
        return (int(self.num_features),)  # type: ignore[arg-type]  # one of the two is set (_a_shape)


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
    merge: Mapping[str, Any] | None = None,
    weights_dir: Path | None = None,
) -> dict[str, Any]:
    """A plan document (JSON-ready) with the topology resolved into neighbour lists (and, for
    a time-varying topology, a `schedule` of per-round graphs), or with the explicit
    `neighbours` lists when the topology is named "explicit". A model with `init_weights`
    gets the file's SHA-256 (`init_weights_sha256`; the file is found relative to
    `weights_dir`, default the current directory)."""
    _Rounds.from_dict({"rounds": rounds})
    topology = dict(topology)
    name = topology_name(topology)
    schedule = None
    if name == EXPLICIT:
        allow_disconnected = TopologyTable.from_dict(topology).allow_disconnected
        resolved = _explicit_neighbours(neighbours, member_names, allow_disconnected)
    elif neighbours:
        raise ConfigError(f'neighbours: given, but topology.name is {name!r}; set name = "{EXPLICIT}" to use your own lists')
    else:
        resolved, schedule = resolve_topology(topology, member_names, rounds)
    plan = {
        "rounds": rounds,
        "topology": topology | {"name": name},
        "neighbours": resolved,
        **({"schedule": schedule} if schedule is not None else {}),
        "protocol": dict(protocol) | {"name": dict(protocol).get("name", "braintorrent")},
        "model": with_weights_digest(model, weights_dir),
        "training": dict(training),
        "task": dict(task),
        **({"merge": dict(merge)} if merge else {}),
    }
    parsed = check_plan_sections(plan["protocol"], plan["model"], plan["training"], plan["task"], plan.get("merge"))
    check_merge_neighbourhoods(parsed.merge, plan["protocol"]["name"], resolved)
    return plan


def with_weights_digest(model: Mapping[str, Any], weights_dir: Path | None) -> dict[str, Any]:
    """The [model] table with `init_weights_sha256` filled in from the `init_weights` file."""
    model = dict(model)
    path = model.get("init_weights")
    if path is None:
        if "init_weights_sha256" in model:
            raise ConfigError("model.init_weights_sha256: given without init_weights; name the .safetensors file too")
        return model
    if not isinstance(path, str) or not path.endswith(".safetensors"):
        raise ConfigError(f'model.init_weights: must name a .safetensors file, got {path!r} (example: init_weights = "densenet-init.safetensors")')
    if "init_weights_sha256" not in model:
        file = Path(path) if Path(path).is_absolute() else (weights_dir or Path.cwd()) / path
        if not file.is_file():
            raise ConfigError(f"model.init_weights: {file} not found; the plan needs the file to record its SHA-256")
        model["init_weights_sha256"] = file_sha256(file)
    return model


def merge_candidates(protocol: str, peers: Sequence[str]) -> int:
    """The most models one merge of a node combines, its own included: gossip learning
    merges one received model at a time; the others merge every neighbour's at most."""
    return 2 if protocol == "gossip" else len(peers) + 1


def check_merge_neighbourhoods(spec: MergeSpec, protocol: str, neighbours: Mapping[str, Sequence[str]]) -> None:
    """Refuse a merge rule that some node's neighbourhood is too small for (Krum's n >= 2f+3
    and the like), naming the node with the fewest neighbours."""
    if not neighbours:
        return
    who = min(neighbours, key=lambda name: (merge_candidates(protocol, neighbours[name]), name))
    check_neighbourhood(spec, merge_candidates(protocol, neighbours[who]), f"{who} ({protocol})", "plan.merge")


def _explicit_neighbours(neighbours: Mapping[str, Any] | None, member_names: list[str], allow_disconnected: bool) -> dict[str, list[str]]:
    if not neighbours or set(neighbours) != set(member_names):
        raise ConfigError(f'neighbours: with topology.name = "{EXPLICIT}", list every member\'s neighbours, e.g. {member_names[0]} = ["{member_names[-1]}"]')
    for member, peers in neighbours.items():
        if not isinstance(peers, list) or not peers or not all(isinstance(p, str) for p in peers):
            raise ConfigError(f"neighbours.{member}: must be a non-empty list of member names, got {peers!r}")
    resolved = {member: sorted(peers) for member, peers in neighbours.items()}
    check_neighbour_lists(resolved, allow_disconnected)
    return resolved


def task_input_shape(task: Mapping[str, Any]) -> tuple[int, ...]:
    """The plan's input shape: `input_shape` (e.g. [1, 28, 28]) or, for tables, `num_features`."""
    return TaskTable.from_dict(task).shape


def check_plan_sections(protocol: Mapping, model: Mapping, training: Mapping, task: Mapping, merge: Mapping | None = None) -> Task:
    protocol_params(protocol)
    checked = TaskTable.from_dict(task)
    shape, num_classes, kind = checked.shape, checked.num_classes, checked.kind
    parsed = Task.from_plan(model, training, merge)
    built = build_model(parsed.model_name, without_initial_weights(parsed.model_params), shape, num_classes, parsed.init_seed)
    _check_output_shape(built, parsed.model_name, shape, num_classes, kind)
    parsed.sharing.local_names(built)
    if parsed.training.dp_noise_multiplier > 0:
        check_private_model(built)
    return parsed


def _check_output_shape(model: torch.nn.Module, name: str, shape: tuple[int, ...], num_classes: int, kind: str) -> None:
    """One dummy forward pass: the model must answer the task (class scores, or per-pixel
    scores of the input's size for segmentation)."""
    expected = (2, num_classes, *shape[1:]) if kind == "segmentation" else (2, num_classes)
    model.eval()
    with torch.no_grad():
        try:
            got = tuple(model(torch.zeros(2, *shape)).shape)
        except RuntimeError as exc:
            raise ConfigError(f"model.name: {name} cannot take inputs of shape {list(shape)} ({str(exc).splitlines()[0]})") from None
        finally:
            model.train()
    if got != expected:
        hint = "use a segmentation model such as unet" if kind == "segmentation" else "use a classifier such as mlp, logreg or cnn"
        raise ConfigError(f"model.name: {name} outputs {list(got)} for this {kind} task, which needs {list(expected)}; {hint}")


def check_plan(plan: Plan) -> Task:
    """Re-validate a plan read from a manifest (it may have been written by hand)."""
    _Rounds.from_dict({"rounds": plan.rounds})
    parsed = check_plan_sections(plan.protocol, plan.model, plan.training, plan.task, plan.merge)
    check_merge_neighbourhoods(parsed.merge, plan.protocol.get("name", "braintorrent"), plan.neighbours)
    return parsed
