"""Model registry: a model is named in the training plan with its parameters, and every
node builds the identical initial model from the plan's seed.

`build_model` seeds PyTorch's default initialisation inside `torch.random.fork_rng`, so the
same (name, params, shape, seed) gives bit-identical weights in every process, and the
caller's global random state is left exactly as it was.

Input shapes: an int (or a 1-tuple) is a count of tabular features; a 3-tuple is an image,
(channels, height, width). A builder in `MODELS` is `builder(params, input_shape,
num_classes)` and always receives the shape as a tuple: (num_features,) or (C, H, W).

- `logreg`, `mlp`: tabular. Given an image they start with an explicit `nn.Flatten` layer
  (so pixel logistic regression works); for tabular input the layers are unchanged.
- `cnn`: image classification, output [n, num_classes].
- `unet`: segmentation, output [n, num_classes, H, W] (scores per pixel).

Beyond the registry, `name` may be
- `monai.<Class>`: any class of `monai.networks.nets` (optional extra `monai`), its
  parameters from the table; `spatial_dims`, `in_channels` and `out_channels` are filled
  from the task where the class takes them and the table leaves them out;
- `torchvision.<function>`: a model function of `torchvision.models` (torchvision installed
  beside torch), built without pretrained weights for `num_classes` outputs; an input with
  other than 3 channels goes through a 1x1 convolution to 3 first;
- `package.module:function`: a builder of your own on the Python path, called like the
  registry's, `function(params, input_shape, num_classes) -> nn.Module`.
Every site must be able to build the same model: the plan names it, and every site checks
it at start-up.

Initial weights: `init_weights` (a `.safetensors` file) and `init_weights_sha256` in the
model's parameters load those exact bytes after building, so every site starts from the same
model; a file whose SHA-256 differs from the plan's is refused.

`norm_layer_names` lists the state_dict entries of normalization layers, the tensors FedBN
keeps local."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import model_validator
from torch import Tensor, nn

from swarm.config import Table, invalid_value, setting
from swarm.errors import ConfigError

InputShape = tuple[int, ...]
Builder = Callable[[Mapping[str, Any], InputShape, int], nn.Module]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
NORMS = ("batch", "group", "none")


def take_keys(values: dict[str, Any], table: type[Table]) -> dict[str, Any]:
    """Take the keys of `table` out of an open table, e.g. the node's own keys out of [model],
    whose other keys are the network's parameters, passed on to its builder as written."""
    return {key: values.pop(key) for key in table.model_fields if key in values}


class _Params(Table):
    """The parameters of a registry model (`model.params`: the [model] table without the
    node's own keys)."""

    TABLE: ClassVar[str] = "model.params"
    # Lists of layer widths, each checked whole (the message shows the list), and whether
    # it may be empty; the example is the field's default.
    WIDTHS: ClassVar[dict[str, bool]] = {}

    @model_validator(mode="before")
    @classmethod
    def _layer_widths(cls, values: Any) -> Any:
        for key, allow_empty in cls.WIDTHS.items():
            if not isinstance(values, Mapping) or key not in values:
                continue
            widths = values[key]
            if (
                not isinstance(widths, (list, tuple))
                or (not widths and not allow_empty)
                or any(isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= 65536 for w in widths)
            ):
                kind = "a list" if allow_empty else "a non-empty list"
                raise invalid_value(key, f"{kind} of layer widths from 1 to 65536", widths, cls.model_fields[key].default)
            values = {**values, key: list(widths)}
        return values


class _Layers(_Params):
    """A network of layers with an activation (mlp, cnn, unet)."""

    activation: Literal[tuple(_ACTIVATIONS)] = "relu"

    @property
    def activation_layer(self) -> type[nn.Module]:
        return _ACTIVATIONS[self.activation]


class _MlpParams(_Layers):
    WIDTHS = {"hidden": False}
    hidden: list[int] = [64, 64]


class _LogregParams(_Params):
    UNKNOWN_KEY: ClassVar[str] = "unknown key, got {key!r} = {value!r}; logreg takes no parameters"


def _describe(shape: InputShape) -> str:
    if len(shape) == 1:
        return f"{shape[0]} tabular features"
    if len(shape) == 4:
        return "volume input (channels, depth, height, width) = " + repr(shape)
    return "image input (channels, height, width) = " + repr(shape)


def _image_shape(name: str, shape: InputShape) -> InputShape:
    if len(shape) != 3:
        raise ConfigError(
            f"model.name: {name} needs image input (channels, height, width), got "
            f"{_describe(shape)}; use mlp or logreg for tabular data, a 3-D MONAI network (monai.UNet) for volumes"
        )
    return shape


def _flat_input(shape: InputShape) -> tuple[list[nn.Module], int]:
    """Tabular input as is; an image flattened by an explicit first layer."""
    if len(shape) == 1:
        return [], shape[0]
    return [nn.Flatten()], math.prod(shape)


# -- tabular ----------------------------------------------------------------------------

def _mlp(params: Mapping[str, Any], input_shape: InputShape, num_classes: int) -> nn.Module:
    checked = _MlpParams.from_dict(params)
    activation = checked.activation_layer
    layers, width = _flat_input(input_shape)
    for h in checked.hidden:
        layers += [nn.Linear(width, h), activation()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _logreg(params: Mapping[str, Any], input_shape: InputShape, num_classes: int) -> nn.Module:
    _LogregParams.from_dict(params)
    layers, width = _flat_input(input_shape)
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


# -- images -----------------------------------------------------------------------------

def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        # Up to 8 groups, always a divisor of the width (1 group: layer norm over C, H, W).
        return nn.GroupNorm(math.gcd(channels, 8), channels)
    return nn.Identity()


def _conv_block(in_channels: int, out_channels: int, norm: str, activation: type[nn.Module]) -> nn.Sequential:
    """3x3 convolution (same size) -> normalization -> activation; keys conv.*, norm.*.
    The convolution has no bias where a normalization layer follows (it would cancel)."""
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=norm == "none"),
        norm=_norm(norm, out_channels),
        act=activation(),
    ))


class _ImageParams(_Layers):
    norm: Literal[NORMS] = "batch"


class _CnnParams(_ImageParams):
    WIDTHS = {"channels": False, "hidden": True}
    channels: list[int] = [16, 32]
    hidden: list[int] = [64]


class _UNetParams(_ImageParams):
    depth: int = setting(2, ge=1, le=5)
    base: int = setting(16, ge=1, le=256)


def _cnn(params: Mapping[str, Any], input_shape: InputShape, num_classes: int) -> nn.Module:
    """Conv blocks, each halving the image (max-pool 2), then fully connected layers.

    Keys: block1.conv.weight, block1.norm.*, ..., fc1.*, ..., head.* (the classifier)."""
    checked = _CnnParams.from_dict(params)
    norm, activation, channels, hidden = checked.norm, checked.activation_layer, checked.channels, checked.hidden
    in_channels, height, width = _image_shape("cnn", input_shape)
    if min(height, width) >> len(channels) < 1:
        most = min(height, width).bit_length() - 1
        raise ConfigError(
            f"{_CnnParams.TABLE}.channels: each entry halves the image, and {len(channels)} of them shrink a "
            f"{height}x{width} image below one pixel, got {channels!r}; use at most {most} "
            f"(example: channels = [16, 32])"
        )
    layers: list[tuple[str, nn.Module]] = []
    for i, c in enumerate(channels, 1):
        layers += [(f"block{i}", _conv_block(in_channels, c, norm, activation)), (f"pool{i}", nn.MaxPool2d(2))]
        in_channels, height, width = c, height // 2, width // 2
    layers.append(("flatten", nn.Flatten()))
    features = in_channels * height * width
    for i, h in enumerate(hidden, 1):
        layers += [(f"fc{i}", nn.Linear(features, h)), (f"act{i}", activation())]
        features = h
    layers.append(("head", nn.Linear(features, num_classes)))
    return nn.Sequential(OrderedDict(layers))


class UNet(nn.Module):
    """A small 2-D U-Net (Ronneberger et al. 2015): `depth` max-pool steps down, transposed
    convolutions back up with skip connections, two conv blocks per level, width `base`
    doubling per level; a 1x1 convolution `head` gives [n, num_classes, H, W]. Any H, W of at
    least 2**depth works: an odd size is padded back to its skip connection's size."""

    def __init__(self, in_channels: int, num_classes: int, depth: int, base: int, norm: str,
                 activation: type[nn.Module]) -> None:
        super().__init__()
        widths = [base * 2**level for level in range(depth + 1)]

        def double(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(_conv_block(cin, cout, norm, activation), _conv_block(cout, cout, norm, activation))

        self.down = nn.ModuleList([double(in_channels, widths[0])]
                                  + [double(widths[i - 1], widths[i]) for i in range(1, depth + 1)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i], widths[i - 1], 2, stride=2)
                                 for i in range(depth, 0, -1)])
        self.dec = nn.ModuleList([double(2 * widths[i - 1], widths[i - 1]) for i in range(depth, 0, -1)])
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for level, block in enumerate(self.down):
            if level:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        skips.pop()  # the bottleneck itself
        for up, dec in zip(self.up, self.dec):
            skip = skips.pop()
            x = up(x)
            x = nn.functional.pad(x, (0, skip.shape[-1] - x.shape[-1], 0, skip.shape[-2] - x.shape[-2]))
            x = dec(torch.cat([skip, x], dim=1))
        return self.head(x)


def _unet(params: Mapping[str, Any], input_shape: InputShape, num_classes: int) -> nn.Module:
    checked = _UNetParams.from_dict(params)
    depth = checked.depth
    in_channels, height, width = _image_shape("unet", input_shape)
    if min(height, width) >> depth < 1:
        most = min(height, width).bit_length() - 1
        raise ConfigError(
            f"{_UNetParams.TABLE}.depth: each level halves the image, and {depth} levels shrink a "
            f"{height}x{width} image below one pixel, got {depth}; use at most {most} (example: depth = 2)"
        )
    return UNet(in_channels, num_classes, depth, checked.base, checked.norm, checked.activation_layer)


MODELS: dict[str, Builder] = {
    "mlp": _mlp,
    "logreg": _logreg,
    "cnn": _cnn,
    "unet": _unet,
}


def _input_shape(value: int | Sequence[int]) -> InputShape:
    shape = (value,) if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(shape, (tuple, list))
        or len(shape) not in (1, 3, 4)
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape)
    ):
        raise ConfigError(
            f"model.input_shape: must be a number of features >= 1, (channels, height, width) or "
            f"(channels, depth, height, width), got {value!r} (example: 32 or (1, 28, 28))"
        )
    return tuple(shape)


def _monai(class_name: str) -> Builder:
    try:
        from monai.networks import nets
    except ImportError:
        raise ConfigError(f'model.name: monai.{class_name} needs the optional package monai, which is not installed; '
                          'install it with pip install "swarm-hospitals[monai]"') from None
    cls = getattr(nets, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise ConfigError(f"model.name: monai.networks.nets has no network {class_name!r} "
                          '(examples: monai.DenseNet121, monai.UNet, monai.BasicUNet)')

    def build(params: Mapping[str, Any], shape: InputShape, num_classes: int) -> nn.Module:
        accepted = inspect.signature(cls.__init__).parameters
        filled = {"spatial_dims": len(shape) - 1, "in_channels": shape[0], "out_channels": num_classes}
        kwargs = {k: v for k, v in filled.items() if k in accepted and len(shape) > 1} | dict(params)
        return cls(**kwargs)
    return build


def _torchvision(function_name: str) -> Builder:
    try:
        from torchvision import models
    except Exception as exc:  # ImportError, or a torchvision built for another torch
        raise ConfigError(f"model.name: torchvision.{function_name} needs torchvision installed for this torch "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    function = getattr(models, function_name, None)
    if not callable(function):
        raise ConfigError(f"model.name: torchvision.models has no model {function_name!r} (examples: torchvision.resnet18)")

    def build(params: Mapping[str, Any], shape: InputShape, num_classes: int) -> nn.Module:
        model = function(weights=None, num_classes=num_classes, **params)
        if len(shape) == 3 and shape[0] != 3:  # torchvision's image models take RGB
            return nn.Sequential(nn.Conv2d(shape[0], 3, kernel_size=1), model)
        return model
    return build


def _user_builder(name: str) -> Builder:
    module_name, _, function_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(f"model.name: cannot import {module_name!r} for the builder {name!r} ({type(exc).__name__}: {exc}); "
                          "install it or add its directory to PYTHONPATH at every site") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ConfigError(f"model.name: {module_name} has no function {function_name!r}; the builder is "
                          "function(params, input_shape, num_classes) -> torch.nn.Module")
    return function


def resolve_builder(name: str) -> Builder:
    """The builder `name` stands for: the registry, monai.<Class>, torchvision.<function> or
    module:function (see the module docstring)."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f'model.name: must be a model name, got {name!r} (example: name = "cnn")')
    if name in MODELS:
        return MODELS[name]
    if name.startswith("monai."):
        return _monai(name.removeprefix("monai."))
    if name.startswith("torchvision."):
        return _torchvision(name.removeprefix("torchvision."))
    if ":" in name:
        return _user_builder(name)
    raise ConfigError(f"model.name: must be one of: {', '.join(sorted(MODELS))}, monai.<Class>, torchvision.<function> "
                      f"or package.module:function, got {name!r} (example: name = \"mlp\")")


WEIGHT_KEYS = ("init_weights", "init_weights_sha256")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def without_initial_weights(params: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (params or {}).items() if k not in WEIGHT_KEYS}


def load_initial_weights(model: nn.Module, path: str | Path, sha256: Any) -> None:
    """Load `path` (.safetensors) into `model`, after checking its SHA-256 against the plan's."""
    path = Path(path)
    if not isinstance(sha256, str) or len(sha256) != 64:
        raise ConfigError(f"model.init_weights_sha256: missing or malformed for {path}; the plan must carry the file's "
                          "SHA-256 (swarm-node federation create and swarm-scenario fill it in)")
    if not path.is_file():
        raise ConfigError(f"model.init_weights: {path} not found; copy the federation's initial weights file "
                          f"(sha256 {sha256[:16]}...) there")
    actual = file_sha256(path)
    if actual != sha256.lower():
        raise ConfigError(f"model.init_weights: {path} has sha256 {actual[:16]}... but the plan says {sha256[:16]}...; "
                          "use the exact file the federation agreed on")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"model.init_weights: {path} is not a readable .safetensors file ({exc})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:200]
        raise ConfigError(f"model.init_weights: {path} does not fit the plan's model ({first}); export it from the same model") from None


def build_model(name: str, params: Mapping[str, Any] | None, input_shape: int | Sequence[int],
                num_classes: int, seed: int) -> nn.Module:
    """The model `name` with deterministic initial weights from `seed` (float32, train mode).

    `input_shape`: an int (tabular features) or (channels, height, width) for images.
    ConfigError for an unknown name, a bad parameter, a builder that fails, or a model that
    cannot take the input (e.g. cnn given tabular features)."""
    builder = resolve_builder(name)
    weights = dict(params or {})
    params = without_initial_weights(weights)
    shape = _input_shape(input_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"model.num_classes: must be an integer >= 1, got {num_classes!r} (example: 2)")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"model.seed: must be an integer, got {seed!r} (example: seed = 0)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed % 2**63)
        if name in MODELS:
            model = builder(params or {}, shape, num_classes)
        else:  # not our code: any failure is the configuration's
            try:
                model = builder(dict(params or {}), shape, num_classes)
            except ConfigError:
                raise
            except Exception as exc:
                raise ConfigError(f"model.name: building {name} failed ({type(exc).__name__}: "
                                  f"{' '.join(str(exc).split())[:200]}); check the [model] parameters") from None
            if not isinstance(model, nn.Module):
                raise ConfigError(f"model.name: {name} returned {type(model).__name__}, not a torch.nn.Module")
    model = model.float().train()
    if weights.get("init_weights"):
        load_initial_weights(model, weights["init_weights"], weights.get("init_weights_sha256"))
    return model


_NORM_LAYERS: tuple[type[nn.Module], ...] = tuple(
    cls for cls in (
        nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
        nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
        nn.GroupNorm, nn.LayerNorm, getattr(nn, "RMSNorm", None),
    ) if cls is not None
)


def norm_layer_names(model: nn.Module) -> list[str]:
    """The state_dict keys of the model's normalization layers (BatchNorm, InstanceNorm,
    GroupNorm, LayerNorm, RMSNorm: weights, biases, running statistics and
    num_batches_tracked), in state_dict order. FedBN keeps exactly these local."""
    found: set[str] = set()
    for prefix, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, _NORM_LAYERS):
            found.update((f"{prefix}.{key}" if prefix else key) for key in module.state_dict())
    return [key for key in model.state_dict() if key in found]
