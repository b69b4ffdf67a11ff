"""Local training and evaluation: the `[train]` table, one round of local epochs on a
site's own data, and accuracy/loss on a held-out split.

The task follows from the shapes: scores [n, C] with labels [n] is classification; scores
[n, C, H, W] with label masks [n, H, W] is segmentation (cross-entropy per pixel, averaged
over pixels). `prox_mu` > 0 adds the FedProx proximal term (Li et al. 2020, "Federated
Optimization in Heterogeneous Networks"): (mu/2) * ||w - w_start||^2 over the trainable
parameters, w_start being the weights at the start of the round's `train_local` call.
`dp_noise_multiplier` > 0 trains with differential privacy (DP-SGD through Opacus, an
optional extra): see nodes.privacy for what it guarantees, its limits and the models it
works with.

Training is deterministic given its seed: mini-batch order comes from a private
`torch.Generator`, and anything else random in a model (dropout, say) runs on the global
generator seeded inside `fork_rng`, so the caller's random state is untouched. How many
threads torch uses is the caller's business. DP training is not reproducible (its noise
must be secret) unless its `PrivacyBudget` is given a seed, for simulations."""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import BeforeValidator, model_validator
from pydantic_core import PydanticCustomError
from torch import Tensor, nn

from swarm.config import Table, refuse, setting
from swarm.errors import ConfigError

from .data import SiteData
from .devices import AMP_MODES, autocast, check_device_spec, grad_scaler, model_device
from .metrics import classification_metrics, segmentation_metrics
from .privacy import PrivacyBudget, check_private_model, require_opacus

OPTIMIZERS = ("sgd", "adam", "adamw")
LOSSES = ("cross_entropy", "logit_adjusted")


def _refusal(error: ConfigError, field: str = "") -> PydanticCustomError:
    """For a validator: the ConfigError of a check that names its own field ("device: must
    be ..."), as the validator's error, so that the message names the field under the
    table's prefix (`field`: relative to the table, "" in a field validator)."""
    return refuse(field, str(error).split(": ", 1)[1])


def _device_spec(spec: Any) -> Any:
    try:
        return check_device_spec(spec, "device")
    except ConfigError as error:
        raise _refusal(error) from None


# Where a site trains: the plan's [training] and a site's own site.toml [training] (nodes.site).
# (The example of amp is given to setting(), where an optional field's messages find it.)
DeviceSpec = Annotated[str, BeforeValidator(_device_spec)]  # the message, with its example, is nodes.devices'
AmpMode = Literal[AMP_MODES]


class TrainConfig(Table):
    """The `[train]` table. The defaults are the quickstart federation's settings."""

    TABLE: ClassVar[str] = "train"

    epochs: int = setting(1, ge=1)  # local epochs per round
    lr: float = setting(0.003, gt=0.0, le=100.0)
    batch_size: int = setting(32, ge=1)
    optimizer: Literal[OPTIMIZERS] = "adam"
    momentum: float = setting(0.9, ge=0.0, lt=1.0)  # sgd only
    weight_decay: float = setting(1e-4, ge=0.0, le=1.0)  # L2 penalty (decoupled for adamw)
    # FedProx proximal weight; 0 = plain local training (with sgd keep lr * prox_mu well below 2, or it diverges)
    prox_mu: float = setting(0.0, ge=0.0, example=0.01)
    dp_noise_multiplier: float = setting(0.0, ge=0.0, example=1.0)  # DP-SGD noise std / clipping norm; 0 = no differential privacy
    dp_max_grad_norm: float = setting(1.0, gt=0.0)  # DP-SGD per-sample gradient clipping norm (L2)
    dp_delta: float = setting(1e-5, gt=0.0, lt=1.0)  # the delta at which epsilon is reported (keep << 1 / samples)
    loss: Literal[LOSSES] = setting("cross_entropy", example="logit_adjusted")  # "logit_adjusted": train on scores + log(own class prior)
    device: DeviceSpec = "auto"  # where this site trains (nodes.devices); a site may override it
    amp: AmpMode = setting("none", example="bf16")  # mixed precision: "bf16" or "fp16"

    @model_validator(mode="after")
    def _private_training(self) -> TrainConfig:
        if self.dp_noise_multiplier > 0:
            try:
                require_opacus("training")
            except ConfigError as error:
                raise _refusal(error, "dp_noise_multiplier") from None
            if self.amp != "none":
                raise refuse("amp", 'mixed precision does not combine with DP-SGD (dp_noise_multiplier > 0); set amp = "none"')
        return self


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


def class_log_prior(labels: Tensor, num_classes: int) -> Tensor:
    """log of the site's own class frequencies (add-one smoothed, so an absent class gets a
    small prior, not -inf), shaped to add to [n, C] or [n, C, H, W] scores."""
    counts = torch.bincount(labels.reshape(-1), minlength=num_classes).to(torch.float32) + 1.0
    prior = (counts / counts.sum()).log()
    return prior.reshape(1, -1) if labels.dim() == 1 else prior.reshape(1, -1, *([1] * (labels.dim() - 1)))


def _loss_function(config: TrainConfig, y: Tensor, num_classes: int) -> Callable[[Tensor, Tensor], Tensor]:
    """The training loss: cross-entropy, or with `loss = "logit_adjusted"` cross-entropy of
    the scores plus the log of the site's own class prior (logit adjustment, Menon et al.
    2021; in federated learning FedLC, Zhang et al. 2022). A site that holds mostly one
    class then has no reason to push every score towards that class: its prior already
    says so. Only training changes; the model's scores stay the balanced ones."""
    cross_entropy = nn.CrossEntropyLoss()
    if config.loss == "cross_entropy":
        return cross_entropy
    log_prior: Tensor | None = None

    def adjusted(scores: Tensor, labels: Tensor) -> Tensor:
        nonlocal log_prior
        if log_prior is None:
            log_prior = class_log_prior(y, num_classes).to(scores.device)
        return cross_entropy(scores.float() + log_prior, labels)
    return adjusted


def check_output(scores: Tensor, labels: Tensor) -> None:
    """ConfigError unless the model's scores fit the labels: [n, C] with [n] (classification),
    [n, C, H, W] with [n, H, W] or [n, C, D, H, W] with [n, D, H, W] (segmentation)."""
    n = labels.shape[0]
    classify = scores.dim() == 2 and labels.dim() == 1
    segment = scores.dim() in (4, 5) and labels.dim() == scores.dim() - 1 and scores.shape[2:] == labels.shape[1:]
    if scores.shape[0] == n and (classify or segment):
        return
    kind = {1: "one class per sample", 3: "a class per pixel", 4: "a class per voxel"}.get(labels.dim(), "unexpected labels")
    raise ConfigError(
        f"model.name: the model outputs scores {list(scores.shape)} but the labels are "
        f"{list(labels.shape)} ({kind}); use a classifier (cnn, mlp, logreg) for labels [n], "
        f"a segmentation model (unet) for masks [n, H, W] and a 3-D one (monai.UNet) for [n, D, H, W]"
    )


def _proximal_term(params: list[nn.Parameter], mu: float) -> Callable[[], Tensor] | None:
    """FedProx: (mu/2) * ||w - w_start||^2, w_start captured now; None when mu is 0."""
    if mu == 0.0:
        return None
    start = [p.detach().clone() for p in params]

    def term() -> Tensor:
        return (mu / 2) * sum(((p - s) ** 2).sum() for p, s in zip(params, start))
    return term


def train_local(model: nn.Module, data: SiteData, config: TrainConfig, seed: int,
                privacy: PrivacyBudget | None = None) -> dict:
    """Train `model` in place for `config.epochs` epochs on the site's training split.

    A fresh optimizer each call (one call per round); the loss is `config.loss`
    (`_loss_function`); with `config.prox_mu` > 0 the FedProx
    term pulls towards the weights the call started from. Returns {"loss": mean training
    loss over the last epoch (the task's cross-entropy, without the proximal term),
    "samples": training samples, "steps": optimizer steps, "epochs": epochs}.

    With `config.dp_noise_multiplier` > 0 it trains with DP-SGD (nodes.privacy): `privacy`
    is the site's ledger, the same object every round (None: a fresh one, so epsilon covers
    this call only), and the result adds "epsilon", the site's total at `config.dp_delta`
    over every round recorded in `privacy`. The model object, its parameters and its
    state_dict keys stay the caller's; its loss is then over the records the Poisson
    sampling drew in the last epoch. ConfigError if Opacus is missing or the model has
    BatchNorm."""
    private = config.dp_noise_multiplier > 0
    if private:
        privacy = PrivacyBudget() if privacy is None else privacy
        check_private_model(model)
    x, y = data.train_x, data.train_y
    n = int(y.shape[0])
    if n == 0:
        stats = {"loss": math.nan, "samples": 0, "steps": 0, "epochs": config.epochs}
        return stats | ({"epsilon": privacy.epsilon(config.dp_delta)} if private else {})
    was_training = model.training
    model.train()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "model-randomness"))
            if private:
                steps, epoch_loss = _train_private(model, x, y, config, seed, privacy)
            else:
                steps, epoch_loss = _train_plain(model, x, y, config, seed)
    finally:
        model.train(was_training)
    stats = {"loss": epoch_loss, "samples": n, "steps": steps, "epochs": config.epochs}
    return stats | ({"epsilon": privacy.epsilon(config.dp_delta)} if private else {})


def _train_plain(model: nn.Module, x: Tensor, y: Tensor, config: TrainConfig, seed: int) -> tuple[int, float]:
    """Mini-batches on the model's device (the data stays on the CPU; each batch is copied
    over), the forward pass under `config.amp`."""
    n = int(y.shape[0])
    device = model_device(model)
    optimizer = _optimizer(model, config)
    scaler = grad_scaler(device, config.amp)
    proximal = _proximal_term([p for p in model.parameters() if p.requires_grad], config.prox_mu)
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None
    order = torch.Generator().manual_seed(derive_seed(seed, "batches"))
    steps = 0
    epoch_loss = math.nan
    for _ in range(config.epochs):
        perm = torch.randperm(n, generator=order)
        total = 0.0
        for start in range(0, n, config.batch_size):
            idx = perm[start:start + config.batch_size]
            xb, yb = _to(x[idx], device), _to(y[idx], device)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, config.amp):
                scores = model(xb)
                if loss_fn is None:
                    check_output(scores, yb)
                    loss_fn = _loss_function(config, y, int(scores.shape[1]))
                loss = loss_fn(scores.float(), yb)
            objective = loss if proximal is None else loss + proximal()
            scaler.scale(objective).backward()
            scaler.step(optimizer)
            scaler.update()
            total += float(loss.detach()) * int(idx.shape[0])
            steps += 1
        epoch_loss = total / n
    return steps, epoch_loss


def _to(tensor: Tensor, device: torch.device) -> Tensor:
    if device.type == "cpu":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


# Opacus' hooks see a first layer whose input needs no gradient (the data); harmless.
_HOOK_WARNING = "Full backward hook is firing when gradients are computed with respect to module outputs"


def _train_private(model: nn.Module, x: Tensor, y: Tensor, config: TrainConfig, seed: int,
                   privacy: PrivacyBudget) -> tuple[int, float]:
    """DP-SGD: Poisson sampling at rate q = 1 / ceil(n / batch_size), ceil(n / batch_size)
    steps per epoch, per-sample clipping and Gaussian noise (Opacus' GradSampleModule and
    DPOptimizer), each step recorded in `privacy`. The FedProx gradient is added after the
    noise (it does not depend on the data). Hooks and attributes Opacus puts on the model
    are removed afterwards."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    warnings.filterwarnings("ignore", message=_HOOK_WARNING, category=UserWarning)
    n = int(y.shape[0])
    steps_per_epoch = math.ceil(n / config.batch_size)
    rate = 1.0 / steps_per_epoch
    noise = torch.Generator().manual_seed(privacy.noise_seed(seed))
    params = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params] if config.prox_mu > 0 else None
    before = _attribute_names(model)
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None
    hooked = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=True)
    steps = 0
    epoch_loss = math.nan
    try:
        optimizer = DPOptimizer(
            _optimizer(model, config), noise_multiplier=config.dp_noise_multiplier,
            max_grad_norm=config.dp_max_grad_norm, expected_batch_size=n * rate,
            loss_reduction="mean", generator=noise,
        )
        for _ in range(config.epochs):
            total, seen = 0.0, 0
            for _ in range(steps_per_epoch):
                idx = torch.nonzero(torch.rand(n, generator=noise) < rate).squeeze(1)
                optimizer.zero_grad(set_to_none=True)
                if idx.numel() == 0:  # an empty Poisson sample: a noise-only step
                    for p in params:
                        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
                else:
                    scores = hooked(x[idx])
                    if loss_fn is None:
                        check_output(scores, y[idx])
                        loss_fn = _loss_function(config, y, int(scores.shape[1]))
                    loss = loss_fn(scores, y[idx])
                    loss.backward()
                    total += float(loss.detach()) * int(idx.numel())
                    seen += int(idx.numel())
                if optimizer.pre_step():  # clip, add noise, scale
                    if start is not None:
                        for p, s in zip(params, start):
                            p.grad.add_(p.detach() - s, alpha=config.prox_mu)
                    optimizer.original_optimizer.step()
                    privacy.record(config.dp_noise_multiplier, rate)
                steps += 1
            epoch_loss = total / seen if seen else math.nan
        optimizer.zero_grad(set_to_none=True)
        privacy.rounds += 1
    finally:
        hooked.remove_hooks()
        hooked._close()
        _remove_new_attributes(model, before)
    return steps, epoch_loss


def _attribute_names(model: nn.Module) -> list[tuple[Any, set[str]]]:
    return [(obj, set(vars(obj))) for obj in (*model.modules(), *model.parameters())]


def _remove_new_attributes(model: nn.Module, before: list[tuple[Any, set[str]]]) -> None:
    """Delete what Opacus attached to modules and parameters (grad_sample, summed_grad,
    activations, ...), so the caller's model is left as a plain module."""
    for obj, names in before:
        for name in set(vars(obj)) - names:
            delattr(obj, name)


EVAL_BATCH = 256  # samples per forward pass when scoring; bounds activation memory on any device


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> dict:
    """{"accuracy": fraction correct, "loss": mean cross-entropy, "samples": n} of `model`
    on (x, y), in eval mode (the model's mode is restored afterwards), plus sensitivity,
    specificity and AUC (nodes.metrics; macro one-vs-rest for more than two classes). For
    segmentation, accuracy and loss are over all pixels, "dice" is the mean foreground Dice,
    and samples still counts images. Scores are computed on the model's device in batches
    and gathered on the CPU as float32."""
    n = int(y.shape[0])
    if n == 0:
        return {"accuracy": math.nan, "loss": math.nan, "samples": 0}
    was_training = model.training
    device = model_device(model)
    model.eval()
    try:
        logits = torch.cat([model(_to(x[i:i + EVAL_BATCH], device)).float().cpu() for i in range(0, n, EVAL_BATCH)])
    finally:
        model.train(was_training)
    check_output(logits, y)
    loss = nn.functional.cross_entropy(logits, y, reduction="mean")
    right = logits.argmax(dim=1) == y
    result = {"accuracy": int(right.sum()) / right.numel(), "loss": float(loss), "samples": n}
    if logits.ndim >= 4:
        result["dice"] = segmentation_metrics(logits, y)["dice"]
    else:
        result |= {k: v for k, v in classification_metrics(logits, y).items() if k != "accuracy"}
    return result
