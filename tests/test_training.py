"""Local training, evaluation, the [train] table and the baselines."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nodes.data import DataConfig, SiteData, load_site
from nodes.models import build_model
from nodes.training import TrainConfig, class_log_prior, derive_seed, evaluate, train_local
from swarm.errors import ConfigError


@pytest.fixture(scope="module")
def big_site() -> SiteData:
    config = DataConfig(seed=1, quantity_skew=0.0, samples_per_site=400, test_samples=400)
    return load_site(config, 0)


def test_training_improves_accuracy(big_site):
    model = build_model("mlp", {"hidden": [64, 64]}, big_site.num_features, big_site.num_classes, seed=0)
    before = evaluate(model, big_site.test_x, big_site.test_y)
    first = train_local(model, big_site, TrainConfig(epochs=1), seed=0)
    last = train_local(model, big_site, TrainConfig(epochs=15), seed=1)
    after = evaluate(model, big_site.test_x, big_site.test_y)
    assert after["accuracy"] > before["accuracy"] + 0.2
    assert after["accuracy"] > 0.6
    assert after["loss"] < before["loss"]
    assert last["loss"] < first["loss"]


def test_task_needs_the_nonlinear_model_and_more_data_than_a_site_has():
    # The ground truth is nonlinear: with a federation's worth of patients an MLP clearly
    # beats logistic regression, with one site's worth it barely can.
    config = DataConfig(seed=1, quantity_skew=0.0, samples_per_site=2500, test_samples=1000)
    site = load_site(config, 0)
    scores = {}
    for name, params in (("logreg", {}), ("mlp", {"hidden": [64, 64]})):
        model = build_model(name, params, site.num_features, site.num_classes, seed=0)
        train_local(model, site, TrainConfig(epochs=8), seed=0)
        scores[name] = evaluate(model, site.test_x, site.test_y)["accuracy"]
    assert scores["mlp"] > scores["logreg"] + 0.05


def test_train_local_report_and_determinism(big_site):
    config = TrainConfig(epochs=2, batch_size=64)
    a = build_model("mlp", {"hidden": [16]}, big_site.num_features, big_site.num_classes, seed=3)
    b = build_model("mlp", {"hidden": [16]}, big_site.num_features, big_site.num_classes, seed=3)
    c = build_model("mlp", {"hidden": [16]}, big_site.num_features, big_site.num_classes, seed=3)
    report = train_local(a, big_site, config, seed=10)
    assert report["samples"] == big_site.train_samples
    assert report["steps"] == 2 * math.ceil(big_site.train_samples / 64)
    assert report["epochs"] == 2
    assert math.isfinite(report["loss"])
    assert train_local(b, big_site, config, seed=10) == report
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    train_local(c, big_site, config, seed=11)
    assert not torch.equal(a.state_dict()["0.weight"], c.state_dict()["0.weight"])


def test_train_local_leaves_global_rng_alone(big_site):
    model = build_model("logreg", {}, big_site.num_features, big_site.num_classes, seed=0)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    train_local(model, big_site, TrainConfig(), seed=0)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_every_optimizer_trains(big_site, optimizer):
    lr = 0.05 if optimizer == "sgd" else 0.003
    model = build_model("logreg", {}, big_site.num_features, big_site.num_classes, seed=0)
    before = evaluate(model, big_site.train_x, big_site.train_y)["loss"]
    train_local(model, big_site, TrainConfig(optimizer=optimizer, lr=lr, epochs=3), seed=0)
    assert evaluate(model, big_site.train_x, big_site.train_y)["loss"] < before


def hand_model() -> nn.Module:
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
        model.bias.zero_()
    return model


def test_evaluate_hand_built_case():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 1, 1, 1])
    # Predictions 0, 1, 0, 1: three of four right.
    result = evaluate(hand_model(), x, y)
    assert result["accuracy"] == 0.75
    assert result["samples"] == 4
    right = math.log(1 + math.exp(-1))      # -log softmax of the right class, margin 1
    wrong = math.log(1 + math.exp(1))       # margin -1
    right2 = math.log(1 + math.exp(-2))     # margin 2
    assert result["loss"] == pytest.approx((2 * right + wrong + right2) / 4, rel=1e-6)


def test_evaluate_restores_mode_and_handles_empty():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    model.train()
    evaluate(model, torch.zeros(3, 2), torch.zeros(3, dtype=torch.int64))
    assert model.training
    empty = evaluate(model, torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64))
    assert empty["samples"] == 0 and math.isnan(empty["accuracy"])


def test_train_config_from_dict():
    config = TrainConfig.from_dict({"epochs": 3, "lr": 1, "optimizer": "sgd"})
    assert config.epochs == 3 and config.lr == 1.0 and isinstance(config.lr, float)
    assert TrainConfig.from_dict({}) == TrainConfig()
    assert TrainConfig.from_dict({"prox_mu": 1}).prox_mu == 1.0 and TrainConfig().prox_mu == 0.0


@pytest.mark.parametrize(
    ("table", "field", "bad"),
    [
        ({"epochs": 0}, "train.epochs", "0"),
        ({"epochs": "2"}, "train.epochs", "'2'"),
        ({"lr": 0}, "train.lr", "0"),
        ({"lr": -0.1}, "train.lr", "-0.1"),
        ({"batch_size": 2.5}, "train.batch_size", "2.5"),
        ({"optimizer": "lbfgs"}, "train.optimizer", "'lbfgs'"),
        ({"momentum": 1.0}, "train.momentum", "1.0"),
        ({"weight_decay": -1}, "train.weight_decay", "-1"),
        ({"rounds": 5}, "train.rounds", "5"),
        ({"prox_mu": -0.01}, "train.prox_mu", "-0.01"),
        ({"prox_mu": float("inf")}, "train.prox_mu", "inf"),
        ({"prox_mu": "0.1"}, "train.prox_mu", "'0.1'"),
    ],
)
def test_train_config_errors(table, field, bad):
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(table)
    message = str(info.value)
    assert message.startswith(field + ":") and bad in message
    if "unknown key" not in message:
        assert "example:" in message


def test_train_config_message_under_the_plan_prefix():
    with pytest.raises(ConfigError, match=r"^training\.lr: must be a number in \(0, 100\], got 0 \(example: lr = 0\.003\)$"):
        TrainConfig.from_dict({"lr": 0}, "training")
    with pytest.raises(ConfigError, match=r"^training\.optimizer: must be one of: sgd, adam, adamw, got 'lbfgs' "):
        TrainConfig.from_dict({"optimizer": "lbfgs"}, "training")


def test_derive_seed_is_stable_and_spread():
    assert derive_seed(1, "train", 2, 3) == derive_seed(1, "train", 2, 3)
    assert derive_seed(1, "train", 2, 3) != derive_seed(1, "train", 3, 2)
    assert 0 <= derive_seed(2**62, "x") < 2**63


# -- FedProx --------------------------------------------------------------------------------

def plain_training_before_fedprox(model: nn.Module, data: SiteData, config: TrainConfig, seed: int) -> float:
    """train_local as it was before FedProx and segmentation: mu = 0 must stay bit-identical."""
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    order = torch.Generator().manual_seed(derive_seed(seed, "batches"))
    n = data.train_samples
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "model-randomness"))
        for _ in range(config.epochs):
            perm = torch.randperm(n, generator=order)
            total = 0.0
            for start in range(0, n, config.batch_size):
                idx = perm[start:start + config.batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = nn.CrossEntropyLoss()(model(data.train_x[idx]), data.train_y[idx])
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * int(idx.shape[0])
    return total / n


def test_prox_mu_zero_is_plain_training(big_site):
    config = TrainConfig(epochs=2, prox_mu=0.0)
    assert config == TrainConfig(epochs=2)
    a = build_model("mlp", {"hidden": [16]}, big_site.num_features, big_site.num_classes, seed=4)
    b = build_model("mlp", {"hidden": [16]}, big_site.num_features, big_site.num_classes, seed=4)
    report = train_local(a, big_site, config, seed=9)
    assert report["loss"] == plain_training_before_fedprox(b, big_site, config, seed=9)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def distance_moved(model: nn.Module, start: dict) -> float:
    return math.sqrt(sum(float(((p - start[k]) ** 2).sum()) for k, p in model.state_dict().items()))


@pytest.mark.parametrize(("optimizer", "lr"), [("adam", 0.003), ("sgd", 0.05)])
def test_large_prox_mu_keeps_weights_near_the_round_start(big_site, optimizer, lr):
    moved = {}
    for mu in (0.0, 1.0, 10.0):
        model = build_model("mlp", {"hidden": [32]}, big_site.num_features, big_site.num_classes, seed=0)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        config = TrainConfig(epochs=3, optimizer=optimizer, lr=lr, weight_decay=0.0, prox_mu=mu)
        report = train_local(model, big_site, config, seed=0)
        assert math.isfinite(report["loss"])
        moved[mu] = distance_moved(model, start)
    # Measured: adam 1.54 / 0.33 / 0.07, sgd 2.29 / 0.38 / 0.09.
    assert moved[0.0] > 1.0
    assert moved[0.0] > moved[1.0] > moved[10.0] > 0.0
    assert moved[10.0] < 0.1 * moved[0.0]


def test_prox_term_is_half_mu_squared_distance_to_the_call_start():
    # Two full-batch plain-SGD steps by hand: the first sees no pull (w = w_start), the second
    # a gradient mu * (w1 - w_start) on top of the loss gradient.
    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.tensor([0, 1] * 4)
    site = SiteData("s", x, y, x, y, 3, 2)
    lr, mu = 0.1, 3.0
    model = nn.Linear(3, 2)
    w0 = [p.detach().clone() for p in model.parameters()]

    def grads(ws):
        ws = [w.clone().requires_grad_() for w in ws]
        loss = nn.functional.cross_entropy(nn.functional.linear(x, *ws), y)
        return torch.autograd.grad(loss, ws)

    w1 = [w - lr * g for w, g in zip(w0, grads(w0))]
    w2 = [w - lr * (g + mu * (w - s)) for w, g, s in zip(w1, grads(w1), w0)]
    config = TrainConfig(epochs=2, batch_size=8, optimizer="sgd", lr=lr, momentum=0.0, weight_decay=0.0, prox_mu=mu)
    train_local(model, site, config, seed=0)
    for p, expected in zip(model.parameters(), w2):
        assert torch.allclose(p.detach(), expected, atol=1e-6)


# -- segmentation ---------------------------------------------------------------------------

def square_masks(n: int, size: int = 16, seed: int = 0) -> SiteData:
    """Noisy images with one bright square each; the mask marks the square."""
    g = torch.Generator().manual_seed(seed)
    images = 0.3 * torch.randn(n, 1, size, size, generator=g)
    masks = torch.zeros(n, size, size, dtype=torch.int64)
    for i in range(n):
        top, left = torch.randint(0, size - 6, (2,), generator=g).tolist()
        side = int(torch.randint(3, 7, (1,), generator=g))
        masks[i, top:top + side, left:left + side] = 1
    images += masks.unsqueeze(1).float()
    half = n // 2
    return SiteData("phantom", images[:half], masks[:half], images[half:], masks[half:], size * size, 2)


def test_unet_trains_pixelwise_on_a_mask_task():
    site = square_masks(32)
    model = build_model("unet", {"depth": 1, "base": 4}, (1, 16, 16), 2, seed=0)
    before = evaluate(model, site.test_x, site.test_y)
    first = train_local(model, site, TrainConfig(epochs=1, batch_size=8, lr=0.02), seed=0)
    last = train_local(model, site, TrainConfig(epochs=60, batch_size=8, lr=0.02), seed=1)
    after = evaluate(model, site.test_x, site.test_y)
    assert first["samples"] == 16 and first["steps"] == 2
    # Measured: training loss 0.535 -> 0.035, test loss 0.56 -> 0.059, Dice 0.86.
    assert last["loss"] < 0.2 * first["loss"]
    assert after["loss"] < 0.25 * before["loss"]
    assert after["accuracy"] > 0.97 and after["samples"] == 16  # pixel accuracy; samples are images
    # The squares are found, not just the background (6% of pixels are square).
    model.eval()
    with torch.no_grad():
        found = model(site.test_x).argmax(dim=1).bool()
    truth = site.test_y.bool()
    assert 2 * int((found & truth).sum()) / (int(found.sum()) + int(truth.sum())) > 0.6


def test_segmentation_loss_is_the_pixel_mean_and_fedprox_applies():
    site = square_masks(8, size=8)
    model = build_model("unet", {"depth": 1, "base": 2, "norm": "none"}, (1, 8, 8), 2, seed=0)
    with torch.no_grad():
        scores = model(site.test_x)
    expected = float(nn.functional.cross_entropy(scores.permute(0, 2, 3, 1).reshape(-1, 2), site.test_y.reshape(-1)))
    assert evaluate(model, site.test_x, site.test_y)["loss"] == pytest.approx(expected, rel=1e-5)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    train_local(model, site, TrainConfig(epochs=3, batch_size=2, prox_mu=1000.0), seed=0)
    assert 0.0 < distance_moved(model, start) < 0.05


def test_model_and_labels_that_do_not_fit_are_refused():
    site = square_masks(8, size=8)
    labels_per_image = SiteData("s", site.train_x, site.train_y[:, 0, 0], site.test_x, site.test_y[:, 0, 0], 64, 2)
    unet = build_model("unet", {"depth": 1, "base": 2}, (1, 8, 8), 2, seed=0)
    with pytest.raises(ConfigError, match=r"^model\.name: the model outputs scores \[4, 2, 8, 8\] but the labels are \[4\] \(one class per sample\)"):
        train_local(unet, labels_per_image, TrainConfig(), seed=0)
    with pytest.raises(ConfigError, match=r"^model\.name: .*labels are \[4\]"):
        evaluate(unet, labels_per_image.test_x, labels_per_image.test_y)
    cnn = build_model("cnn", {"channels": [2], "hidden": []}, (1, 8, 8), 2, seed=0)
    with pytest.raises(ConfigError, match=r"^model\.name: the model outputs scores \[4, 2\] but the labels are \[4, 8, 8\] \(a class per pixel\)"):
        train_local(cnn, site, TrainConfig(), seed=0)


def test_class_log_prior_is_the_smoothed_own_label_frequency():
    prior = class_log_prior(torch.tensor([1, 1, 1, 0]), 3)
    assert prior.shape == (1, 3)
    assert torch.allclose(prior.exp(), torch.tensor([[2 / 7, 4 / 7, 1 / 7]]))
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    assert class_log_prior(masks, 2).shape == (1, 2, 1, 1)  # per pixel for segmentation


def test_logit_adjusted_training_on_a_one_class_site_does_not_push_every_score_to_that_class():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    one_class = SiteData("screening", x, torch.ones(64, dtype=torch.long), x[:0], x[:0, 0].long(), 8, 2)
    probe = torch.randn(200, 8, generator=g)

    def shift(loss: str) -> float:
        model = build_model("mlp", {"hidden": [16]}, 8, 2, 0)
        with torch.no_grad():
            before = torch.softmax(model(probe), 1)[:, 1].mean()
        train_local(model, one_class, TrainConfig(optimizer="sgd", lr=0.1, epochs=3, loss=loss), seed=0)
        with torch.no_grad():
            return float(torch.softmax(model(probe), 1)[:, 1].mean() - before)

    plain, adjusted = shift("cross_entropy"), shift("logit_adjusted")
    assert plain > 0.3 and abs(adjusted) < plain / 3, (plain, adjusted)
    with pytest.raises(ConfigError, match=r"train\.loss"):
        TrainConfig.from_dict({"loss": "focal"})
