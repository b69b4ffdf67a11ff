"""The torch side of one node: its model, its data, merging and local training.

Runs in the node's worker thread; it never touches sockets or the log. Each round returns an
immutable snapshot of the published weights (a copy, so that training the next round cannot
change bytes that are still being sent or hashed).

A round is merge, train, evaluate, publish; a subclass may change one step by overriding
`_merge`, `_train` or `_publishable` (the scenarios' simulated Byzantine sites do)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from swarm.config import Table, setting
from swarm.errors import ConfigError
from swarm.merge import MergeSpec, parse_merge
from swarm.tensors import FlatModel, digest_from_leaves, flatten_state, leaf_hashes, snapshot_state

from .data import SiteData
from .devices import resolve_device
from .models import build_model, take_keys
from .privacy import PrivacyBudget
from .sharing import SharingPolicy, split_state
from .sources import load_own_site
from .training import TrainConfig, derive_seed, evaluate, train_local


class ModelKeys(Table):
    """The keys of the plan's [model] table that the node reads itself. The table is open: of
    its other keys, the sharing settings go to nodes.sharing, and the rest are the network's
    parameters (a registry model's, the kwargs of a MONAI or torchvision network, or a
    builder's own), passed on to the builder as written."""

    TABLE: ClassVar[str] = "model"

    name: str = "mlp"
    init_seed: int = setting(0, ge=0, le=2**62)


@dataclass(frozen=True)
class Task:
    """What the plan says every site trains, parsed from the manifest's plan sections."""

    model_name: str
    model_params: dict
    init_seed: int
    training: TrainConfig
    sharing: SharingPolicy = SharingPolicy()
    merge: MergeSpec = MergeSpec()

    @classmethod
    def from_plan(cls, model: Mapping, training: Mapping, merge: Mapping | None = None) -> Task:
        params = dict(model)
        keys = ModelKeys.from_dict(take_keys(params, ModelKeys))
        sharing = SharingPolicy.pop_from(params)
        return cls(keys.name, params, keys.init_seed, TrainConfig.from_dict(training, "training"), sharing, parse_merge(merge or {}))


@dataclass(frozen=True)
class RoundResult:
    round: int
    flat: FlatModel  # the published (shared) weights, an owned copy
    digest: bytes
    leaves: tuple[bytes, ...]  # the digest's leaf hashes, which a transfer offers (swarm.transfer)
    snapshot: dict[str, Tensor] | None  # the writable tensors behind `flat` (None off the CPU)
    local_flat: FlatModel | None  # the tensors that stay at this site, if any
    metrics: dict[str, float]
    timings: dict[str, float]  # seconds spent merging, training, evaluating, hashing
    merge_skipped: bool = False  # the pulled models were not merged (too few for the rule)


class Learner:
    """The model lives on the site's device (`task.training.device`); everything that leaves
    the learner (states, snapshots) is float32 on the CPU, so digests do not depend on where a
    site trains."""

    def __init__(self, task: Task, data: SiteData, name: str) -> None:
        self.task = task
        self.data = data
        self.name = name
        self.device = self._device(task.training)
        built = build_model(task.model_name, task.model_params, data.input_shape, data.num_classes, task.init_seed)
        self.model = built.to(self.device)
        self.local_names = task.sharing.local_names(self.model)
        self.merge_rule = task.merge.build()
        self.privacy = PrivacyBudget()  # epsilon accumulates over every round this site trains

    @staticmethod
    def _device(training: TrainConfig) -> torch.device:
        private = training.dp_noise_multiplier > 0
        if private and training.device == "auto":
            return torch.device("cpu")  # Opacus' noise generator lives on the CPU here
        device = resolve_device(training.device)
        if private and device.type != "cpu":
            raise ConfigError(f'training.device: DP-SGD training runs on the CPU here, not {device}; set device = "cpu" or "auto"')
        return device

    @classmethod
    def for_site(cls, task: Task, data_table: Mapping, name: str, site_dir: Path | None = None,
                 hardware: Mapping[str, str] | None = None) -> Learner:
        """The learner of the site `name`; `hardware` (the site's own `device` and `amp`,
        from site.toml or `swarm-node run --device`) overrides the plan's."""
        return cls(site_task(task, site_dir, hardware), load_own_site(data_table, site_dir=site_dir), name)

    @property
    def samples(self) -> int:
        return self.data.train_samples

    def state(self) -> dict[str, Tensor]:
        """The whole model as CPU tensors (the parameters themselves when training on the CPU)."""
        return {key: value.detach().cpu() for key, value in self.model.state_dict().items()}

    def shared_state(self) -> dict[str, Tensor]:
        """What this site publishes and merges: everything but the local tensors."""
        return split_state(self.state(), self.local_names)[0]

    def load(self, state: Mapping[str, Tensor]) -> None:
        self.model.load_state_dict(state)

    def run_round(
        self,
        round_no: int,
        pulled: Sequence[tuple[float, Mapping[str, Tensor]]],
        self_weight: float | None = None,
        reuse: Callable[[], dict[str, Tensor] | None] | None = None,
    ) -> RoundResult:
        """Merge our model (weight `self_weight`, by default our sample count) with the
        pulled (weight, state) pairs, train, evaluate, snapshot and hash. `reuse` gives
        tensors of an earlier snapshot to copy the new one into (None: allocate)."""
        timings: dict[str, float] = {}
        started = time.perf_counter()
        merge_skipped = False
        if pulled:
            own = float(self.samples) if self_weight is None else self_weight
            merged = self._merge([(own, self.shared_state()), *pulled])
            merge_skipped = merged is None
            if merged is not None:
                self.model.load_state_dict(merged, strict=not self.local_names)
        timings["merge"] = time.perf_counter() - started
        started = time.perf_counter()
        seed = derive_seed(self.task.init_seed, "train", self.name, round_no)
        train_stats = self._train(seed)
        timings["train"] = time.perf_counter() - started
        started = time.perf_counter()
        test = evaluate(self.model, self.data.test_x, self.data.test_y)
        timings["evaluate"] = time.perf_counter() - started
        started = time.perf_counter()
        shared, local = split_state(self.state(), self.local_names)
        shared = self._publishable(shared, pulled, seed)
        # On the CPU the state's tensors are the parameters themselves: snapshot them. Off
        # the CPU, state() already made fresh host copies that nothing else holds.
        on_cpu = self.device.type == "cpu"
        snapshot = snapshot_state(shared, reuse() if reuse is not None else None) if on_cpu else None
        flat = flatten_state(snapshot if snapshot is not None else shared)
        leaves = tuple(leaf_hashes(flat))  # hashed once per version: the digest and every offer use them
        digest = digest_from_leaves(flat.specs, leaves)
        local_flat = flatten_state(local, copy=on_cpu) if local else None
        timings["snapshot"] = time.perf_counter() - started
        metrics = {key: float(value) for key, value in test.items() if key != "samples"}
        if self.data.val_y is not None and len(self.data.val_y):  # for model selection, not reporting
            val = evaluate(self.model, self.data.val_x, self.data.val_y)
            metrics |= {f"val_{key}": float(val[key]) for key in ("accuracy", "dice", "loss") if key in val}
        metrics["train_loss"] = float(train_stats["loss"])
        if merge_skipped:
            metrics["merge_skipped"] = 1.0
        if "epsilon" in train_stats:
            metrics["epsilon"] = float(train_stats["epsilon"])
        return RoundResult(round_no, flat, digest, leaves, snapshot, local_flat, metrics, timings, merge_skipped)

    def _merge(self, candidates: list[tuple[float, Mapping[str, Tensor]]]) -> Mapping[str, Tensor] | None:
        """The plan's merge rule over our model and the pulled ones; None: keep our own."""
        if len(candidates) < self.merge_rule.minimum_candidates(self.task.merge.f):
            # Fewer models arrived than the rule needs to outvote f bad ones (neighbours
            # timed out): merging would trust whoever did answer, so keep our own.
            return None
        return self.merge_rule.merge(candidates, self.task.merge.f)

    def _train(self, seed: int) -> Mapping[str, float]:
        """Train the merged model on this site's data; the training statistics (loss, epsilon)."""
        return train_local(self.model, self.data, self.task.training, seed, privacy=self.privacy)

    def _publishable(self, shared: dict[str, Tensor], pulled: Sequence[tuple[float, Mapping[str, Tensor]]], seed: int) -> dict[str, Tensor]:
        """What this site publishes of its trained shared tensors (`pulled`: the round's
        (weight, state) pairs, `seed`: the round's): the tensors themselves."""
        return shared


def site_task(task: Task, site_dir: Path | None, hardware: Mapping[str, str] | None) -> Task:
    """The plan's task as one site runs it: its own hardware (device, amp) over the plan's,
    and a relative `init_weights` file found in the site directory."""
    if hardware:
        task = replace(task, training=task.training.replace(**hardware))
    weights = task.model_params.get("init_weights")
    if site_dir is not None and isinstance(weights, str) and not Path(weights).is_absolute():
        # the federation's initial weights file, kept in the site directory
        task = replace(task, model_params=task.model_params | {"init_weights": str(Path(site_dir) / weights)})
    return task
