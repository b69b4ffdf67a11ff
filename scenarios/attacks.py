"""Simulated Byzantine hospitals: what a poisoned or cheating site publishes instead of its
honest model. For robustness experiments only; set per site in site.toml `[attack]` (the
scenario runner writes it for the sites a scenario's `[attack]` table picks). Only a
scenario's worker process (scenarios.worker) runs such a site; `swarm-node run` refuses it.

A Byzantine site runs the ordinary node with a ByzantineLearner (scenarios.byzantine): it
merges (plain weighted mean, whatever the plan says: it has no reason to defend itself),
trains, and then publishes `craft(...)` of what it trained. Everything it publishes is
signed and logged like any honest version, which is the point: signatures prove who sent a
model, not that the model is good.

Attacks, in model space (the swarm exchanges models, not gradients). `ref` is the
attacker's model after merging and before local training, `trained` after training, and
`seen` the models it merged this round (its neighbours', i.e. the honest models it can
observe) together with its own trained model:

  label_flip          train on labels y -> C-1-y, publish honestly (data poisoning)
  sign_flip           -scale * trained                                    (scale = 1)
  gaussian            N(0, sigma^2) in every coordinate                    (sigma = 1)
  alie                mean(seen) + z * std(seen), coordinate-wise          (z = 1.5)
                      (Baruch, Baruch, Goldberg: "A Little Is Enough", NeurIPS 2019)
  ipm                 -epsilon * mean(seen)                                (epsilon = 2)
                      (Xie, Koyejo, Gupta: inner product manipulation, UAI 2019)
  scaled_replacement  ref + boost * (trained_on_flipped_labels - ref)      (boost = 5)
                      (Bagdasaryan et al.: model replacement, AISTATS 2020: boosted so
                      that a plain mean over boost models lands on the poisoned model)
  free_riding         no training: re-publish the newest model it merged (its own if it
                      merged none) as its own work, claiming its usual sample count

The parameters and `../shared/DESIGN.md` section 6 defaults come from the literature; they
are deliberately strong, so that a defence that survives them means something."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from nodes.data import SiteData
from swarm.config import check_keys, get_float, get_str
from swarm.errors import ConfigError

State = Mapping[str, Tensor]


def _floating(state: State) -> list[str]:
    return [key for key, value in state.items() if value.is_floating_point()]


def _apply(template: State, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`template` with its floating tensors replaced by `values` (in the template's dtype);
    integer buffers (step counters) are kept as they are."""
    return {key: values[key].to(tensor.dtype).clone() if key in values else tensor.detach().clone() for key, tensor in template.items()}


@dataclass(frozen=True)
class Attack:
    """Base class: an honest-looking site that publishes something else."""

    NAME: ClassVar[str] = ""
    PARAMS: ClassVar[dict[str, float]] = {}  # parameter -> default
    trains: ClassVar[bool] = True
    flips_labels: ClassVar[bool] = False
    params: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def param(self, name: str) -> float:
        return float(self.params.get(name, self.PARAMS[name]))

    def poison(self, data: SiteData) -> SiteData:
        if not self.flips_labels:
            return data
        return dataclasses.replace(data, train_y=(data.num_classes - 1) - data.train_y)

    def craft(self, ref: State, trained: State, seen: Sequence[State], generator: torch.Generator) -> dict[str, Tensor]:
        return {key: value.detach().clone() for key, value in trained.items()}


class LabelFlip(Attack):
    NAME = "label_flip"
    flips_labels = True


class SignFlip(Attack):
    NAME = "sign_flip"
    PARAMS = {"scale": 1.0}

    def craft(self, ref: State, trained: State, seen: Sequence[State], generator: torch.Generator) -> dict[str, Tensor]:
        return _apply(trained, {k: -self.param("scale") * trained[k].double() for k in _floating(trained)})


class GaussianNoise(Attack):
    NAME = "gaussian"
    PARAMS = {"sigma": 1.0}

    def craft(self, ref: State, trained: State, seen: Sequence[State], generator: torch.Generator) -> dict[str, Tensor]:
        sigma = self.param("sigma")
        return _apply(trained, {k: torch.randn(trained[k].shape, generator=generator, dtype=torch.float64) * sigma for k in _floating(trained)})


def _stack(seen: Sequence[State], key: str) -> Tensor:
    return torch.stack([state[key].detach().double() for state in seen])


class Alie(Attack):
    NAME = "alie"
    PARAMS = {"z": 1.5}

    def craft(self, ref: State, trained: State, seen: Sequence[State], generator: torch.Generator) -> dict[str, Tensor]:
        models = [*seen, trained]
        z = self.param("z")
        out = {}
        for key in _floating(trained):
            stacked = _stack(models, key)
            out[key] = stacked.mean(0) + z * stacked.std(0, correction=0)
        return _apply(trained, out)


class Ipm(Attack):
    NAME = "ipm"
    PARAMS = {"epsilon": 2.0}

    def craft(self, ref: State, trained: State, seen: Sequence[State], generator: torch.Generator) -> dict[str, Tensor]:
        models = [*seen, trained]
        return _apply(trained, {k: -self.param("epsilon") * _stack(models, k).mean(0) for k in _floating(trained)})


class ScaledReplacement(Attack):
    NAME = "scaled_replacement"
    PARAMS = {"boost": 5.0}
    flips_labels = True

    def craft(self, ref: State, trained: State, seen: Sequence[State], generator: torch.Generator) -> dict[str, Tensor]:
        boost = self.param("boost")
        return _apply(trained, {k: ref[k].double() + boost * (trained[k].double() - ref[k].double()) for k in _floating(trained)})


class FreeRiding(Attack):
    NAME = "free_riding"
    trains = False

    def craft(self, ref: State, trained: State, seen: Sequence[State], generator: torch.Generator) -> dict[str, Tensor]:
        source = seen[-1] if seen else trained  # the newest model it merged, unchanged
        return {key: value.detach().clone() for key, value in source.items()}


ATTACKS: dict[str, type[Attack]] = {cls.NAME: cls for cls in (LabelFlip, SignFlip, GaussianNoise, Alie, Ipm, ScaledReplacement, FreeRiding)}


def parse_attack(values: Mapping[str, Any], where: str = "attack") -> Attack | None:
    """The `[attack]` table of a site (None when the site is honest): `kind` and the kind's
    parameters, e.g. {kind = "alie", z = 1.5}."""
    if not values:
        return None
    kind = get_str(values, "kind", where, choices=tuple(ATTACKS))
    cls = ATTACKS[kind]
    check_keys(values, {"kind", *cls.PARAMS}, where)
    params = {name: get_float(values, name, where, example=default) for name, default in cls.PARAMS.items() if name in values}
    if kind == "scaled_replacement" and params.get("boost", 1.0) <= 0:
        raise ConfigError(f"{where}.boost: must be > 0 (example: boost = 5)")
    return cls(params)
