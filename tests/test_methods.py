"""The comparison methods that do not run as node processes: single, cross, mix, and the
simulated-server baselines fedavg, fedsgd, fedprox (scenarios/methods.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

import scenarios.methods as methods
from nodes.data import DataConfig, load_all_sites
from nodes.models import build_model
from nodes.training import TrainConfig
from scenarios.methods import METHOD_NAMES, METHODS, MethodResult, run_method
from swarm.errors import ConfigError

CLASSIFICATION = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc")
TRAIN = TrainConfig(epochs=1, batch_size=32)


@pytest.fixture(scope="module")
def sites():
    return load_all_sites(DataConfig(sites=3, samples_per_site=60, test_samples=100))


def _run(name, sites, *, model="mlp", params=None, train=TRAIN, rounds=3, seed=0, **kw) -> MethodResult:
    first = sites[0]
    return run_method(name, sites, model, {"hidden": [16]} if params is None else params,
                      tuple(first.train_x.shape[1:]) if first.train_x.dim() > 2 else first.train_x.shape[1],
                      kw.pop("num_classes", 3), train, rounds, seed, **kw)


def _same_states(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _same_metrics(a: MethodResult, b: MethodResult) -> bool:
    def eq(x, y):
        return x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
    return a.sites.keys() == b.sites.keys() and all(
        eq(a.sites[s][m], b.sites[s][m]) for s in a.sites for m in a.metrics)


def test_registry_and_structure(sites):
    assert set(METHODS) == set(METHOD_NAMES) == {"single", "cross", "mix", "fedavg", "fedsgd", "fedprox"}
    names = [s.name for s in sites]
    for name in METHOD_NAMES:
        events = []
        result = METHODS[name](sites, "mlp", {"hidden": [16]}, 32, 3, TRAIN, 3, 0, progress=events.append)
        assert result.method == name and result.task == "classification"
        assert result.metrics == CLASSIFICATION
        assert list(result.sites) == names
        for row in result.sites.values():
            assert set(row) == set(CLASSIFICATION)
            assert all(0.0 <= row[m] <= 1.0 for m in CLASSIFICATION)
        for m in CLASSIFICATION:
            assert result.overall[m] == pytest.approx(sum(r[m] for r in result.sites.values()) / 3)
        assert [h["round"] for h in result.history] == [1, 2, 3]
        assert all(set(h) == {"round", "train_loss", *CLASSIFICATION} for h in result.history)
        assert all(result.history[-1][m] == pytest.approx(result.overall[m]) for m in CLASSIFICATION)
        assert [e["round"] for e in events] == [1, 2, 3] and events[0]["method"] == name
        assert result.to_dict()["overall"] == result.overall and "states" not in result.to_dict()
    cross = _run("cross", sites)
    assert set(cross.details["matrix"]) == set(names)


def test_deterministic_and_history_off(sites):
    a = _run("fedavg", sites, seed=5)
    b = _run("fedavg", sites, seed=5, history=False)
    assert _same_metrics(a, b) and _same_states(a.states["global"], b.states["global"])
    assert b.history == a.history[-1:]
    c = _run("fedavg", sites, seed=6)
    assert not _same_states(a.states["global"], c.states["global"])


def test_fedavg_with_one_site_is_single(sites):
    train = TrainConfig(epochs=2, batch_size=16)
    single = _run("single", sites[1:2], train=train, rounds=3, seed=4)
    fedavg = _run("fedavg", sites[1:2], train=train, rounds=3, seed=4)
    assert _same_states(single.states[sites[1].name], fedavg.states["global"])
    assert _same_metrics(single, fedavg)
    assert single.history == fedavg.history


def test_fedprox_with_mu_zero_is_fedavg_and_prox_mu_is_for_fedprox_only(sites):
    fedavg = _run("fedavg", sites, seed=2)
    fedprox0 = _run("fedprox", sites, seed=2, mu=0.0)
    assert _same_states(fedavg.states["global"], fedprox0.states["global"]) and _same_metrics(fedavg, fedprox0)
    # train.prox_mu does not turn FedAvg into FedProx ...
    fedavg_mu = _run("fedavg", sites, seed=2, train=TrainConfig(epochs=1, batch_size=32, prox_mu=0.5))
    assert _same_states(fedavg.states["global"], fedavg_mu.states["global"])
    # ... but is FedProx's default mu, and a real mu changes the result.
    fedprox = _run("fedprox", sites, seed=2, mu=0.5)
    default = _run("fedprox", sites, seed=2, train=TrainConfig(epochs=1, batch_size=32, prox_mu=0.5))
    assert fedprox.details["mu"] == default.details["mu"] == 0.5
    assert _same_states(fedprox.states["global"], default.states["global"])
    assert not _same_states(fedavg.states["global"], fedprox.states["global"])


def _gradient_descent(x: Tensor, y: Tensor, seed: int, lr: float, steps: int) -> dict[str, Tensor]:
    """Plain full-batch gradient descent on logistic regression, by hand."""
    model = build_model("logreg", {}, x.shape[1], 3, seed)
    w, b = model[0].weight.detach().double().clone(), model[0].bias.detach().double().clone()
    x64 = x.double()
    onehot = nn.functional.one_hot(y, 3).double()
    for _ in range(steps):
        p = torch.softmax(x64 @ w.T + b, dim=1)
        d = (p - onehot) / x.shape[0]          # d(mean CE)/d(logits)
        w, b = w - lr * d.T @ x64, b - lr * d.sum(0)
    return {"0.weight": w, "0.bias": b}


def test_fedsgd_is_full_batch_gradient_descent(sites):
    train = TrainConfig(epochs=2, weight_decay=0.0)
    one = _run("fedsgd", sites[:1], model="logreg", params={}, train=train, rounds=3, seed=1, server_lr=0.3)
    assert one.details["steps"] == 6 and len(one.history) == 3
    want = _gradient_descent(sites[0].train_x, sites[0].train_y, 1, 0.3, 6)
    for key, value in want.items():
        torch.testing.assert_close(one.states["global"][key].double(), value, rtol=1e-4, atol=1e-5)
    # With several sites, the sample-weighted mean of per-site mean gradients is the pooled
    # gradient: FedSGD is gradient descent on the pooled data.
    many = _run("fedsgd", sites, model="logreg", params={}, train=train, rounds=2, seed=1, server_lr=0.3)
    pooled = _gradient_descent(torch.cat([s.train_x for s in sites]), torch.cat([s.train_y for s in sites]),
                               1, 0.3, 4)
    for key, value in pooled.items():
        torch.testing.assert_close(many.states["global"][key].double(), value, rtol=1e-4, atol=1e-5)


def test_fedsgd_weight_decay_and_batches(sites):
    a = _run("fedsgd", sites[:1], model="logreg", params={}, train=TrainConfig(weight_decay=0.1), rounds=1,
             seed=1, server_lr=0.3)
    want = _gradient_descent(sites[0].train_x, sites[0].train_y, 1, 0.3, 0)
    model = build_model("logreg", {}, 32, 3, 1)
    x, y = sites[0].train_x, sites[0].train_y
    loss = nn.functional.cross_entropy(model(x), y)
    gw, gb = torch.autograd.grad(loss, [model[0].weight, model[0].bias])
    torch.testing.assert_close(a.states["global"]["0.weight"].double(),
                               want["0.weight"] - 0.3 * (gw.double() + 0.1 * want["0.weight"]), rtol=1e-4, atol=1e-5)
    small = _run("fedsgd", sites, rounds=2, batch_size=8)
    assert small.details["batch_size"] == 8 and math.isfinite(small.overall["accuracy"])


def test_cross_never_tests_a_site_on_its_own_split(sites, monkeypatch):
    trained_on: dict[int, set[int]] = {}
    tested_on: list[tuple[int, int]] = []
    real_train, real_metrics = methods.train_local, methods.site_metrics

    def train_local(model, data, config, seed):
        trained_on.setdefault(id(model), set()).add(id(data))
        return real_train(model, data, config, seed)

    def site_metrics(model, x, y, task):
        tested_on.append((id(model), id(x)))
        return real_metrics(model, x, y, task)

    monkeypatch.setattr(methods, "train_local", train_local)
    monkeypatch.setattr(methods, "site_metrics", site_metrics)
    result = _run("cross", sites, rounds=2)
    site_of_test = {id(s.test_x): id(s) for s in sites}
    assert len(tested_on) == 2 * 3 * 2  # every round: 3 models x 2 other sites
    for model, x in tested_on:
        assert site_of_test[x] not in trained_on[model]
        assert len(trained_on[model]) == 1
    matrix = result.details["matrix"]
    for train_site, row in matrix.items():
        assert train_site not in row and len(row) == 2
        for m in CLASSIFICATION:
            assert result.sites[train_site][m] == pytest.approx(sum(r[m] for r in row.values()) / 2)
    # Cross trains exactly Single's models.
    single = _run("single", sites, rounds=2)
    assert all(_same_states(single.states[n], result.states[n]) for n in single.states)


def test_cross_detectably_skips_own_site():
    # Site a's test split is all positives, b's and c's all negatives, so the metrics show
    # which split was scored: only-positive splits have NaN specificity, only-negative
    # ones NaN sensitivity. Model a's row must show only negatives-only splits.
    g = torch.Generator().manual_seed(0)

    def site(name, test_label):
        return SimpleNamespace(name=name, train_x=torch.randn(10, 4, generator=g), train_y=torch.arange(10) % 2,
                               test_x=torch.randn(6, 4, generator=g), test_y=torch.full((6,), test_label))
    data = [site("a", 1), site("b", 0), site("c", 0)]
    result = run_method("cross", data, "logreg", {}, 4, 2, TRAIN, 1, 0)
    # A test split with only negatives has NaN sensitivity; only positives, NaN specificity.
    matrix = result.details["matrix"]
    assert math.isnan(matrix["b"]["a"]["specificity"]) and math.isnan(matrix["c"]["a"]["specificity"])
    assert math.isnan(matrix["b"]["c"]["sensitivity"]) and math.isnan(matrix["c"]["b"]["sensitivity"])
    assert list(matrix["a"]) == ["b", "c"]
    assert all(math.isnan(row["sensitivity"]) and not math.isnan(row["specificity"]) for row in matrix["a"].values())
    assert math.isnan(result.sites["a"]["sensitivity"])


def test_mix_beats_single_on_the_skewed_default_data():
    gaps = []
    for data_seed in range(3):
        data = load_all_sites(DataConfig(sites=3, samples_per_site=60, test_samples=100, seed=data_seed))
        mix = _run("mix", data, rounds=15, seed=data_seed, params={"hidden": [32]})
        single = _run("single", data, rounds=15, seed=data_seed, params={"hidden": [32]})
        gaps.append(mix.overall["accuracy"] - single.overall["accuracy"])
    assert sum(gaps) / len(gaps) > 0.04, gaps


@dataclass
class _Images:
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


def test_segmentation_smoke():
    g = torch.Generator().manual_seed(0)

    def site(shift):
        x = torch.rand(10, 1, 8, 8, generator=g) + shift
        y = (x[:, 0] > 0.5 + shift).long()
        return _Images(x[:6], y[:6], x[6:], y[6:])
    data = [site(0.0), site(0.1), site(-0.1)]
    for name in METHOD_NAMES:
        result = run_method(name, data, "unet", {"depth": 1, "base": 4}, (1, 8, 8), 2, TRAIN, 2, 0)
        assert result.task == "segmentation" and result.metrics == ("dice", "pixel_accuracy")
        assert list(result.sites) == ["site-0", "site-1", "site-2"]
        for row in result.sites.values():
            assert set(row) == {"dice", "pixel_accuracy"} and 0.0 <= row["pixel_accuracy"] <= 1.0
        assert [h["round"] for h in result.history] == [1, 2]
    # FedSGD averages the BatchNorm statistics its sites' forward passes produced.
    fedsgd = run_method("fedsgd", data, "unet", {"depth": 1, "base": 4}, (1, 8, 8), 2, TRAIN, 1, 0)
    fresh = build_model("unet", {"depth": 1, "base": 4}, (1, 8, 8), 2, 0).state_dict()
    key = next(k for k in fresh if k.endswith("running_mean"))
    assert not torch.equal(fresh[key], fedsgd.states["global"][key])


def test_bad_input(sites):
    with pytest.raises(ConfigError, match=r"compare\.methods.*'fedfoo'.*single, cross, mix, fedavg, fedsgd, fedprox"):
        _run("fedfoo", sites)
    with pytest.raises(ConfigError, match=r"compare\.fedsgd\.lr: unknown parameter"):
        _run("fedsgd", sites, lr=0.1)
    with pytest.raises(ConfigError, match=r"compare\.fedprox\.mu"):
        _run("fedprox", sites, mu=-1.0)
    with pytest.raises(ConfigError, match=r"compare\.single\.mu"):
        _run("single", sites, mu=0.1)
    with pytest.raises(ConfigError, match="cross needs at least 2 sites"):
        _run("cross", sites[:1])
    with pytest.raises(ConfigError, match="compare.rounds"):
        _run("mix", sites, rounds=0)
    with pytest.raises(ConfigError, match="model.name"):
        run_method("single", sites, "cnn", {}, 32, 3, TRAIN, 1, 0)


def test_every_method_is_scored_on_the_same_held_out_set(sites):
    held_out = SimpleNamespace(x=torch.cat([s.test_x[:30] for s in sites]), y=torch.cat([s.test_y[:30] for s in sites]))
    for name in METHOD_NAMES:
        result = _run(name, sites, rounds=2, held_out=held_out)
        one_model = name in ("mix", "fedavg", "fedsgd", "fedprox")
        assert len(result.global_models) == (1 if one_model else 3)
        for model_name, scores in result.global_models.items():
            model = build_model("mlp", {"hidden": [16]}, 32, 3, 0)
            model.load_state_dict(result.states[model_name])
            assert scores == methods.site_metrics(model, held_out.x, held_out.y, "classification")
        for metric in CLASSIFICATION:
            want = sum(s[metric] for s in result.global_models.values()) / len(result.global_models)
            assert result.global_[metric] == pytest.approx(want)
        assert [h["global"] for h in result.history][-1] == result.global_
        assert result.to_dict()["global"] == result.global_


def test_site_means_are_weighted_by_test_size_and_name_sites_without_a_metric():
    g = torch.Generator().manual_seed(1)

    def site(name, n_test, test_labels):
        return SimpleNamespace(name=name, train_x=torch.randn(20, 4, generator=g), train_y=torch.arange(20) % 2,
                               test_x=torch.randn(n_test, 4, generator=g), test_y=test_labels)
    data = [site("a", 10, torch.arange(10) % 2), site("b", 30, torch.arange(30) % 2), site("c", 5, torch.ones(5, dtype=torch.long))]
    result = run_method("single", data, "logreg", {}, 4, 2, TRAIN, 1, 0)
    auc = result.site_means["auc"]
    assert auc["undefined"] == ["c"] and auc["defined"] == 2  # c's split holds one class
    assert auc["mean"] == pytest.approx((result.sites["a"]["auc"] + result.sites["b"]["auc"]) / 2)
    accuracy = result.site_means["accuracy"]
    want = sum(result.sites[n]["accuracy"] * w for n, w in (("a", 10), ("b", 30), ("c", 5))) / 45
    assert accuracy["weighted_mean"] == pytest.approx(want) and accuracy["undefined"] == []
