"""Where a site trains: device selection and its errors, mixed precision, a site's own
[training] device/amp over the plan's, and models leaving the learner as float32 CPU tensors
so that sites on different hardware agree on digests. CI has no GPU: the CUDA test runs
where one is present."""

from __future__ import annotations


import pytest
import torch

from nodes.data import DataConfig, load_site
from nodes.devices import resolve_device
from nodes.learner import Learner, Task
from nodes.models import build_model
from nodes.training import TrainConfig, evaluate, train_local
from swarm.errors import ConfigError
from swarm.tensors import flatten_state, model_digest
from tests.conftest import join, start_nodes
from tests.test_cli import assert_user_error, create_manifest, invoke, three_sites  # noqa: F401 (fixture)
from nodes.cli import main as node_cli


@pytest.fixture(scope="module")
def site():
    return load_site(DataConfig(seed=2, quantity_skew=0.0, samples_per_site=300, test_samples=300), 0)


def test_a_cuda_device_that_is_not_there_is_one_line_with_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r'^training\.device: cuda is not available \(.*\); use device = "cpu" or "auto"'):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"^training\.device: cuda:2 is not available \(this machine has 2 CUDA device\(s\), cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")
    with pytest.raises(ConfigError, match=r'^training\.device: must be "auto", "cpu", "cuda" or "cuda:N", got \'gpu\''):
        resolve_device("gpu")


def test_training_config_takes_device_and_amp_and_refuses_amp_with_dp():
    config = TrainConfig.from_dict({"device": "cpu", "amp": "bf16"}, "training")
    assert (config.device, config.amp) == ("cpu", "bf16")
    assert (TrainConfig().device, TrainConfig().amp) == ("auto", "none")
    with pytest.raises(ConfigError, match=r"^training\.amp: must be one of: none, bf16, fp16, got 'fp8'"):
        TrainConfig.from_dict({"amp": "fp8"}, "training")
    with pytest.raises(ConfigError, match=r"^training\.device: .*got 'tpu'"):
        TrainConfig.from_dict({"device": "tpu"}, "training")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_and_keeps_float32_weights(site, amp):
    model = build_model("mlp", {"hidden": [64]}, site.num_features, site.num_classes, seed=0)
    before = evaluate(model, site.test_x, site.test_y)
    stats = train_local(model, site, TrainConfig(epochs=10, amp=amp, device="cpu"), seed=0)
    after = evaluate(model, site.test_x, site.test_y)
    assert stats["steps"] > 0 and after["loss"] < before["loss"] and after["accuracy"] > before["accuracy"] + 0.1
    assert all(p.dtype == torch.float32 for p in model.state_dict().values())


def test_published_snapshots_are_float32_cpu_tensors_whatever_the_precision(site):
    task = Task.from_plan({"name": "mlp", "hidden": [32]}, {"epochs": 1, "amp": "bf16", "device": "cpu"})
    learner = Learner(task, site, "h0")
    result = learner.run_round(1, [])
    state = learner.shared_state()
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in state.values())
    assert result.digest == model_digest(flatten_state(state))


def test_a_site_overrides_the_plans_device_and_amp(site):
    task = Task.from_plan({"name": "mlp"}, {"epochs": 1, "device": "auto"})
    learner = Learner.for_site(task, {"seed": 2, "samples_per_site": 60, "site": 0}, "h0", hardware={"device": "cpu", "amp": "bf16"})
    assert learner.device == torch.device("cpu") and learner.task.training.amp == "bf16"


def test_dp_training_stays_on_the_cpu(site, monkeypatch):
    pytest.importorskip("opacus", reason='optional extra: pip install "swarm-hospitals[dp]"')
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    private = {"epochs": 1, "dp_noise_multiplier": 1.0, "optimizer": "sgd"}
    assert Learner(Task.from_plan({"name": "logreg"}, private), site, "h0").device == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"^training\.device: DP-SGD training runs on the CPU here"):
        Learner(Task.from_plan({"name": "logreg"}, private | {"device": "cuda"}), site, "h0")


def test_run_with_a_missing_cuda_device_or_bad_site_training_exits_2(three_sites):
    root, sites = three_sites
    manifest = create_manifest(root, sites)
    for site_dir in sites:
        assert invoke(node_cli, ["federation", "sign", manifest, "--site", site_dir]).exit_code == 0
    assert invoke(node_cli, ["federation", "install", manifest, "--site", sites[0]]).exit_code == 0
    assert_user_error(invoke(node_cli, ["run", "--site", sites[0], "--device", "cuda:99"]), "training.device", "cuda:99", "not available")
    assert_user_error(invoke(node_cli, ["run", "--site", sites[0], "--device", "gpu"]), "--device: must be", "gpu")
    config = sites[0] / "site.toml"
    original = config.read_text()
    config.write_text(original + '\n[training]\ndevice = "cuda:99"\n')
    assert_user_error(invoke(node_cli, ["run", "--site", sites[0]]), "training.device", "cuda:99")
    config.write_text(original + "\n[training]\nepochs = 3\n")
    assert_user_error(invoke(node_cli, ["run", "--site", sites[0]]), "training.epochs", "only device and amp")


def test_neighbours_with_different_precision_train_together_and_verify(small_federation):
    """One site trains in bf16, the others in float32: they exchange, merge and log the same
    kind of float32 model."""
    from swarm.transport import InMemoryNetwork
    from nodes.audit import verify_sites

    config, federation = small_federation(nodes=3, rounds=3)
    mixed = next(iter(federation.sites.values()))
    (mixed / "site.toml").write_text((mixed / "site.toml").read_text() + '\n[training]\namp = "bf16"\ndevice = "cpu"\n')
    nodes, threads, stop = start_nodes(federation, InMemoryNetwork())
    join(threads, stop)
    assert all(node.protocol.published_seq >= 3 for node in nodes.values())
    assert nodes[next(iter(federation.sites))].learner.task.training.amp == "bf16"
    report = verify_sites(federation.sites.values())
    assert report.ok, report.failures


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CI is CPU-only)")
def test_a_gpu_site_and_a_cpu_site_agree_on_digests(site):
    """The same weights give the same digest whether the model lives on the GPU or the CPU,
    and one round on each ends close together (GPU kernels differ in the last bits)."""
    cpu = Learner(Task.from_plan({"name": "mlp"}, {"epochs": 1, "device": "cpu", "optimizer": "sgd"}), site, "h0")
    gpu = Learner(Task.from_plan({"name": "mlp"}, {"epochs": 1, "device": "cuda", "optimizer": "sgd"}), site, "h0")
    assert gpu.device.type == "cuda"
    assert model_digest(flatten_state(cpu.shared_state())) == model_digest(flatten_state(gpu.shared_state()))
    a, b = cpu.run_round(1, []), gpu.run_round(1, [])
    for key, value in cpu.shared_state().items():
        assert torch.allclose(value, gpu.shared_state()[key], atol=1e-4)
    assert a.digest == model_digest(flatten_state(cpu.shared_state())) and b.digest == model_digest(flatten_state(gpu.shared_state()))
    gpu.load(cpu.shared_state())
    assert model_digest(flatten_state(gpu.shared_state())) == a.digest
