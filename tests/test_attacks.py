"""Simulated Byzantine sites: what each attack publishes, which sites a scenario poisons,
that a poisoned site's published model really differs from its honest one, and that only a
scenario's worker runs such a site."""

from __future__ import annotations

import pytest
import torch

from nodes import learner as learner_module
from nodes.data import SiteData
from nodes.learner import Learner, Task
from scenarios.attackers import byzantine_share, pick_attackers
from scenarios.attacks import ATTACKS, parse_attack
from scenarios.byzantine import ByzantineLearner
from swarm.errors import ConfigError
from swarm.tensors import rebuild_state


def state(*values: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(values, dtype=torch.float32), "steps": torch.tensor(7)}


REF, TRAINED = state(1.0, 1.0), state(2.0, 0.0)
SEEN = [state(0.0, 2.0), state(4.0, 2.0)]


def craft(kind: str, **params: float) -> dict[str, torch.Tensor]:
    attack = parse_attack({"kind": kind, **params})
    return attack.craft(REF, TRAINED, SEEN, torch.Generator().manual_seed(0))


def test_sign_flip_negates_the_trained_model_and_keeps_integer_buffers():
    out = craft("sign_flip", scale=2.0)
    assert out["w"].tolist() == [-4.0, 0.0] and out["w"].dtype == torch.float32
    assert out["steps"].item() == 7


def test_alie_and_ipm_use_the_models_the_attacker_saw():
    # seen + trained, coordinate-wise: mean [2, 4/3], population std [sqrt(8/3), sqrt(8/9)]
    alie = craft("alie", z=1.5)["w"]
    assert alie.tolist() == pytest.approx([2 + 1.5 * (8 / 3) ** 0.5, 4 / 3 + 1.5 * (8 / 9) ** 0.5], rel=1e-6)
    assert craft("ipm", epsilon=2.0)["w"].tolist() == pytest.approx([-4.0, -8 / 3])


def test_scaled_replacement_boosts_the_poisoned_update():
    assert craft("scaled_replacement", boost=5.0)["w"].tolist() == [6.0, -4.0]  # 1 + 5 * (2 - 1), 1 + 5 * (0 - 1)


def test_gaussian_is_seeded_noise_and_free_riding_republishes_what_it_merged():
    first, second = craft("gaussian", sigma=1.0), craft("gaussian", sigma=1.0)
    assert torch.equal(first["w"], second["w"]) and not torch.equal(first["w"], TRAINED["w"])
    assert craft("free_riding")["w"].tolist() == [4.0, 2.0]
    assert not ATTACKS["free_riding"].trains


def test_label_flip_poisons_only_the_training_labels():
    data = SiteData("s", torch.zeros(4, 2), torch.tensor([0, 1, 2, 2]), torch.zeros(2, 2), torch.tensor([0, 2]), 2, 3)
    poisoned = parse_attack({"kind": "label_flip"}).poison(data)
    assert poisoned.train_y.tolist() == [2, 1, 0, 0] and poisoned.test_y.tolist() == [0, 2]


def test_bad_attack_tables_name_the_field():
    with pytest.raises(ConfigError, match="attack.kind"):
        parse_attack({"kind": "teleport"})
    with pytest.raises(ConfigError, match="z"):
        parse_attack({"kind": "sign_flip", "z": 1.0})  # z belongs to alie
    with pytest.raises(ConfigError, match="sigma"):
        parse_attack({"kind": "gaussian", "sigma": "big"})
    assert parse_attack({}) is None


NAMES = [f"h{i}" for i in range(10)]
RING = {n: [NAMES[(i - 1) % 10], NAMES[(i + 1) % 10]] for i, n in enumerate(NAMES)}


def test_pick_attackers_by_share_count_sites_and_placement():
    spread = pick_attackers({"kind": "alie", "share": 0.2, "placement": "spread", "z": 1.0}, NAMES, RING)
    assert spread == {"h0": {"kind": "alie", "z": 1.0}, "h5": {"kind": "alie", "z": 1.0}}
    randomly = pick_attackers({"kind": "ipm", "count": 3, "placement": "random", "seed": 4}, NAMES, RING)
    assert len(randomly) == 3 and randomly == pick_attackers({"kind": "ipm", "count": 3, "placement": "random", "seed": 4}, NAMES, RING)
    assert set(pick_attackers({"kind": "sign_flip", "sites": [1, 2]}, NAMES, RING)) == {"h1", "h2"}
    assert pick_attackers({}, NAMES, RING) == {}


@pytest.mark.parametrize(
    "table, match",
    [
        ({"kind": "alie"}, "exactly one of share, count or sites"),
        ({"kind": "alie", "share": 0.2, "count": 2}, "exactly one of"),
        ({"kind": "alie", "share": 1.0}, "attack.share"),
        ({"kind": "alie", "sites": [10]}, "attack.sites"),
        ({"kind": "alie", "count": 10}, "attack.count"),
        ({"kind": "alie", "share": 0.2, "seed": 3}, "attack.seed"),
    ],
)
def test_bad_attacker_choices_are_refused(table, match):
    with pytest.raises(ConfigError, match=match):
        pick_attackers(table, NAMES, RING)


def test_byzantine_share_of_each_honest_neighbourhood():
    shares = byzantine_share({"h1", "h3"}, RING)
    assert "h1" not in shares and shares["h2"] == pytest.approx(2 / 3) and shares["h0"] == pytest.approx(1 / 3) and shares["h5"] == 0.0


def test_a_byzantine_site_toml_round_trips_and_a_bad_one_is_refused(tmp_path):
    from nodes.site import SiteConfig, SiteDir, init_site

    init_site(tmp_path / "s", "hospital-x", "tcp://127.0.0.1:7000", None, {"seed": 1}, {"kind": "alie", "z": 2.0})
    site = SiteDir(tmp_path / "s")
    assert site.load_config().attack == {"kind": "alie", "z": 2.0}
    assert "SIMULATED BYZANTINE SITE" in site.config_path.read_text()
    bad = SiteConfig.from_dict({"site": {"name": "h"}, "node": {"endpoint": "tcp://127.0.0.1:7000"}, "attack": {"kind": "nope"}})
    with pytest.raises(ConfigError, match="attack.kind"):  # nodes keeps the table as written; the scenarios check it
        parse_attack(bad.attack)


# -- the Byzantine learner: the honest one with its merge, training and publishing replaced ----


@pytest.fixture
def no_training(monkeypatch):
    monkeypatch.setattr(learner_module, "train_local", lambda model, data, config, seed, privacy=None: {"loss": 0.0})


def byzantine(attack: dict, merge: dict | None = None) -> ByzantineLearner:
    data = SiteData("s", torch.randn(8, 2), torch.tensor([0, 1] * 4), torch.randn(4, 2), torch.tensor([0, 1] * 2), 2, 2)
    return ByzantineLearner(Task.from_plan({"name": "logreg"}, {}, merge), data, "s", parse_attack(attack))


def filled(learner: Learner, value: float) -> dict[str, torch.Tensor]:
    return {k: torch.full_like(v, value) for k, v in learner.shared_state().items()}


def published(learner: Learner, pulled, **kwargs) -> dict[str, torch.Tensor]:
    return rebuild_state(learner.run_round(1, pulled, **kwargs).flat)


def test_a_byzantine_learner_publishes_its_attack_but_keeps_its_own_model(no_training):
    learner = byzantine({"kind": "sign_flip"})
    learner.load(filled(learner, 2.0))
    out = published(learner, [(1.0, filled(learner, 2.0))], self_weight=1.0)
    assert all(torch.equal(t, torch.full_like(t, -2.0)) for t in out.values())
    assert all(torch.equal(t, torch.full_like(t, 2.0)) for t in learner.shared_state().values())


def test_a_byzantine_learner_merges_by_plain_mean_whatever_the_plan_says(no_training):
    learner = byzantine({"kind": "label_flip"}, {"rule": "krum", "f": 1})  # an honest site would skip: krum needs 5 models
    learner.load(filled(learner, 1.0))
    result = learner.run_round(1, [(1.0, filled(learner, 3.0))], self_weight=1.0)
    assert not result.merge_skipped and "merge_skipped" not in result.metrics
    assert all(torch.equal(t, torch.full_like(t, 2.0)) for t in rebuild_state(result.flat).values())
    assert learner.data.train_y.tolist() == [1, 0] * 4  # label_flip trains on flipped labels


def test_scaled_replacement_boosts_the_update_from_the_model_before_training(monkeypatch):
    def one_step(model, data, config, seed, privacy=None):  # training moves every weight by +1
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        return {"loss": 0.0}

    monkeypatch.setattr(learner_module, "train_local", one_step)
    learner = byzantine({"kind": "scaled_replacement", "boost": 5.0})
    learner.load(filled(learner, 2.0))
    out = published(learner, [])
    assert all(torch.allclose(t, torch.full_like(t, 2.0 + 5.0 * 1.0)) for t in out.values())


def test_a_free_rider_does_not_train_and_republishes_the_newest_model_it_merged(monkeypatch):
    monkeypatch.setattr(learner_module, "train_local", lambda *args, **kwargs: pytest.fail("a free rider trained"))
    learner = byzantine({"kind": "free_riding"})
    learner.load(filled(learner, 1.0))
    result = learner.run_round(1, [(1.0, filled(learner, 3.0)), (1.0, filled(learner, 5.0))], self_weight=1.0)
    assert all(torch.equal(t, torch.full_like(t, 5.0)) for t in rebuild_state(result.flat).values())
    assert all(torch.equal(t, torch.full_like(t, 3.0)) for t in learner.shared_state().values())  # kept: the plain mean
    assert result.metrics["train_loss"] >= 0.0


# -- who runs a Byzantine site: a scenario's worker, never a hospital's swarm-node run ---------


@pytest.fixture
def attacked_federation(tmp_path):
    from scenarios.config import ScenarioConfig
    from scenarios.federation import create_federation
    from tests.conftest import write_scenario

    path = write_scenario(tmp_path, nodes=3, rounds=2)
    path.write_text(path.read_text() + '\n[attack]\nkind = "sign_flip"\nsites = [1]\n')
    return create_federation(ScenarioConfig.load(path), tmp_path / "run")


def test_swarm_node_run_refuses_a_simulated_byzantine_site_in_one_line(attacked_federation):
    from click.testing import CliRunner

    from nodes.cli import main as node_cli

    result = CliRunner().invoke(node_cli, ["run", "--site", str(attacked_federation.sites["hospital-b"])])
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "site.toml [attack]: simulated attacks run only under swarm-scenario" in error[0], result.output
    assert "remove [attack] from a real site" in error[0]


def test_a_scenario_worker_builds_the_byzantine_learner_only_where_site_toml_says(attacked_federation, caplog):
    from nodes.launch import open_node
    from scenarios.byzantine import scenario_learner
    from swarm.transport import InMemoryNetwork

    network = InMemoryNetwork()
    learners = {}
    for name, site in attacked_federation.sites.items():
        node, transport = open_node(site, lambda config, links, settings: network.endpoint(config.name), make_learner=scenario_learner)
        learners[name] = node.learner
        node.store.close()
        transport.close()
    assert [name for name, learner in learners.items() if isinstance(learner, ByzantineLearner)] == ["hospital-b"]
    assert learners["hospital-b"].attack.NAME == "sign_flip" and type(learners["hospital-a"]) is Learner
    assert "SIMULATED BYZANTINE SITE hospital-b: publishes sign_flip models" in caplog.text
