"""The learner of a simulated Byzantine site: the honest learner (nodes.learner) with three of
its steps replaced by what the site's attack (scenarios.attacks) does.

  data     poisoned at construction (label_flip and scaled_replacement flip the labels)
  merge    a plain weighted mean, whatever the plan's rule: an attacker has no reason to defend itself
  train    as an honest site, except a free rider, which does not train
  publish  `attack.craft(...)` of the trained model, from the model before training, the
           models it merged and a generator seeded by the round

`scenario_learner` is what a scenario's worker (scenarios.worker) hands the node: this
learner for a site whose site.toml has `[attack]`, the honest one for the others."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from nodes.data import SiteData
from nodes.learner import Learner, Task, site_task
from nodes.site import SiteConfig, SiteDir
from nodes.sources import load_own_site
from nodes.training import evaluate
from swarm.merge import weighted_mean

from .attacks import Attack, parse_attack

log = logging.getLogger("swarm.node")


class ByzantineLearner(Learner):
    """A learner that merges, trains and publishes as its attack says; what it keeps is
    its own model, like any site's."""

    def __init__(self, task: Task, data: SiteData, name: str, attack: Attack) -> None:
        super().__init__(task, attack.poison(data), name)
        self.attack = attack
        self._reference: dict[str, Tensor] = {}  # the shared tensors before this round's training

    def _merge(self, candidates: list[tuple[float, Mapping[str, Tensor]]]) -> Mapping[str, Tensor]:
        return weighted_mean(candidates)

    def _train(self, seed: int) -> Mapping[str, float]:
        # A copy: state_dict() tensors are the parameters themselves, which training changes.
        self._reference = {k: v.detach().clone() for k, v in self.shared_state().items()}
        if self.attack.trains:
            return super()._train(seed)
        return {"loss": evaluate(self.model, self.data.train_x, self.data.train_y)["loss"]}  # a free rider does not train

    def _publishable(self, shared: dict[str, Tensor], pulled: Sequence[tuple[float, Mapping[str, Tensor]]], seed: int) -> dict[str, Tensor]:
        generator = torch.Generator().manual_seed(seed)
        return self.attack.craft(self._reference, shared, [state for _, state in pulled], generator)


def scenario_learner(task: Task, config: SiteConfig, site_root: Path, hardware: Mapping[str, str]) -> Learner:
    """A nodes.launch.LearnerFactory: a ByzantineLearner where site.toml has `[attack]`,
    the honest learner elsewhere."""
    attack = parse_attack(config.attack, f"{SiteDir(site_root).config_path} [attack]")
    if attack is None:
        return Learner.for_site(task, config.data, config.name, site_root, hardware)
    log.warning("SIMULATED BYZANTINE SITE %s: publishes %s models instead of its honest ones (site.toml [attack])", config.name, attack.NAME)
    return ByzantineLearner(site_task(task, site_root, hardware), load_own_site(config.data, site_dir=site_root), config.name, attack)
