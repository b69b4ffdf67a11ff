"""Which tensors a site shares and which stay at home.

Partial sharing keeps named layers private (e.g. a personalised classification head); FedBN
(Li et al. 2021, "FedBN: Federated Learning on Non-IID Features via Local Batch
Normalization") keeps every normalization layer local, so each hospital's scanner statistics
stay its own. Local tensors are never sent, never merged, and never enter the signed digest;
the node stores them beside its checkpoints so a restart keeps them."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import model_validator
from torch import nn

from swarm.config import Table, invalid_value
from swarm.errors import ConfigError

from .models import norm_layer_names, take_keys


class SharingKeys(Table):
    """The keys of the plan's [model] table that say what stays at the site."""

    TABLE: ClassVar[str] = "model"

    keep_local: list[str] = []
    fedbn: bool = False

    @model_validator(mode="before")
    @classmethod
    def _patterns(cls, values: Any) -> Any:
        patterns = values.get("keep_local", []) if isinstance(values, Mapping) else []
        if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):  # the message shows the list
            raise invalid_value("keep_local", "a list of tensor-name patterns", patterns, ["head.*"])
        return values


@dataclass(frozen=True)
class SharingPolicy:
    keep_local: tuple[str, ...] = ()  # glob patterns over state_dict keys, e.g. "head.*"
    fedbn: bool = False

    @classmethod
    def pop_from(cls, model_params: dict[str, Any], where: str = "model") -> SharingPolicy:
        """Take the sharing settings out of a plan's [model] table (the rest builds the model)."""
        keys = SharingKeys.from_dict(take_keys(model_params, SharingKeys), where)
        return cls(tuple(keys.keep_local), keys.fedbn)

    def local_names(self, model: nn.Module, where: str = "model") -> frozenset[str]:
        names = list(model.state_dict())
        local: set[str] = set(norm_layer_names(model)) if self.fedbn else set()
        if self.fedbn and not local:
            raise ConfigError(f"{where}.fedbn: the model has no normalization layers to keep local; use a model with norm = \"batch\" or drop fedbn")
        for pattern in self.keep_local:
            matched = fnmatch.filter(names, pattern)
            if not matched:
                raise ConfigError(f"{where}.keep_local: {pattern!r} matches no tensor; the model's tensors are: {', '.join(names)}")
            local.update(matched)
        if local.issuperset(names):
            raise ConfigError(f"{where}.keep_local: every tensor would stay local and nothing would be shared")
        return frozenset(local)


def split_state(state: Mapping[str, Any], local: frozenset[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(shared, local) parts of a state dict."""
    shared = {k: v for k, v in state.items() if k not in local}
    return shared, {k: v for k, v in state.items() if k in local}
