"""The plan's merge rule inside a node's learner (a Byzantine learner's: tests/test_attacks.py).
Training is replaced by a no-op so that the published weights are exactly the merge."""

from __future__ import annotations

import pytest
import torch

from nodes import learner as learner_module
from nodes.data import SiteData
from nodes.learner import Learner, Task
from nodes.plan import build_plan, merge_candidates
from swarm.errors import ConfigError
from swarm.tensors import rebuild_state


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    monkeypatch.setattr(learner_module, "train_local", lambda model, data, config, seed, privacy=None: {"loss": 0.0})


def data() -> SiteData:
    return SiteData("s", torch.randn(8, 2), torch.tensor([0, 1] * 4), torch.randn(4, 2), torch.tensor([0, 1] * 2), 2, 2)


def make(merge: dict | None = None) -> Learner:
    return Learner(Task.from_plan({"name": "logreg"}, {}, merge), data(), "s")


def filled(learner: Learner, value: float) -> dict[str, torch.Tensor]:
    return {k: torch.full_like(v, value) for k, v in learner.shared_state().items()}


def published(learner: Learner, pulled, **kwargs) -> dict[str, torch.Tensor]:
    return rebuild_state(learner.run_round(1, pulled, **kwargs).flat)


def test_the_plan_rule_replaces_the_mean_and_suppresses_an_outlier():
    honest = [0.0, 1.0, 2.0, 3.0]
    for rule, expected in (({"rule": "mean"}, (0 + 1 + 2 + 3 + 1000) / 5), ({"rule": "median"}, 2.0)):
        learner = make(rule)
        learner.load(filled(learner, honest[0]))
        pulled = [(1.0, filled(learner, v)) for v in (*honest[1:], 1000.0)]
        out = published(learner, pulled, self_weight=1.0)
        assert all(torch.allclose(t, torch.full_like(t, expected)) for t in out.values()), rule


def test_too_few_models_for_the_rule_keeps_the_own_model_and_says_so():
    learner = make({"rule": "krum", "f": 1})  # needs 5 models
    learner.load(filled(learner, 1.0))
    result = learner.run_round(1, [(1.0, filled(learner, 50.0))])
    assert result.metrics["merge_skipped"] == 1.0 and result.merge_skipped  # the node then names no parents
    assert all(torch.equal(t, torch.ones_like(t)) for t in rebuild_state(result.flat).values())


def test_a_rule_the_topology_cannot_support_is_refused_when_the_plan_is_built():
    names = [f"h{i}" for i in range(6)]
    args = ({"name": "ring"}, {"name": "dpsgd"}, {"name": "logreg"}, {}, {"num_features": 2, "num_classes": 2})
    with pytest.raises(ConfigError, match=r"plan\.merge\.rule krum with f = 1 needs at least 5 models.*h0 \(dpsgd\) merges at most 3"):
        build_plan(names, 3, *args, merge={"rule": "krum", "f": 1})
    plan = build_plan(names, 3, *args, merge={"rule": "median"})
    assert plan["merge"] == {"rule": "median"}
    assert merge_candidates("gossip", ["a", "b", "c"]) == 2 and merge_candidates("dpsgd", ["a", "b"]) == 3


def test_gossip_learning_merges_pairwise_so_only_a_fixed_radius_clipping_fits():
    names = [f"h{i}" for i in range(6)]
    args = ({"name": "random-regular", "degree": 4}, {"name": "gossip"}, {"name": "logreg"}, {}, {"num_features": 2, "num_classes": 2})
    with pytest.raises(ConfigError, match=r"clipping needs at least 3 models per merge.*\(gossip\) merges at most 2"):
        build_plan(names, 3, *args, merge={"rule": "clipping"})
    assert build_plan(names, 3, *args, merge={"rule": "clipping", "tau": 1.0})["merge"] == {"rule": "clipping", "tau": 1.0}


def test_a_snapshot_is_written_into_the_tensors_handed_back_and_training_cannot_reach_it():
    learner = make()
    learner.load(filled(learner, 3.0))
    first = learner.run_round(1, [])
    assert first.snapshot is not None
    handed_back = first.snapshot
    learner.load(filled(learner, 5.0))
    second = learner.run_round(2, [], reuse=lambda: handed_back)
    assert second.snapshot is handed_back  # no new allocation
    assert all(torch.equal(t, torch.full_like(t, 5.0)) for t in rebuild_state(second.flat).values())
    learner.load(filled(learner, 7.0))  # training on: the published bytes stay
    assert all(torch.equal(t, torch.full_like(t, 5.0)) for t in rebuild_state(second.flat).values())
    # Tensors that do not fit (another model) are not used: a fresh snapshot instead.
    third = learner.run_round(3, [], reuse=lambda: {"other": torch.zeros(1)})
    assert third.snapshot is not None and "other" not in third.snapshot
