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
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from swarm.config import TableConfig, get_float, get_int, get_str
from swarm.errors import ConfigError

from .data import SiteData

OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass(frozen=True)
class TrainConfig(TableConfig):
    """The `[train]` table. The defaults are the quickstart federation's settings."""

    TABLE: ClassVar[str] = "train"

    epochs: int = 1              # local epochs per round
    lr: float = 0.003
    batch_size: int = 32
    optimizer: str = "adam"
    momentum: float = 0.9        # sgd only
    weight_decay: float = 1e-4   # L2 penalty (decoupled for adamw)

    @staticmethod
    def _parse(v: Mapping[str, Any], p: str) -> dict[str, Any]:
        optimizer = get_str(v, "optimizer", p, choices=OPTIMIZERS, example="adam")
        return {
            "epochs": get_int(v, "epochs", p, minimum=1, maximum=None, example=1),
            "lr": get_float(v, "lr", p, minimum=0.0, maximum=100.0, min_open=True, example=0.003),
            "batch_size": get_int(v, "batch_size", p, minimum=1, maximum=None, example=32),
            "optimizer": optimizer,
            "momentum": get_float(v, "momentum", p, minimum=0.0, maximum=1.0, max_open=True, example=0.9),
            "weight_decay": get_float(v, "weight_decay", p, minimum=0.0, maximum=1.0, example=0.0001),
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
