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
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import ConfigDict, Field
from torch import Tensor

from nodes.data import SiteData
from swarm.config import Table, setting

State = Mapping[str, Tensor]


def _floating(state: State) -> list[str]:
    return [key for key, value in state.items() if value.is_floating_point()]


def _apply(template: State, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`template` with its floating tensors replaced by `values` (in the template's dtype);
    integer buffers (step counters) are kept as they are."""
    return {key: values[key].to(tensor.dtype).clone() if key in values else tensor.detach().clone() for key, tensor in template.items()}


Strength = Annotated[float, Field(ge=0)]  # how hard an attack pushes (its one parameter)


class Attack(Table):
    """Base class: an honest-looking site that publishes something else. A subclass is a
    site's `[attack]` table: `kind` (a Literal of its one name, which becomes NAME) and the
    kind's parameters."""

    TABLE: ClassVar[str] = "attack"
    NAME: ClassVar[str] = ""
    trains: ClassVar[bool] = True
    flips_labels: ClassVar[bool] = False
    kind: str

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls.NAME = cls.model_fields["kind"].default

    def poison(self, data: SiteData) -> SiteData:
        if not self.flips_labels:
            return data
        return dataclasses.replace(data, train_y=(data.num_classes - 1) - data.train_y)

    def craft(self, ref: State, trained: State, seen: Sequence[State], generator: torch.Generator) -> dict[str, Tensor]:
        return {key: value.detach().clone() for key, value in trained.items()}


class LabelFlip(Attack):
    kind: Literal["label_flip"] = "label_flip"
    flips_labels = True


class SignFlip(Attack):
    kind: Literal["sign_flip"] = "sign_flip"
    scale: Strength = 1.0

    def craft(self, ref: State, trained: State, seen: Sequence[State], generator: torch.Generator) -> dict[str, Tensor]:
        return _apply(trained, {k: -self.scale * trained[k].double() for k in _floating(trained)})


class GaussianNoise(Attack):
    kind: Literal["gaussian"] = "gaussian"
    sigma: Strength = 1.0

    def craft(self, ref: State, trained: State, seen: Sequence[State], generator: torch.Generator) -> dict[str, Tensor]:
        return _apply(trained, {k: torch.randn(trained[k].shape, generator=generator, dtype=torch.float64) * self.sigma for k in _floating(trained)})


def _stack(seen: Sequence[State], key: str) -> Tensor:
    return torch.stack([state[key].detach().double() for state in seen])


class Alie(Attack):
    kind: Literal["alie"] = "alie"
    z: Strength = 1.5

    def craft(self, ref: State, trained: State, seen: Sequence[State], generator: torch.Generator) -> dict[str, Tensor]:
        models = [*seen, trained]
        out = {}
        for key in _floating(trained):
            stacked = _stack(models, key)
            out[key] = stacked.mean(0) + self.z * stacked.std(0, correction=0)
        return _apply(trained, out)


class Ipm(Attack):
    kind: Literal["ipm"] = "ipm"
    epsilon: Strength = 2.0

    def craft(self, ref: State, trained: State, seen: Sequence[State], generator: torch.Generator) -> dict[str, Tensor]:
        models = [*seen, trained]
        return _apply(trained, {k: -self.epsilon * _stack(models, k).mean(0) for k in _floating(trained)})


class ScaledReplacement(Attack):
    kind: Literal["scaled_replacement"] = "scaled_replacement"
    boost: float = setting(5.0, gt=0)
    flips_labels = True

    def craft(self, ref: State, trained: State, seen: Sequence[State], generator: torch.Generator) -> dict[str, Tensor]:
        return _apply(trained, {k: ref[k].double() + self.boost * (trained[k].double() - ref[k].double()) for k in _floating(trained)})


class FreeRiding(Attack):
    kind: Literal["free_riding"] = "free_riding"
    trains = False

    def craft(self, ref: State, trained: State, seen: Sequence[State], generator: torch.Generator) -> dict[str, Tensor]:
        source = seen[-1] if seen else trained  # the newest model it merged, unchanged
        return {key: value.detach().clone() for key, value in source.items()}


ATTACKS: dict[str, type[Attack]] = {cls.NAME: cls for cls in (LabelFlip, SignFlip, GaussianNoise, Alie, Ipm, ScaledReplacement, FreeRiding)}


AttackKind = Literal[tuple(ATTACKS)]


class _Kind(Table):
    """Only the `kind` of an `[attack]` table, which picks the Table that checks the rest."""

    model_config = ConfigDict(extra="ignore")
    kind: AttackKind


def parse_attack(values: Mapping[str, Any], where: str = "attack") -> Attack | None:
    """The `[attack]` table of a site (None when the site is honest): `kind` and the kind's
    parameters, e.g. {kind = "alie", z = 1.5}."""
    return attack_table(values, where) if values else None


def attack_table(values: Mapping[str, Any], where: str = "attack") -> Attack:
    """The `[attack]` table of a Byzantine site, checked by its kind's Table."""
    return ATTACKS[_Kind.from_dict(values, where).kind].from_dict(values, where)
