"""Where a site trains: `device` ("auto", "cpu", "cuda", "cuda:N") and mixed precision
(`amp` = "none", "bf16", "fp16").

The device is the site's own business: models leave the device as float32 CPU tensors
(nodes.learner), so a CPU site and a GPU site hash, sign and merge the same bytes and can be
neighbours. Mixed precision changes only the arithmetic of the forward pass (autocast);
the weights stay float32. fp16 uses a gradient scaler so that small gradients do not
underflow; bf16 has float32's range and needs none."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch

from swarm.errors import ConfigError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d{1,3})$")
AMP_MODES = ("none", "bf16", "fp16")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_device_spec(spec: object, field: str) -> str:
    if not isinstance(spec, str) or not DEVICE_PATTERN.match(spec):
        raise ConfigError(f'{field}: must be "auto", "cpu", "cuda" or "cuda:N", got {spec!r} (example: device = "auto")')
    return spec


def resolve_device(spec: str, where: str = "training") -> torch.device:
    """The torch device `spec` names on this machine: "auto" is the first CUDA device where
    torch sees one, else the CPU. ConfigError (one line, the fix) for a CUDA device that is
    not there."""
    check_device_spec(spec, f"{where}.device")
    if spec == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    index = int(spec.partition(":")[2] or 0)
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "torch finds no CUDA device (driver, CUDA_VISIBLE_DEVICES?)"
        raise ConfigError(f'{where}.device: {spec} is not available ({why}); use device = "cpu" or "auto", '
                          "or install a CUDA build of torch")
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"{where}.device: {spec} is not available (this machine has {count} CUDA device(s), "
                          f'cuda:0 to cuda:{count - 1}); use one of those or device = "auto"')
    return torch.device("cuda", index)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU for an empty model)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def autocast(device: torch.device, amp: str) -> Iterator[None]:
    """Mixed-precision forward passes on `device`, or nothing for amp = "none"."""
    if amp == "none":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=_AMP_DTYPES[amp]):
        yield


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A loss scaler for fp16 (disabled, a no-op, otherwise)."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")
