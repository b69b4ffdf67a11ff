"""Model registry: deterministic initial weights from the plan's seed, in any process,
without touching the caller's random state; strict about names and parameters."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nodes.models import MODELS, build_model
from swarm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.contiguous().numpy().tobytes())
    return h.hexdigest()


def test_registry():
    assert {"mlp", "logreg"} <= set(MODELS)


@pytest.mark.parametrize(("name", "params"), [("mlp", {"hidden": [16, 8]}), ("logreg", {})])
def test_same_seed_same_weights_different_seed_different(name, params):
    a = build_model(name, params, 10, 3, seed=7)
    b = build_model(name, params, 10, 3, seed=7)
    c = build_model(name, params, 10, 3, seed=8)
    assert weights_digest(a) == weights_digest(b)
    assert weights_digest(a) != weights_digest(c)


def test_same_weights_in_another_process():
    here = weights_digest(build_model("mlp", {"hidden": [16, 8]}, 10, 3, seed=123))
    code = (
        "import hashlib, torch\n"
        "from nodes.models import build_model\n"
        "torch.manual_seed(999); torch.rand(17)\n"  # a different global state must not matter
        "m = build_model('mlp', {'hidden': [16, 8]}, 10, 3, seed=123)\n"
        "h = hashlib.sha256()\n"
        "for name, t in sorted(m.state_dict().items()):\n"
        "    h.update(name.encode()); h.update(t.contiguous().numpy().tobytes())\n"
        "print(h.hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == here


def test_global_rng_is_left_alone():
    torch.manual_seed(42)
    expected = torch.rand(5)
    torch.manual_seed(42)
    build_model("mlp", {"hidden": [32]}, 10, 3, seed=1)
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
    ],
)
def test_bad_params(name, params, field):
    with pytest.raises(ConfigError) as info:
        build_model(name, params, 10, 3, seed=0)
    assert str(info.value).startswith(field + ":")
