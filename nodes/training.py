"""Local training and evaluation: the `[train]` table, one round of local epochs on a
site's own data, and accuracy/loss on a held-out split.

Training is deterministic given its seed: mini-batch order comes from a private
`torch.Generator`, and anything else random in a model (dropout, say) runs on the global
generator seeded inside `fork_rng`, so the caller's random state is untouched. How many
threads torch uses is the caller's business."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from swarm.errors import ConfigError

from .data import SiteData, _as_dict, _check_keys, _fail, _float_value, _int_value

OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass(frozen=True)
class TrainConfig:
    """The `[train]` table. The defaults are the quickstart federation's settings."""

    epochs: int = 1              # local epochs per round
    lr: float = 0.003
    batch_size: int = 32
    optimizer: str = "adam"
    momentum: float = 0.9        # sgd only
    weight_decay: float = 1e-4   # L2 penalty (decoupled for adamw)

    def __post_init__(self) -> None:
        # Direct construction is checked too (as the "train" table), and numbers normalised.
        for key, value in _parse_train(_as_dict(self), "train").items():
            object.__setattr__(self, key, value)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], field_prefix: str = "train") -> TrainConfig:
        """Parse a TOML table; ConfigError names the field, the bad value and an example."""
        _check_keys(field_prefix, d, cls)
        return cls(**_parse_train({**_as_dict(cls()), **d}, field_prefix))


def _parse_train(v: Mapping[str, Any], p: str) -> dict[str, Any]:
    optimizer = v["optimizer"]
    if not isinstance(optimizer, str) or optimizer not in OPTIMIZERS:
        raise _fail(p, "optimizer", "one of: " + ", ".join(OPTIMIZERS), optimizer, 'optimizer = "adam"')
    return {
        "epochs": _int_value(p, "epochs", v["epochs"], 1, None, "epochs = 1"),
        "lr": _float_value(p, "lr", v["lr"], 0.0, 100.0, "lr = 0.003", low_open=True),
        "batch_size": _int_value(p, "batch_size", v["batch_size"], 1, None, "batch_size = 32"),
        "optimizer": optimizer,
        "momentum": _float_value(p, "momentum", v["momentum"], 0.0, 1.0, "momentum = 0.9",
                                 high_open=True),
        "weight_decay": _float_value(p, "weight_decay", v["weight_decay"], 0.0, 1.0,
                                     "weight_decay = 0.0001"),
    }


def derive_seed(seed: int, *parts: Any) -> int:
    """A seed in [0, 2**63) for a sub-task, e.g. derive_seed(plan_seed, "train", site, round).

    Stable across processes and platforms (unlike hash())."""
    text = repr((int(seed),) + tuple(parts)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    raise ConfigError(
        f"train.optimizer: must be one of: {', '.join(OPTIMIZERS)}, got {config.optimizer!r} "
        f'(example: optimizer = "adam")'
    )


def train_local(model: nn.Module, data: SiteData, config: TrainConfig, seed: int) -> dict:
    """Train `model` in place for `config.epochs` epochs on the site's training split.

    A fresh optimizer each call (one call per round). Returns {"loss": mean training loss
    over the last epoch, "samples": training samples, "steps": optimizer steps,
    "epochs": epochs}."""
    x, y = data.train_x, data.train_y
    n = int(y.shape[0])
    if n == 0:
        return {"loss": math.nan, "samples": 0, "steps": 0, "epochs": config.epochs}
    optimizer = _optimizer(model, config)
    loss_fn = nn.CrossEntropyLoss()
    order = torch.Generator().manual_seed(derive_seed(seed, "batches"))
    was_training = model.training
    model.train()
    steps = 0
    epoch_loss = math.nan
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "model-randomness"))
        for _ in range(config.epochs):
            perm = torch.randperm(n, generator=order)
            total = 0.0
            for start in range(0, n, config.batch_size):
                idx = perm[start:start + config.batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x[idx]), y[idx])
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * int(idx.shape[0])
                steps += 1
            epoch_loss = total / n
    model.train(was_training)
    return {"loss": epoch_loss, "samples": n, "steps": steps, "epochs": config.epochs}


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> dict:
    """{"accuracy": fraction correct, "loss": mean cross-entropy, "samples": n} of `model`
    on (x, y), in eval mode (the model's mode is restored afterwards)."""
    n = int(y.shape[0])
    if n == 0:
        return {"accuracy": math.nan, "loss": math.nan, "samples": 0}
    was_training = model.training
    model.eval()
    try:
        logits = model(x)
    finally:
        model.train(was_training)
    loss = nn.functional.cross_entropy(logits, y, reduction="mean")
    correct = int((logits.argmax(dim=1) == y).sum())
    return {"accuracy": correct / n, "loss": float(loss), "samples": n}
