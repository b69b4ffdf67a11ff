"""Differential privacy for local training: DP-SGD through Opacus (nodes.privacy)."""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest
import torch

from nodes.data import DataConfig, SiteData, load_site
from nodes.models import build_model
from nodes.privacy import PrivacyBudget
from nodes.training import TrainConfig, evaluate, train_local
from swarm.errors import ConfigError

HAVE_OPACUS = importlib.util.find_spec("opacus") is not None
needs_opacus = pytest.mark.skipif(
    not HAVE_OPACUS, reason='opacus is not installed (optional extra: pip install "swarm-hospitals[dp]")')


@pytest.fixture(scope="module")
def site() -> SiteData:
    return load_site(DataConfig(seed=1, quantity_skew=0.0, samples_per_site=200, test_samples=300), 0)


def _logreg(site: SiteData, seed: int = 0) -> torch.nn.Module:
    return build_model("logreg", {}, site.num_features, site.num_classes, seed=seed)


def _images(segmentation: bool) -> SiteData:
    g = torch.Generator().manual_seed(0)
    labels = (6, 8, 8) if segmentation else (6,)
    return SiteData("img", torch.rand(6, 1, 8, 8, generator=g), torch.randint(0, 2, labels, generator=g),
                    torch.rand(2, 1, 8, 8, generator=g), torch.zeros(2, *labels[1:], dtype=torch.long), 64, 2)


def _dp(**overrides) -> TrainConfig:
    return TrainConfig(**{"dp_noise_multiplier": 1.0, **overrides})


# -- the [training] table -----------------------------------------------------------------

def test_dp_is_off_by_default():
    config = TrainConfig()
    assert (config.dp_noise_multiplier, config.dp_max_grad_norm, config.dp_delta) == (0.0, 1.0, 1e-5)


@pytest.mark.parametrize("key, value", [
    ("dp_noise_multiplier", -1.0), ("dp_noise_multiplier", "1"), ("dp_noise_multiplier", True),
    ("dp_noise_multiplier", math.inf), ("dp_noise_multiplier", math.nan),
    ("dp_max_grad_norm", 0.0), ("dp_max_grad_norm", -1), ("dp_max_grad_norm", math.inf),
    ("dp_delta", 0.0), ("dp_delta", 1.0), ("dp_delta", 2), ("dp_delta", "1e-5"),
])
def test_bad_dp_settings_name_the_field(key, value):
    with pytest.raises(ConfigError, match=rf"^training\.{key}: must be .*\(example: {key} = "):
        TrainConfig.from_dict({key: value}, "training")


@needs_opacus
def test_good_dp_settings_parse():
    config = TrainConfig.from_dict({"dp_noise_multiplier": 2, "dp_max_grad_norm": 0.5, "dp_delta": 1e-6}, "training")
    assert (config.dp_noise_multiplier, config.dp_max_grad_norm, config.dp_delta) == (2.0, 0.5, 1e-6)


# -- without opacus -----------------------------------------------------------------------

def _hide_opacus(monkeypatch):
    monkeypatch.setitem(sys.modules, "opacus", None)  # `import opacus` now raises ImportError


def test_missing_opacus_is_a_one_line_config_error(monkeypatch, site):
    _hide_opacus(monkeypatch)
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({"dp_noise_multiplier": 1.0}, "training")
    message = str(info.value)
    assert message.startswith("training.dp_noise_multiplier: ")
    assert 'pip install "swarm-hospitals[dp]"' in message and "\n" not in message
    # train_local says the same for a config built while opacus was there.
    config = TrainConfig()
    object.__setattr__(config, "dp_noise_multiplier", 1.0)
    with pytest.raises(ConfigError, match=r'^training\.dp_noise_multiplier: .*pip install "swarm-hospitals\[dp\]"'):
        train_local(_logreg(site), site, config, seed=0)


def test_without_dp_opacus_is_not_needed(monkeypatch, site):
    _hide_opacus(monkeypatch)
    stats = train_local(_logreg(site), site, TrainConfig(), seed=0, privacy=PrivacyBudget())
    assert "epsilon" not in stats and math.isfinite(stats["loss"])


# -- epsilon --------------------------------------------------------------------------------

@needs_opacus
def test_epsilon_is_reported_and_accumulates_over_rounds(site):
    model, budget = _logreg(site), PrivacyBudget(seed=0)
    epsilons = [train_local(model, site, _dp(), seed=r, privacy=budget)["epsilon"] for r in range(3)]
    assert all(math.isfinite(e) and e > 0 for e in epsilons)
    assert epsilons[0] < epsilons[1] < epsilons[2]
    assert budget.rounds == 3 and budget.steps == 3 * math.ceil(site.train_samples / 32)
    # One call of 3 epochs spends exactly what three 1-epoch rounds spend.
    three_epochs = train_local(_logreg(site), site, _dp(epochs=3), seed=0, privacy=PrivacyBudget(seed=0))
    assert three_epochs["epsilon"] == pytest.approx(epsilons[2])
    # Without a ledger, epsilon covers the one call.
    alone = train_local(model, site, _dp(), seed=9)
    assert alone["epsilon"] == pytest.approx(epsilons[0])
    # The ledger survives a checkpoint.
    restored = PrivacyBudget()
    restored.load_state_dict(budget.state_dict())
    assert restored.epsilon(1e-5) == pytest.approx(epsilons[2]) and restored.rounds == 3


@needs_opacus
def test_more_noise_means_smaller_epsilon_and_delta_matters(site):
    def epsilon(**overrides):
        return train_local(_logreg(site), site, _dp(**overrides), seed=0, privacy=PrivacyBudget(seed=0))["epsilon"]
    low, high = epsilon(dp_noise_multiplier=0.8), epsilon(dp_noise_multiplier=2.0)
    assert high < low
    assert epsilon(dp_noise_multiplier=0.8, dp_delta=1e-3) < low


# -- what DP-SGD does to training ---------------------------------------------------------

@needs_opacus
def test_huge_noise_barely_learns(site):
    plain, noisy = _logreg(site), _logreg(site)
    untrained = evaluate(plain, site.test_x, site.test_y)["accuracy"]
    train_local(plain, site, TrainConfig(epochs=6), seed=0)
    train_local(noisy, site, _dp(epochs=6, dp_noise_multiplier=1000.0), seed=0, privacy=PrivacyBudget(seed=0))
    learned = evaluate(plain, site.test_x, site.test_y)["accuracy"]
    private = evaluate(noisy, site.test_x, site.test_y)["accuracy"]
    assert learned > untrained + 0.2
    assert private < untrained + 0.1 and private < learned - 0.15


@needs_opacus
def test_per_sample_clipping_bounds_the_update(site):
    sgd = dict(optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.0, epochs=2)

    def change(config, privacy=None):
        model = _logreg(site)
        start = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        stats = train_local(model, site, config, seed=0, privacy=privacy)
        return float((torch.cat([p.detach().flatten() for p in model.parameters()]) - start).norm()), stats

    free, _ = change(TrainConfig(**sgd))
    clip = 1e-6
    clipped, stats = change(TrainConfig(**sgd, dp_noise_multiplier=1e-9, dp_max_grad_norm=clip), PrivacyBudget(seed=0))
    assert free > 0.05
    assert 0 < clipped
    # Each step moves the weights by at most lr * (records drawn * clip) / expected batch,
    # and a Poisson sample of 200 records at rate 1/7 stays far below 3x its mean of 28.6.
    assert clipped <= stats["steps"] * 0.1 * clip * 3 * 1.01


@needs_opacus
def test_fedprox_still_pulls_towards_the_start_under_dp(site):
    def distance(mu):
        model = _logreg(site)
        start = [p.detach().clone() for p in model.parameters()]
        config = _dp(optimizer="sgd", lr=0.05, epochs=3, prox_mu=mu, dp_noise_multiplier=0.5)
        train_local(model, site, config, seed=0, privacy=PrivacyBudget(seed=0))
        return sum(float((p.detach() - s).norm()) for p, s in zip(model.parameters(), start))
    assert distance(10.0) < 0.5 * distance(0.0)


@needs_opacus
def test_noise_is_secret_unless_a_seed_is_given(site):
    """The plan's seeds are known to the whole federation: the noise must not follow them."""
    def weights(privacy):
        model = _logreg(site)
        train_local(model, site, _dp(), seed=0, privacy=privacy)
        return model.state_dict()["0.weight"]
    assert not torch.equal(weights(PrivacyBudget()), weights(PrivacyBudget()))
    assert torch.equal(weights(PrivacyBudget(seed=4)), weights(PrivacyBudget(seed=4)))


@needs_opacus
def test_dp_training_leaves_global_rng_alone(site):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    train_local(_logreg(site), site, _dp(), seed=0, privacy=PrivacyBudget(seed=0))
    assert torch.equal(torch.rand(3), expected)


# -- the caller's model --------------------------------------------------------------------

@needs_opacus
@pytest.mark.parametrize("name, params, segmentation", [
    ("mlp", {"hidden": [8]}, False),
    ("cnn", {"norm": "group", "channels": [4], "hidden": []}, False),
    ("cnn", {"norm": "none", "channels": [4], "hidden": []}, False),
    ("unet", {"norm": "group", "depth": 1, "base": 4}, True),
])
def test_model_object_and_state_dict_keys_are_kept(name, params, segmentation):
    data = _images(segmentation)
    model = build_model(name, params, (1, 8, 8), 2, seed=0)
    keys, tensors = list(model.state_dict()), list(model.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = train_local(model, data, _dp(batch_size=2, epochs=2, prox_mu=0.1), seed=0, privacy=PrivacyBudget(seed=0))
    assert math.isfinite(stats["epsilon"]) and math.isfinite(stats["loss"])
    assert list(model.state_dict()) == keys
    assert all(a is b for a, b in zip(model.parameters(), tensors))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    # Nothing of Opacus is left behind: no hooks, no per-sample attributes.
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks and not module._forward_pre_hooks
        assert not hasattr(module, "activations")
    for p in model.parameters():
        assert not vars(p), vars(p).keys()
    model.load_state_dict(build_model(name, params, (1, 8, 8), 2, seed=1).state_dict())


@needs_opacus
def test_batchnorm_is_refused_with_the_models_that_work():
    data = _images(False)
    model = build_model("cnn", {"norm": "batch", "channels": [4], "hidden": []}, (1, 8, 8), 2, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError) as info:
        train_local(model, data, _dp(), seed=0, privacy=PrivacyBudget())
    message = str(info.value)
    assert message.startswith("training.dp_noise_multiplier: ") and "\n" not in message
    assert "BatchNorm" in message
    assert 'mlp, logreg, cnn with norm = "group" or "none", unet with norm = "group" or "none"' in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_budget_state_is_plain_data():
    budget = PrivacyBudget()
    assert budget.epsilon(1e-5) == 0.0 and budget.steps == 0
    budget.record(1.0, 0.1, 5)
    budget.record(1.0, 0.1, 5)
    budget.record(2.0, 0.1)
    assert budget.history == [(1.0, 0.1, 10), (2.0, 0.1, 1)] and budget.steps == 11
    state = budget.state_dict()
    assert state == {"mechanism": "rdp", "rounds": 0, "history": [[1.0, 0.1, 10], [2.0, 0.1, 1]]}
    with pytest.raises(ConfigError):
        PrivacyBudget().load_state_dict({**state, "mechanism": "prv"})


def test_a_federation_with_dp_signs_a_growing_epsilon_into_each_entry(tmp_path):
    pytest.importorskip("opacus", reason='optional extra: pip install "swarm-hospitals[dp]"')
    from scenarios.config import ScenarioConfig
    from scenarios.federation import create_federation
    from swarm.transport import InMemoryNetwork
    from tests.conftest import join, start_nodes, write_scenario

    path = write_scenario(tmp_path, nodes=2, rounds=3)
    path.write_text(path.read_text().replace("epochs = 1", "epochs = 1\ndp_noise_multiplier = 1.0"))
    federation = create_federation(ScenarioConfig.load(path), tmp_path / "run")
    nodes, threads, stop = start_nodes(federation, InMemoryNetwork())
    join(threads, stop)
    for node in nodes.values():
        epsilons = [entry.body.metrics["epsilon"] for entry in node.store.own_log.entries]
        node.store.close()
        assert len(epsilons) == 3 and 0 < epsilons[0] < epsilons[1] < epsilons[2]
