"""Model registry: a model is named in the training plan with its parameters, and every
node builds the identical initial model from the plan's seed.

`build_model` seeds PyTorch's default initialisation inside `torch.random.fork_rng`, so the
same (name, params, shape, seed) gives bit-identical weights in every process, and the
caller's global random state is left exactly as it was."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from swarm.errors import ConfigError

Builder = Callable[[Mapping[str, Any], int, int], nn.Module]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def _check_params(name: str, params: Mapping[str, Any], known: dict[str, str]) -> None:
    if not isinstance(params, Mapping):
        raise ConfigError(f"model.params: must be a table, got {params!r} (example: [model.params])")
    for key in params:
        if key not in known:
            examples = "; ".join(known.values()) or "no parameters"
            raise ConfigError(
                f"model.params.{key}: unknown parameter for model {name!r}, got {key!r} = "
                f"{params[key]!r} (known: {examples})"
            )


def _mlp(params: Mapping[str, Any], num_features: int, num_classes: int) -> nn.Module:
    _check_params("mlp", params, {"hidden": "hidden = [64, 64]", "activation": 'activation = "relu"'})
    hidden = params.get("hidden", [64, 64])
    if (
        not isinstance(hidden, (list, tuple))
        or not hidden
        or any(isinstance(h, bool) or not isinstance(h, int) or not 1 <= h <= 65536 for h in hidden)
    ):
        raise ConfigError(
            f"model.params.hidden: must be a non-empty list of layer widths from 1 to 65536, "
            f"got {hidden!r} (example: hidden = [64, 64])"
        )
    activation = params.get("activation", "relu")
    if activation not in _ACTIVATIONS:
        raise ConfigError(
            f"model.params.activation: must be one of: {', '.join(_ACTIVATIONS)}, got "
            f"{activation!r} (example: activation = \"relu\")"
        )
    layers: list[nn.Module] = []
    width = num_features
    for h in hidden:
        layers += [nn.Linear(width, h), _ACTIVATIONS[activation]()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _logreg(params: Mapping[str, Any], num_features: int, num_classes: int) -> nn.Module:
    _check_params("logreg", params, {})
    return nn.Sequential(nn.Linear(num_features, num_classes))


MODELS: dict[str, Builder] = {
    "mlp": _mlp,
    "logreg": _logreg,
}


def build_model(name: str, params: Mapping[str, Any] | None, num_features: int, num_classes: int,
                seed: int) -> nn.Module:
    """The model `name` with deterministic initial weights from `seed` (float32, train mode).

    ConfigError for an unknown name or a bad parameter."""
    if not isinstance(name, str) or name not in MODELS:
        raise ConfigError(
            f"model.name: must be one of: {', '.join(sorted(MODELS))}, got {name!r} "
            f'(example: name = "mlp")'
        )
    for label, value in (("num_features", num_features), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"model.{label}: must be an integer >= 1, got {value!r} (example: 32)")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"model.seed: must be an integer, got {seed!r} (example: seed = 0)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed % 2**63)
        model = MODELS[name](params or {}, num_features, num_classes)
    return model.float().train()
