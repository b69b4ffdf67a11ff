"""Local training and evaluation: the `[train]` table, one round of local epochs on a
site's own data, and accuracy/loss on a held-out split.

The task follows from the shapes: scores [n, C] with labels [n] is classification; scores
[n, C, H, W] with label masks [n, H, W] is segmentation (cross-entropy per pixel, averaged
over pixels). `prox_mu` > 0 adds the FedProx proximal term (Li et al. 2020, "Federated
Optimization in Heterogeneous Networks"): (mu/2) * ||w - w_start||^2 over the trainable
parameters, w_start being the weights at the start of the round's `train_local` call.

Training is deterministic given its seed: mini-batch order comes from a private
`torch.Generator`, and anything else random in a model (dropout, say) runs on the global
generator seeded inside `fork_rng`, so the caller's random state is untouched. How many
threads torch uses is the caller's business."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from swarm.config import TableConfig, get_float, get_int, get_str
from swarm.errors import ConfigError

from .data import SiteData
from .metrics import classification_metrics, segmentation_metrics

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
    prox_mu: float = 0.0         # FedProx proximal weight; 0 = plain local training
                                 # (with sgd keep lr * prox_mu well below 2, or it diverges)

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
            "prox_mu": get_float(v, "prox_mu", p, minimum=0.0, maximum=math.inf, max_open=True, example=0.01),
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


def check_output(scores: Tensor, labels: Tensor) -> None:
    """ConfigError unless the model's scores fit the labels: [n, C] with [n] (classification)
    or [n, C, H, W] with [n, H, W] (segmentation)."""
    n = labels.shape[0]
    classify = scores.dim() == 2 and labels.dim() == 1
    segment = scores.dim() == 4 and labels.dim() == 3 and scores.shape[2:] == labels.shape[1:]
    if scores.shape[0] == n and (classify or segment):
        return
    kind = {1: "one class per sample", 3: "a class per pixel"}.get(labels.dim(), "unexpected labels")
    raise ConfigError(
        f"model.name: the model outputs scores {list(scores.shape)} but the labels are "
        f"{list(labels.shape)} ({kind}); use a classifier (cnn, mlp, logreg) for labels [n] "
        f"and a segmentation model (unet) for masks [n, H, W]"
    )


def _proximal_term(params: list[nn.Parameter], mu: float) -> Callable[[], Tensor] | None:
    """FedProx: (mu/2) * ||w - w_start||^2, w_start captured now; None when mu is 0."""
    if mu == 0.0:
        return None
    start = [p.detach().clone() for p in params]

    def term() -> Tensor:
        return (mu / 2) * sum(((p - s) ** 2).sum() for p, s in zip(params, start))
    return term


def train_local(model: nn.Module, data: SiteData, config: TrainConfig, seed: int) -> dict:
    """Train `model` in place for `config.epochs` epochs on the site's training split.

    A fresh optimizer each call (one call per round); with `config.prox_mu` > 0 the FedProx
    term pulls towards the weights the call started from. Returns {"loss": mean training
    loss over the last epoch (the task's cross-entropy, without the proximal term),
    "samples": training samples, "steps": optimizer steps, "epochs": epochs}."""
    x, y = data.train_x, data.train_y
    n = int(y.shape[0])
    if n == 0:
        return {"loss": math.nan, "samples": 0, "steps": 0, "epochs": config.epochs}
    optimizer = _optimizer(model, config)
    proximal = _proximal_term([p for p in model.parameters() if p.requires_grad], config.prox_mu)
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
                scores = model(x[idx])
                if steps == 0:
                    check_output(scores, y[idx])
                loss = loss_fn(scores, y[idx])
                objective = loss if proximal is None else loss + proximal()
                objective.backward()
                optimizer.step()
                total += float(loss.detach()) * int(idx.shape[0])
                steps += 1
            epoch_loss = total / n
    model.train(was_training)
    return {"loss": epoch_loss, "samples": n, "steps": steps, "epochs": config.epochs}


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> dict:
    """{"accuracy": fraction correct, "loss": mean cross-entropy, "samples": n} of `model`
    on (x, y), in eval mode (the model's mode is restored afterwards), plus sensitivity,
    specificity and AUC (nodes.metrics; macro one-vs-rest for more than two classes). For
    segmentation, accuracy and loss are over all pixels, "dice" is the mean foreground Dice,
    and samples still counts images."""
    n = int(y.shape[0])
    if n == 0:
        return {"accuracy": math.nan, "loss": math.nan, "samples": 0}
    was_training = model.training
    model.eval()
    try:
        logits = model(x)
    finally:
        model.train(was_training)
    check_output(logits, y)
    loss = nn.functional.cross_entropy(logits, y, reduction="mean")
    right = logits.argmax(dim=1) == y
    result = {"accuracy": int(right.sum()) / right.numel(), "loss": float(loss), "samples": n}
    if logits.ndim == 4:
        result["dice"] = segmentation_metrics(logits, y)["dice"]
    else:
        result |= {k: v for k, v in classification_metrics(logits, y).items() if k != "accuracy"}
    return result
