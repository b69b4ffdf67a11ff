"""Models from outside the registry: any monai.networks.nets class, torchvision model functions
and a hospital's own `module:function` builder, named in the plan like ours."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from nodes.models import build_model
from nodes.plan import check_plan_sections
from swarm.errors import ConfigError
from tests.file_data import png_classification, run_three_hospitals

BUILDERS = textwrap.dedent('''
    import torch
    from torch import nn

    def small_cnn(params, input_shape, num_classes):
        width = params.get("width", 4)
        return nn.Sequential(nn.Conv2d(input_shape[0], width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(width, num_classes))

    def broken(params, input_shape, num_classes):
        raise RuntimeError("the hospital's builder failed")

    def not_a_model(params, input_shape, num_classes):
        return "a string"
''')


@pytest.fixture
def builders(tmp_path, monkeypatch):
    (tmp_path / "hospital_models.py").write_text(BUILDERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_monai_network_is_built_from_the_plan_with_the_task_filled_in():
    pytest.importorskip("monai", reason='optional extra: pip install "swarm-hospitals[monai]"')
    params = {"init_features": 8, "growth_rate": 4, "block_config": [2, 2]}
    model = build_model("monai.DenseNet", params, (1, 32, 32), 3, seed=5)
    again = build_model("monai.DenseNet", params, (1, 32, 32), 3, seed=5)  # every site builds the same bytes
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 3)
    unet = build_model("monai.UNet", {"channels": [4, 8], "strides": [2]}, (1, 16, 16), 3, seed=0)
    assert unet(torch.zeros(1, 1, 16, 16)).shape == (1, 3, 16, 16)
    with pytest.raises(ConfigError, match=r"model\.name: monai\.networks\.nets has no network 'DenseNet9000'"):
        build_model("monai.DenseNet9000", {}, (1, 32, 32), 2, seed=0)
    with pytest.raises(ConfigError, match=r"model\.name: building monai\.UNet failed \(TypeError: .*check the \[model\] parameters"):
        build_model("monai.UNet", {"channels": [4, 8]}, (1, 16, 16), 2, seed=0)  # strides missing


def test_a_hospitals_own_builder_is_found_on_the_python_path(builders):
    model = build_model("hospital_models:small_cnn", {"width": 6}, (1, 16, 16), 2, seed=1)
    assert model(torch.zeros(3, 1, 16, 16)).shape == (3, 2) and model[0].out_channels == 6
    for name, message in (
        ("hospital_models:broken", r"building hospital_models:broken failed \(RuntimeError: the hospital's builder failed\)"),
        ("hospital_models:not_a_model", r"returned str, not a torch\.nn\.Module"),
        ("hospital_models:missing", r"hospital_models has no function 'missing'"),
        ("no_such_module:f", r"cannot import 'no_such_module'.*PYTHONPATH"),
    ):
        with pytest.raises(ConfigError, match=rf"^model\.name: .*{message}"):
            build_model(name, {}, (1, 16, 16), 2, seed=0)


def test_a_model_whose_output_does_not_fit_the_task_is_refused_by_the_plan(builders):
    task = {"input_shape": [1, 16, 16], "num_classes": 2, "kind": "segmentation"}
    with pytest.raises(ConfigError, match=r"model\.name"):
        check_plan_sections({"name": "braintorrent"}, {"name": "hospital_models:small_cnn"}, {}, task)


def test_torchvision_models_get_a_channel_adapter(tmp_path, monkeypatch):
    # torchvision from PyPI does not import beside the CPU torch on these machines: a stand-in
    # package with torchvision's calling convention checks how we call it.
    package = tmp_path / "torchvision"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(textwrap.dedent('''
        from torch import nn
        def resnet18(weights=None, num_classes=1000, **kwargs):
            assert weights is None
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        monkeypatch.delitem(sys.modules, module)
    grey = build_model("torchvision.resnet18", {}, (1, 32, 32), 5, seed=0)
    assert grey(torch.zeros(2, 1, 32, 32)).shape == (2, 5) and isinstance(grey[0], torch.nn.Conv2d) and grey[0].in_channels == 1
    rgb = build_model("torchvision.resnet18", {}, (3, 32, 32), 5, seed=0)
    assert rgb(torch.zeros(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(ConfigError, match=r"torchvision\.models has no model 'resnet9000'"):
        build_model("torchvision.resnet9000", {}, (3, 32, 32), 5, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("model", [
    'name = "monai.DenseNet"\ninit_features = 8\ngrowth_rate = 4\nblock_config = [2, 2]',
    'name = "hospital_models:small_cnn"\nwidth = 6',
])
def test_external_models_train_in_a_real_federation(tmp_path, builders, model):
    if "monai" in model:
        pytest.importorskip("monai", reason='optional extra: pip install "swarm-hospitals[monai]"')
    for site in range(3):
        png_classification(tmp_path / f"hospital-{site}", n=20, site=site, layout="folders")
    data = f'source = "folder"\nroot = "{tmp_path}/hospital-{{site}}"\nsize = 32'
    run_three_hospitals(tmp_path, data, model, rounds=2, python_path=builders)


# --- initial weights from a .safetensors file ------------------------------------------------

def save_weights(path, name="cnn", params=None, seed=123):
    from safetensors.torch import save_file

    shape, classes = ((1, 16, 16), 2) if name == "cnn" else (32, 3)
    model = build_model(name, params or {"channels": [4], "hidden": [8]}, shape, classes, seed=seed)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model.state_dict()


def test_initial_weights_are_loaded_only_when_their_digest_matches(tmp_path):
    from nodes.models import file_sha256

    path = tmp_path / "init.safetensors"
    wanted = save_weights(path)
    params = {"channels": [4], "hidden": [8], "init_weights": str(path), "init_weights_sha256": file_sha256(path)}
    model = build_model("cnn", params, (1, 16, 16), 2, seed=0)  # the seed no longer decides the weights: the file does
    assert all(torch.equal(model.state_dict()[k], v) for k, v in wanted.items())
    with pytest.raises(ConfigError, match=r"model\.init_weights: .*has sha256 .* but the plan says 0000000000000000"):
        build_model("cnn", params | {"init_weights_sha256": "0" * 64}, (1, 16, 16), 2, seed=0)
    with pytest.raises(ConfigError, match=r"model\.init_weights: .*gone\.safetensors not found; copy"):
        build_model("cnn", params | {"init_weights": str(tmp_path / "gone.safetensors")}, (1, 16, 16), 2, seed=0)
    other = tmp_path / "other.safetensors"
    save_weights(other, params={"channels": [6], "hidden": [8]})
    with pytest.raises(ConfigError, match=r"model\.init_weights: .*does not fit the plan's model"):
        build_model("cnn", params | {"init_weights": str(other), "init_weights_sha256": file_sha256(other)}, (1, 16, 16), 2, seed=0)
    with pytest.raises(ConfigError, match=r"model\.init_weights_sha256: missing"):
        build_model("cnn", {"init_weights": str(path)}, (1, 16, 16), 2, seed=0)


def test_the_manifest_carries_the_digest_and_each_site_reads_the_file_from_its_directory(tmp_path):
    from click.testing import CliRunner

    from nodes.cli import main as node_cli
    from nodes.launch import open_node
    from nodes.models import file_sha256
    from swarm.manifest import load_manifest
    from swarm.transport import InMemoryNetwork

    coordinator = tmp_path / "coordinator"
    coordinator.mkdir()
    wanted = save_weights(coordinator / "init.safetensors", name="mlp", params={"hidden": [8]})
    runner = CliRunner()
    cards = []
    for i, name in enumerate(("hospital-a", "hospital-b")):
        site = tmp_path / name
        assert runner.invoke(node_cli, ["init", "--site", str(site), "--name", name, "--endpoint", f"tcp://127.0.0.1:{7400 + i}",
                                        "--data-site", str(i), "--data-sites", "2"]).exit_code == 0
        cards += ["--member", str(site / "member.json")]
    (coordinator / "plan.toml").write_text(
        '[plan]\nrounds = 2\n[topology]\nname = "complete"\n[model]\nname = "mlp"\nhidden = [8]\ninit_weights = "init.safetensors"\n'
        '[task]\ninput_shape = [32]\nnum_classes = 3\n')
    manifest = tmp_path / "manifest.json"
    result = runner.invoke(node_cli, ["federation", "create", "--name", "w", "--plan", str(coordinator / "plan.toml"), *cards, "--out", str(manifest)])
    assert result.exit_code == 0, result.output
    plan_model = load_manifest(manifest).manifest.plan.model
    assert plan_model["init_weights"] == "init.safetensors" and plan_model["init_weights_sha256"] == file_sha256(coordinator / "init.safetensors")
    for name in ("hospital-a", "hospital-b"):
        assert runner.invoke(node_cli, ["federation", "sign", str(manifest), "--site", str(tmp_path / name)]).exit_code == 0
    for name in ("hospital-a", "hospital-b"):
        assert runner.invoke(node_cli, ["federation", "install", str(manifest), "--site", str(tmp_path / name)]).exit_code == 0
    network = InMemoryNetwork()
    with pytest.raises(ConfigError, match=r"model\.init_weights: .*hospital-a/init\.safetensors not found"):
        open_node(tmp_path / "hospital-a", lambda config, links, settings: network.endpoint(config.name))
    (tmp_path / "hospital-a" / "init.safetensors").write_bytes((coordinator / "init.safetensors").read_bytes())
    node, transport = open_node(tmp_path / "hospital-a", lambda config, links, settings: network.endpoint(config.name))
    try:
        assert all(torch.equal(node.learner.model.state_dict()[k], v) for k, v in wanted.items())
    finally:
        node.executor.shutdown(wait=True)
        node.store.close()
