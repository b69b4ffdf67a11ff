"""Model registry: deterministic initial weights from the plan's seed, in any process,
without touching the caller's random state; strict about names and parameters."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from nodes.models import MODELS, build_model, norm_layer_names
from swarm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.contiguous().numpy().tobytes())
    return h.hexdigest()


SMALL_CNN = {"channels": [4, 8], "hidden": [16]}
SMALL_UNET = {"depth": 2, "base": 4}
IMAGE = (1, 28, 28)


def test_registry():
    assert {"mlp", "logreg", "cnn", "unet"} <= set(MODELS)


@pytest.mark.parametrize(
    ("name", "params", "shape"),
    [("mlp", {"hidden": [16, 8]}, 10), ("logreg", {}, 10), ("cnn", SMALL_CNN, IMAGE),
     ("cnn", {**SMALL_CNN, "norm": "group"}, (3, 16, 16)), ("unet", SMALL_UNET, IMAGE)],
)
def test_same_seed_same_weights_different_seed_different(name, params, shape):
    a = build_model(name, params, shape, 3, seed=7)
    b = build_model(name, params, shape, 3, seed=7)
    c = build_model(name, params, shape, 3, seed=8)
    assert weights_digest(a) == weights_digest(b)
    assert weights_digest(a) != weights_digest(c)


def test_same_weights_in_another_process():
    models = [("mlp", {"hidden": [16, 8]}, 10), ("cnn", SMALL_CNN, IMAGE), ("unet", SMALL_UNET, IMAGE)]
    here = [weights_digest(build_model(name, params, shape, 3, seed=123)) for name, params, shape in models]
    code = (
        "import hashlib, torch\n"
        "from nodes.models import build_model\n"
        "torch.manual_seed(999); torch.rand(17)\n"  # a different global state must not matter
        f"for name, params, shape in {models!r}:\n"
        "    m = build_model(name, params, shape, 3, seed=123)\n"
        "    h = hashlib.sha256()\n"
        "    for key, t in sorted(m.state_dict().items()):\n"
        "        h.update(key.encode()); h.update(t.contiguous().numpy().tobytes())\n"
        "    print(h.hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.split() == here


def test_global_rng_is_left_alone():
    torch.manual_seed(42)
    expected = torch.rand(5)
    torch.manual_seed(42)
    build_model("mlp", {"hidden": [32]}, 10, 3, seed=1)
    build_model("unet", SMALL_UNET, IMAGE, 2, seed=1)
    assert torch.equal(torch.rand(5), expected)


def test_shapes_and_dtype():
    x = torch.randn(4, 12)
    mlp = build_model("mlp", {"hidden": [8, 8, 8], "activation": "tanh"}, 12, 5, seed=0)
    assert mlp(x).shape == (4, 5)
    linear_layers = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linear_layers] == [8, 8, 8, 5]
    logreg = build_model("logreg", None, 12, 2, seed=0)
    assert logreg(x).shape == (4, 2)
    assert all(p.dtype == torch.float32 for p in mlp.parameters())
    assert mlp.training


def test_unknown_model():
    with pytest.raises(ConfigError, match=r"^model\.name: .*'resnet9000'.*example: name = \"mlp\""):
        build_model("resnet9000", {}, 10, 3, seed=0)


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("mlp", {"hidden": "64"}, "model.params.hidden"),
        ("mlp", {"hidden": []}, "model.params.hidden"),
        ("mlp", {"hidden": [64, 0]}, "model.params.hidden"),
        ("mlp", {"hidden": [True]}, "model.params.hidden"),
        ("mlp", {"activation": "sigmoidish"}, "model.params.activation"),
        ("mlp", {"depth": 3}, "model.params.depth"),
        ("logreg", {"hidden": [8]}, "model.params.hidden"),
        ("cnn", {"channels": []}, "model.params.channels"),
        ("cnn", {"channels": [8, 0]}, "model.params.channels"),
        ("cnn", {"channels": [4, 4, 4, 4, 4, 4]}, "model.params.channels"),  # 28 px halves only 4 times
        ("cnn", {"hidden": 64}, "model.params.hidden"),
        ("cnn", {"norm": "layer"}, "model.params.norm"),
        ("cnn", {"depth": 2}, "model.params.depth"),
        ("unet", {"depth": 0}, "model.params.depth"),
        ("unet", {"depth": 5}, "model.params.depth"),  # 28 px halves only 4 times
        ("unet", {"base": 0}, "model.params.base"),
        ("unet", {"base": "16"}, "model.params.base"),
        ("unet", {"norm": None}, "model.params.norm"),
        ("unet", {"channels": [4]}, "model.params.channels"),
    ],
)
def test_bad_params(name, params, field):
    shape = 10 if name in ("mlp", "logreg") else IMAGE
    with pytest.raises(ConfigError) as info:
        build_model(name, params, shape, 3, seed=0)
    message = str(info.value)
    assert message.startswith(field + ":") and "\n" not in message


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 28, 28), (3, 17, 9)])
def test_cnn_output_shape(norm, shape):
    model = build_model("cnn", {**SMALL_CNN, "norm": norm}, shape, 7, seed=0)
    assert model(torch.randn(5, *shape)).shape == (5, 7)
    assert model.training and all(p.dtype == torch.float32 for p in model.parameters())


def test_cnn_defaults_and_layers():
    model = build_model("cnn", None, IMAGE, 2, seed=0)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32]
    assert all(c.bias is None for c in convs)  # batch norm follows each
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 2
    assert model.head.out_features == 2 and model.fc1.out_features == 64
    bare = build_model("cnn", {"channels": [4], "hidden": [], "norm": "none"}, IMAGE, 2, seed=0)
    assert bare.block1.conv.bias is not None
    assert [n for n, m in bare.named_modules() if isinstance(m, nn.Linear)] == ["head"]
    assert bare.head.in_features == 4 * 14 * 14


@pytest.mark.parametrize(("shape", "depth"), [((1, 28, 28), 2), ((3, 32, 32), 3), ((2, 27, 13), 2), ((1, 8, 8), 3)])
def test_unet_output_shape(shape, depth):
    model = build_model("unet", {"depth": depth, "base": 4}, shape, 3, seed=0)
    assert model(torch.randn(2, *shape)).shape == (2, 3, *shape[1:])


def test_unet_widths():
    model = build_model("unet", {"depth": 3, "base": 8, "norm": "none"}, IMAGE, 2, seed=0)
    widths = [block[1].conv.out_channels for block in model.down]
    assert widths == [8, 16, 32, 64]
    assert [block[1].conv.out_channels for block in model.dec] == [32, 16, 8]
    assert model.head.out_channels == 2 and model.head.kernel_size == (1, 1)


def test_tabular_models_flatten_images_explicitly():
    x = torch.randn(3, 1, 28, 28)
    mlp = build_model("mlp", {"hidden": [8]}, IMAGE, 4, seed=0)
    logreg = build_model("logreg", {}, (3, 4, 5), 2, seed=0)
    assert isinstance(mlp[0], nn.Flatten) and mlp[1].in_features == 28 * 28
    assert mlp(x).shape == (3, 4)
    assert logreg(torch.randn(3, 3, 4, 5)).shape == (3, 2)
    # Tabular input: no flatten layer, same keys as ever; a 1-tuple means the same as an int.
    assert list(build_model("logreg", {}, 12, 2, seed=0).state_dict()) == ["0.weight", "0.bias"]
    assert weights_digest(build_model("mlp", {}, (12,), 2, seed=3)) == weights_digest(build_model("mlp", {}, 12, 2, seed=3))


@pytest.mark.parametrize("name", ["cnn", "unet"])
def test_image_models_refuse_tabular_input(name):
    with pytest.raises(ConfigError, match=rf"^model\.name: {name} needs image input \(channels, height, width\), got 32 tabular features; use mlp or logreg"):
        build_model(name, {}, 32, 2, seed=0)
    with pytest.raises(ConfigError, match=rf"^model\.name: {name} needs image input"):
        build_model(name, {}, (32,), 2, seed=0)


@pytest.mark.parametrize("shape", [0, -3, True, 2.5, "28", (1, 28), (1, 8, 28, 28, 1), (1, 0, 28), (1, 28.0, 28), ()])
def test_bad_input_shape(shape):
    with pytest.raises(ConfigError, match=r"^model\.input_shape: must be a number of features >= 1, \(channels, height, width\) or \(channels, depth, height, width\), got "):
        build_model("mlp", {}, shape, 2, seed=0)


def test_norm_layer_names_cnn_with_batch_norm():
    model = build_model("cnn", {"channels": [4, 8], "hidden": [16], "norm": "batch"}, IMAGE, 2, seed=0)
    stats = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert norm_layer_names(model) == [f"block{i}.norm.{s}" for i in (1, 2) for s in stats]
    assert set(model.state_dict()) - set(norm_layer_names(model)) == {
        "block1.conv.weight", "block2.conv.weight", "fc1.weight", "fc1.bias", "head.weight", "head.bias"}


def test_norm_layer_names_other_models():
    assert norm_layer_names(build_model("cnn", {**SMALL_CNN, "norm": "none"}, IMAGE, 2, seed=0)) == []
    assert norm_layer_names(build_model("unet", {**SMALL_UNET, "norm": "none"}, IMAGE, 2, seed=0)) == []
    assert norm_layer_names(build_model("mlp", {}, 10, 2, seed=0)) == []
    group = build_model("cnn", {**SMALL_CNN, "norm": "group"}, IMAGE, 2, seed=0)
    assert norm_layer_names(group) == ["block1.norm.weight", "block1.norm.bias", "block2.norm.weight", "block2.norm.bias"]
    unet = build_model("unet", SMALL_UNET, IMAGE, 2, seed=0)
    # Two conv blocks per level: 3 levels down, 2 up; 5 tensors per batch norm.
    assert len(norm_layer_names(unet)) == 10 * 5
    assert all(".norm." in key for key in norm_layer_names(unet))
    # A user's own module: layer norm, a root-level norm, and a shared norm registered twice.
    shared = nn.LayerNorm(3)
    custom = nn.Sequential(nn.Linear(3, 3), shared, nn.Sequential(nn.BatchNorm1d(3), shared))
    assert norm_layer_names(custom) == [
        "1.weight", "1.bias", "2.0.weight", "2.0.bias", "2.0.running_mean", "2.0.running_var",
        "2.0.num_batches_tracked", "2.1.weight", "2.1.bias"]
    assert norm_layer_names(nn.GroupNorm(1, 4)) == ["weight", "bias"]
