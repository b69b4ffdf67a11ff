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
from typing import Any

from torch import nn

from swarm.config import get_bool
from swarm.errors import ConfigError

from .models import norm_layer_names


@dataclass(frozen=True)
class SharingPolicy:
    keep_local: tuple[str, ...] = ()  # glob patterns over state_dict keys, e.g. "head.*"
    fedbn: bool = False

    @classmethod
    def pop_from(cls, model_params: dict[str, Any], where: str = "model") -> SharingPolicy:
        """Take the sharing settings out of a plan's [model] table (the rest builds the model)."""
        patterns = model_params.pop("keep_local", [])
        if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
            raise ConfigError(f'{where}.keep_local: must be a list of tensor-name patterns, got {patterns!r} (example: keep_local = ["head.*"])')
        fedbn = get_bool(model_params, "fedbn", where, default=False)
        model_params.pop("fedbn", None)
        return cls(tuple(patterns), fedbn)

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
