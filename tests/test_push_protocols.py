"""D-PSGD, epidemic learning and gossip learning as state machines: hand-driven with a fake
clock, and whole federations simulated over the in-memory network with the real codec.
Merged values are checked against weights computed by hand."""

from __future__ import annotations

import random

import pytest

from gossip import PROTOCOLS
from gossip.base import Dropped, MergeAndTrain, ModelInfo, PulledVersion, PushModel, Send
from gossip.dpsgd import DPSGD, DPSGDParams
from gossip.epidemic import Epidemic, EpidemicParams
from gossip.gossip_learning import GossipLearning, GossipParams, age_weights
from swarm.errors import ConfigError
from swarm.messages import PushAck, VersionReply, VersionRequest
from swarm.schedule import RoundGraph, Schedule
from gossip.simulation import Simulation, make_protocol

LINE = {"a": ["b"], "b": ["a", "c"], "c": ["b"]}  # degrees 1, 2, 1
PUSH = DPSGDParams(round_timeout=5.0, linger=10.0, done_poll_interval=0.5)


def info(seq: int, age: float | None = None, samples: int = 10) -> ModelInfo:
    return ModelInfo(seq, seq, samples, float(seq if age is None else age))


# -- D-PSGD ------------------------------------------------------------------------------------


def test_dpsgd_round_one_trains_alone_then_pushes_and_averages_with_mh_weights():
    b = make_protocol(DPSGD, "b", LINE, 3, 100, PUSH)
    assert b.start(0.0) == [MergeAndTrain(1, (), 1.0)]
    assert b.published(1, {}, 1.0) == [PushModel("a", 0), PushModel("c", 0)]
    assert b.model_arrived("a", None, info(1), 1.1) == [Send("a", PushAck(1))]
    # w_ba = w_bc = 1/(1+max(2,1)) = 1/3, w_bb = 1 - 2/3.
    [ack, merge] = b.model_arrived("c", None, info(1), 1.2)
    assert ack == Send("c", PushAck(1))
    assert merge.round == 2 and merge.self_weight == pytest.approx(1 / 3)
    assert [(p.peer, p.seq) for p in merge.pulled] == [("a", 1), ("c", 1)]
    assert [p.weight for p in merge.pulled] == pytest.approx([1 / 3, 1 / 3])
    # The next push carries only the entries after what each neighbour acknowledged.
    b.receive("a", PushAck(1), 1.3)
    assert b.published(2, {"a": 1, "c": 1}, 2.0) == [PushModel("a", 1), PushModel("c", 0)]


def test_dpsgd_a_missing_neighbour_is_left_out_after_the_round_timeout():
    b = make_protocol(DPSGD, "b", LINE, 3, 100, PUSH, published_seq=1)
    b.start(0.0)
    b.model_arrived("a", None, info(1), 0.5)
    assert b.tick(PUSH.round_timeout - 0.01) == []
    actions = b.tick(PUSH.round_timeout)
    assert actions[0] == Dropped("c", "round_timeout")
    merge = actions[1]
    # Over who answered: (1/3 x_b + 1/3 x_a) / (2/3), i.e. the MH weights renormalised.
    assert merge.pulled == (PulledVersion("a", 1, pytest.approx(1 / 3)),) and merge.self_weight == pytest.approx(1 / 3)


def test_dpsgd_does_not_wait_again_for_a_suspected_sender_until_it_is_heard_from():
    b = make_protocol(DPSGD, "b", LINE, 5, 100, PUSH, published_seq=1)
    b.start(0.0)
    b.model_arrived("a", None, info(1), 0.5)
    b.tick(PUSH.round_timeout)  # c missed round 2: suspected
    assert b.suspects == {"c"}
    assert b.published(2, {"a": 1}, 6.0) == [PushModel("a", 0), PushModel("c", 0)]  # still pushed to: c may be alive
    assert b.expected == ("a",)  # round 3 does not wait for c
    [ack, merge] = b.model_arrived("a", None, info(2), 6.2)
    assert merge.round == 3 and [p.peer for p in merge.pulled] == ["a"]
    assert b.published(3, {"a": 2}, 7.0)
    # The background probe asks c; c is back (any message will do) and round 4 waits for it again.
    assert b.tick(7.0) == [Send("c", VersionRequest(1))]
    b.receive("c", VersionReply(1, 3, 100, False), 7.1)
    assert b.suspects == frozenset() and b.expected == ("a", "c")
    b.model_arrived("a", None, info(3), 7.2)
    assert not any(isinstance(a, MergeAndTrain) for a in b.tick(7.3))  # waiting for c's model
    [ack, merge] = b.model_arrived("c", None, info(3), 7.4)
    assert [p.peer for p in merge.pulled] == ["a", "c"]


def test_dpsgd_keeps_a_fast_neighbours_next_version_for_the_next_round():
    a = make_protocol(DPSGD, "a", LINE, 4, 100, PUSH, published_seq=1)
    a.start(0.0)
    [_, merge] = a.model_arrived("b", None, info(1), 0.1)
    assert merge.round == 2
    assert a.model_arrived("b", None, info(2), 0.2) == [Send("b", PushAck(2))]  # while training
    actions = a.published(2, {"b": 1}, 1.0)
    assert actions[0] == PushModel("b", 0)
    assert actions[1].round == 3 and actions[1].pulled == (PulledVersion("b", 2, pytest.approx(1 / 3)),)
    assert a.model_arrived("b", None, info(2), 1.1)[1] == Dropped("b", "stale_push")


def test_dpsgd_federation_matches_hand_computed_averages():
    # Training leaves values unchanged, so each round is exactly x <- W x on the line graph:
    # W = [[2/3, 1/3, 0], [1/3, 1/3, 1/3], [0, 1/3, 2/3]], x0 = (0, 3, 6).
    sim = Simulation(LINE, rounds=3, params=PUSH, protocol=DPSGD, values={"a": 0, "b": 3, "c": 6})
    sim.run(until=60.0)
    assert sim.nodes["a"].values == pytest.approx([0, 1, 5 / 3])
    assert sim.nodes["b"].values == pytest.approx([3, 3, 3])
    assert sim.nodes["c"].values == pytest.approx([6, 5, 13 / 3])
    assert all(n.protocol.finished for n in sim.nodes.values())


def test_dpsgd_federation_with_a_dead_node_renormalises_and_finishes():
    sim = Simulation(LINE, rounds=3, params=PUSH, protocol=DPSGD, values={"a": 0, "b": 3, "c": 6})
    sim.kill("c")
    sim.run(until=120.0)
    # While b waits out the timeout for c, a merges b's version 1 and pushes its version 2
    # (value 2/3 * 0 + 1/3 * 3 = 1); b takes that newest one: (1/3 * 3 + 1/3 * 1) / (2/3) = 2.
    assert sim.nodes["a"].values[1] == pytest.approx(1.0)
    assert sim.nodes["b"].history[1].pulled == (PulledVersion("a", 2, pytest.approx(1 / 3)),)
    assert sim.nodes["b"].values[1] == pytest.approx(2.0)
    assert all(n.protocol.published_seq == 3 for n in sim.nodes.values())


def test_dpsgd_follows_a_time_varying_schedule():
    members = {"a": ["b", "c"], "b": ["a", "c"], "c": ["a", "b"]}
    ab = RoundGraph.from_out_links({"a": ["b"], "b": ["a"], "c": []}, directed=False)
    bc = RoundGraph.from_out_links({"a": [], "b": ["c"], "c": ["b"]}, directed=False)
    schedule = Schedule(members, [ab, ab, bc])  # round 1 trains alone; round 2 uses ab, round 3 bc
    sim = Simulation(members, rounds=3, params=PUSH, protocol=DPSGD, schedule=schedule, values={"a": 0, "b": 4, "c": 8})
    sim.run(until=60.0)
    assert sim.nodes["a"].values == pytest.approx([0, 2, 2])
    assert sim.nodes["b"].values == pytest.approx([4, 2, 5])
    assert sim.nodes["c"].values == pytest.approx([8, 8, 5])


# -- epidemic learning ---------------------------------------------------------------------------

COMPLETE6 = {f"n{i}": [f"n{j}" for j in range(6) if j != i] for i in range(6)}
EPI = EpidemicParams(round_timeout=5.0, fanout=2, linger=10.0, done_poll_interval=0.5)


def test_epidemic_targets_are_s_random_peers_every_member_can_compute():
    machines = {n: make_protocol(Epidemic, n, COMPLETE6, 5, 10, EPI) for n in COMPLETE6}
    for round_no in range(2, 6):
        for sender, m in machines.items():
            targets = m.targets(round_no)
            assert len(targets) == 2 and sender not in targets
            for receiver, other in machines.items():
                assert (sender in other.sources(round_no)) == (receiver in targets)
    assert machines["n0"].targets(2) != machines["n0"].targets(3) or machines["n0"].targets(3) != machines["n0"].targets(4)


def test_epidemic_federation_averages_uniformly_over_what_it_received():
    values = {n: float(10 * i) for i, n in enumerate(COMPLETE6)}
    sim = Simulation(COMPLETE6, rounds=2, params=EPI, protocol=Epidemic, values=values)
    sim.run(until=60.0)
    oracle = make_protocol(Epidemic, "n0", COMPLETE6, 2, 10, EPI)
    for name, node in sim.nodes.items():
        senders = [s for s in COMPLETE6 if name in oracle.targets_of(s, 2)]
        expected = (values[name] + sum(values[s] for s in senders)) / (1 + len(senders))
        assert node.values == pytest.approx([values[name], expected])


# -- gossip learning -----------------------------------------------------------------------------

GOSSIP = GossipParams(push_interval=1.0, wait_for_new=4.0, linger=10.0, done_poll_interval=0.5)


def test_age_weights():
    assert age_weights(2.0, {"b": 4.0, "c": 0.0}) == ({"b": 4.0, "c": 0.0}, 2.0)
    assert age_weights(0.0, {"b": 0.0}) == ({"b": 1.0}, 1.0)  # fresh models weigh equally


def test_gossip_merges_by_age_and_signs_the_new_age():
    a = make_protocol(GossipLearning, "a", {"a": ["b", "c"]}, 5, 10, GOSSIP, published_seq=2, last_metrics={"age": 2.0})
    assert a.start(0.0) == []
    [push] = a.tick(0.0)
    assert isinstance(push, PushModel) and push.peer in ("b", "c")
    [ack, merge] = a.model_arrived("b", None, info(3, age=4.0), 0.3)
    assert ack == Send("b", PushAck(3))
    # (2 x_a + 4 x_b) / 6; the merged model is one round older than the oldest it merged.
    assert merge == MergeAndTrain(3, (PulledVersion("b", 3, 4.0),), 2.0, {"age": 5.0})


def test_gossip_pushes_on_its_timer_while_training_and_trains_alone_when_nothing_comes():
    a = make_protocol(GossipLearning, "a", {"a": ["b"]}, 5, 10, GOSSIP)
    assert a.start(0.0) == [MergeAndTrain(1, (), 1.0, {"age": 1.0})]
    assert a.tick(10.0) == []  # nothing published yet: nothing to push
    assert a.published(1, {}, 10.0) == []  # pushes come only from the timer
    assert a.tick(10.0) == [PushModel("b", 0)]
    push_at = a.next_deadline()
    assert 10.5 <= push_at <= 11.5
    assert a.tick(push_at) == [PushModel("b", 0)]
    actions: list = []
    now = push_at
    while not any(isinstance(x, MergeAndTrain) for x in actions):
        now = a.next_deadline()
        actions = a.tick(now)
    assert now >= 10.0 + GOSSIP.wait_for_new
    assert [x for x in actions if isinstance(x, MergeAndTrain)] == [MergeAndTrain(2, (), 1.0, {"age": 2.0})]


def test_a_finished_gossip_node_keeps_pushing_to_neighbours_that_are_not_done():
    a = make_protocol(GossipLearning, "a", {"a": ["b", "c"]}, 1, 10, GOSSIP, published_seq=1)
    a.start(0.0)
    a.receive("b", VersionReply(0, 3, 10, True), 0.1)  # b is done too
    pushes = [x for t in range(1, 20) for x in a.tick(float(t)) if isinstance(x, PushModel)]
    assert pushes and {p.peer for p in pushes} == {"c"}


def test_gossip_federation_finishes_and_every_merge_is_age_weighted():
    ring = {f"n{i}": [f"n{(i - 1) % 4}", f"n{(i + 1) % 4}"] for i in range(4)}
    sim = Simulation(ring, rounds=6, params=GOSSIP, protocol=GossipLearning, train_seconds=0.3)
    sim.run(until=200.0)
    merges = [m for n in sim.nodes.values() for m in n.history if m.pulled]
    assert merges and all(n.protocol.finished and n.protocol.published_seq == 6 for n in sim.nodes.values())
    for m in merges:
        assert m.signed["age"] == max(m.self_weight, *(p.weight for p in m.pulled)) + 1


def test_lingering_nodes_refuse_pushes_and_params_are_validated():
    a = make_protocol(GossipLearning, "a", {"a": ["b"]}, 1, 10, GOSSIP, published_seq=1)
    a.start(0.0)
    assert not a.wants_push("b")
    assert a.receive("b", VersionReply(0, 1, 10, True), 0.1)[-1].__class__.__name__ == "Finished"
    with pytest.raises(ConfigError, match="plan.protocol.fanout"):
        EpidemicParams.from_dict({"fanout": 0})
    with pytest.raises(ConfigError, match="plan.protocol.round_timeout"):
        PROTOCOLS["dpsgd"][1].from_dict({"round_timeout": "soon"})
    assert set(PROTOCOLS) == {"braintorrent", "gossip", "dpsgd", "epidemic"}
