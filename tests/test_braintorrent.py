"""The BrainTorrent state machine, driven by hand and in a simulated federation (fake clock,
in-memory network, real codec). Assertions are on the exact actions it takes."""

from __future__ import annotations

import random

import pytest

from gossip.base import Dropped, Finished, MergeAndTrain, ModelInfo, PulledVersion, Send, SendModel
from gossip.braintorrent import ANNOUNCEMENT, BrainTorrent, BrainTorrentParams, Phase
from swarm.errors import ConfigError
from swarm.messages import ModelRequest, Refusal, VersionReply, VersionRequest
from gossip.simulation import Simulation, make_protocol

PARAMS = BrainTorrentParams(round_interval=1.0, poll_timeout=2.0, pull_timeout=10.0, wait_for_new=5.0, linger=30.0, done_poll_interval=1.0)


def machine(rounds: int = 3, samples: int = 50, **resume) -> BrainTorrent:
    return make_protocol(BrainTorrent, "a", {"a": ["b", "c"]}, rounds, samples, PARAMS, random.Random(1), **resume)


def model(seq: int, samples: int = 10) -> ModelInfo:
    return ModelInfo(seq, seq, samples, float(seq))


def start_polling(bt: BrainTorrent) -> list:
    assert bt.start(0.0) == []
    deadline = bt.next_deadline()
    assert 0.5 <= deadline <= 1.5  # round_interval randomized in [0.5x, 1.5x]
    assert bt.tick(deadline - 0.01) == []
    return bt.tick(deadline)


def test_a_round_polls_pulls_newer_models_and_trains():
    bt = machine(peer_heads={"b": 4})
    assert start_polling(bt) == [Send("b", VersionRequest(1)), Send("c", VersionRequest(2))]
    assert bt.receive("b", VersionReply(1, 5, 80, False), 1.2) == []
    assert bt.receive("c", VersionReply(2, 3, 20, False), 1.3) == [Send("b", ModelRequest(3, 4)), Send("c", ModelRequest(4, 0))]
    assert bt.expects_model("b", 3) and not bt.expects_model("b", 4)
    assert bt.model_arrived("c", 4, model(3, samples=20), 1.4) == []
    # Weighted by the sample counts signed in the entries, ours included.
    expected = MergeAndTrain(1, (PulledVersion("c", 3, 20.0), PulledVersion("b", 5, 80.0)), self_weight=50.0)
    assert bt.model_arrived("b", 3, model(5, samples=80), 1.5) == [expected]
    assert bt.phase is Phase.TRAINING and bt.next_deadline() is None
    assert bt.published(1, {"b": 5, "c": 3}, 2.0) == []
    assert bt.merged == {"b": 5, "c": 3} and bt.published_seq == 1


def test_only_versions_newer_than_merged_are_pulled():
    bt = machine(published_seq=1, merged={"b": 5, "c": 3})
    polls = start_polling(bt)
    assert bt.receive("b", VersionReply(polls[0].msg.req, 5, 80, False), 1.0) == []  # same version as merged
    assert bt.receive("c", VersionReply(polls[1].msg.req, 4, 20, False), 1.0) == [Send("c", ModelRequest(3, 0))]


def test_a_dead_neighbour_does_not_block_the_round():
    bt = machine()
    polls = start_polling(bt)
    t = bt.next_deadline() - PARAMS.poll_timeout
    assert bt.receive("b", VersionReply(polls[0].msg.req, 1, 80, False), t + 0.1) == []  # c never answers
    assert bt.tick(t + PARAMS.poll_timeout - 0.01) == []
    [request] = bt.tick(t + PARAMS.poll_timeout)
    assert request == Send("b", ModelRequest(3, 0))
    assert bt.suspects == {"c"}  # it missed the poll: probed in the background from now on
    # b's model never arrives either: the pull times out and the round trains alone (c is
    # due for a probe by then, b is now suspected too).
    assert bt.tick(t + PARAMS.poll_timeout + PARAMS.pull_timeout) == [Send("c", VersionRequest(4)), MergeAndTrain(1, (), self_weight=50.0)]
    assert bt.suspects == {"b", "c"}


def poll_once(bt: BrainTorrent, now: float, replies: dict[str, int], delay: float) -> float:
    """Run one round from its poll to its publish: the neighbours in `replies` answer with
    that version after `delay` s and their models arrive at once; returns the publish time."""
    bt.deadline = now  # the round's timer fires now
    actions = bt.tick(now)
    polls = [a for a in actions if isinstance(a, Send) and isinstance(a.msg, VersionRequest) and a.peer in bt.pending]
    out = []
    for send in polls:
        if send.peer in replies:
            out += bt.receive(send.peer, VersionReply(send.msg.req, replies[send.peer], 10, False), now + delay)
    if bt.phase is Phase.POLLING:
        assert bt.deadline is not None
        now = bt.deadline
        out += bt.tick(now)
    for action in out:
        if isinstance(action, Send) and isinstance(action.msg, ModelRequest):
            out += bt.model_arrived(action.peer, action.msg.req, model(replies[action.peer]), now + delay)
    [train] = [a for a in out if isinstance(a, MergeAndTrain)]
    assert bt.published(train.round, {p.peer: p.seq for p in train.pulled}, now + delay) == []
    return now + delay


def test_a_neighbour_that_stops_answering_is_suspected_and_later_rounds_do_not_wait_for_it():
    bt = make_protocol(BrainTorrent, "a", {"a": ["b", "c", "d"]}, 20, 50, PARAMS, random.Random(1))
    bt.start(0.0)
    now = 0.0
    for seq in range(1, 5):  # everyone answers within 10 ms: the poll's deadline adapts down to the floor
        now = poll_once(bt, now + 1, {"b": seq, "c": seq, "d": seq}, 0.01) if seq < 4 else now
    bt.deadline = now + 1
    polls = bt.tick(now + 1)
    assert bt.deadline == pytest.approx(now + 1 + PARAMS.min_reply_wait)  # not poll_timeout: round trips are known
    for send in polls:
        if send.peer != "d":  # d died
            bt.receive(send.peer, VersionReply(send.msg.req, 4, 10, False), now + 1.01)
    assert bt.suspects == frozenset()
    actions = bt.tick(now + 1 + PARAMS.min_reply_wait)
    assert bt.suspects == {"d"} and [a.peer for a in actions if isinstance(a, Send)] == ["b", "c"]  # pulls b's and c's models
    # The next round does not ask d at all; the background probe does, once per probe_interval.
    now = now + 1 + PARAMS.min_reply_wait
    for action in actions:
        bt.model_arrived(action.peer, action.msg.req, model(4), now)
    bt.published(5, {"b": 4, "c": 4}, now)
    bt.deadline = now + 0.3
    polls = bt.tick(now + 0.3)
    assert sorted(bt.pending) == ["b", "c"] and all(s.peer != "d" for s in polls)
    for send in polls:  # nothing newer: the node waits for the next round
        bt.receive(send.peer, VersionReply(send.msg.req, 4, 10, False), now + 0.31)
    assert bt.phase is Phase.WAITING
    probe_at = now + PARAMS.probe_interval  # a probe interval after d was suspected
    assert bt.next_deadline() <= probe_at
    probes = [a for a in bt.tick(probe_at) if isinstance(a, Send) and a.peer == "d"]
    assert probes == [Send("d", VersionRequest(bt.next_req - 1))] and "d" not in bt.pending
    # d restarts and answers the probe: it is back, and the next poll asks it again.
    assert bt.receive("d", VersionReply(probes[0].msg.req, 4, 10, False), probe_at + 0.01) == []
    assert bt.suspects == frozenset()
    bt.phase, bt.deadline = Phase.WAITING, probe_at + 0.1
    assert "d" in {s.peer for s in bt.tick(probe_at + 0.1) if isinstance(s, Send)} and "d" in bt.pending


def test_when_every_neighbour_is_suspected_the_node_waits_for_news_then_trains_alone():
    bt = machine(published_seq=1)
    bt.start(0.0)
    for peer in ("b", "c"):
        bt.liveness.missed(peer, 0.0)
    bt.deadline = 0.5
    actions = bt.tick(0.5)
    assert not any(isinstance(a, MergeAndTrain) for a in actions) and bt.phase is Phase.WAITING  # within wait_for_new
    bt.deadline = PARAMS.wait_for_new + 0.1
    actions = bt.tick(PARAMS.wait_for_new + 0.1)
    assert actions[-1] == MergeAndTrain(2, (), self_weight=50.0)


def test_duplicate_and_stale_messages_are_dropped_not_reused():
    bt = machine()
    polls = start_polling(bt)
    reply = VersionReply(polls[0].msg.req, 2, 80, False)
    assert bt.receive("b", reply, 1.0) == []
    assert bt.receive("b", reply, 1.0) == [Dropped("b", "stale_version_reply")]
    assert bt.receive("c", VersionReply(999, 2, 20, False), 1.0) == [Dropped("c", "stale_version_reply")]
    pulls = bt.receive("c", VersionReply(polls[1].msg.req, 0, 20, False), 1.0)
    assert pulls == [Send("b", ModelRequest(3, 0))]
    assert bt.model_arrived("b", 3, model(2), 1.1) == [MergeAndTrain(1, (PulledVersion("b", 2, 10.0),), self_weight=50.0)]
    assert bt.model_arrived("b", 3, model(2), 1.2) == [Dropped("b", "stale_model_reply")]


def test_refusal_counts_as_a_failed_pull():
    bt = machine()
    polls = start_polling(bt)
    bt.receive("b", VersionReply(polls[0].msg.req, 2, 80, False), 1.0)
    bt.receive("c", VersionReply(polls[1].msg.req, 1, 20, False), 1.0)
    assert bt.receive("b", Refusal(3, "no_model_yet"), 1.1) == [Dropped("b", "no_model_yet")]
    assert bt.model_arrived("c", 4, model(1), 1.2) == [MergeAndTrain(1, (PulledVersion("c", 1, 10.0),), self_weight=50.0)]


def test_serving_requests_in_any_phase():
    bt = machine(samples=42)
    assert bt.receive("b", VersionRequest(7), 0.0) == [Send("b", VersionReply(7, 0, 42, False))]
    assert bt.receive("b", ModelRequest(8, 0), 0.0) == [Send("b", Refusal(8, "no_model_yet"))]
    bt = machine(published_seq=2)
    start_polling(bt)
    assert bt.receive("c", ModelRequest(9, 1), 2.0) == [SendModel("c", 9, 1)]
    assert bt.receive("z", VersionRequest(1), 2.0) == [Dropped("z", "not_a_neighbour")]


def test_with_nothing_new_a_node_waits_for_neighbours_then_trains_alone():
    bt = machine(published_seq=1, merged={"b": 1, "c": 1})
    bt.published_at = 0.0
    polls = start_polling(bt)
    now = bt.next_deadline() - PARAMS.poll_timeout + 0.1
    bt.receive("b", VersionReply(polls[0].msg.req, 1, 80, False), now)
    assert bt.receive("c", VersionReply(polls[1].msg.req, 1, 20, False), now) == []
    assert bt.phase is Phase.WAITING  # waits instead of training on stale neighbours
    # Keep answering "nothing new" until wait_for_new has passed: then it trains alone.
    actions: list = []
    while not any(isinstance(a, MergeAndTrain) for a in actions):
        now = bt.next_deadline()
        actions = bt.tick(now)
        for action in actions:
            if isinstance(action, Send):
                actions = actions + bt.receive(action.peer, VersionReply(action.msg.req, 1, 10, False), now)
    assert now >= PARAMS.wait_for_new


def test_after_the_last_round_it_announces_and_lingers_until_neighbours_are_done():
    bt = machine(rounds=1)
    start_polling(bt)
    bt.tick(100.0)  # nobody answered: train alone
    actions = bt.published(1, {}, 100.0)
    assert actions[:2] == [Send("b", VersionReply(ANNOUNCEMENT, 1, 50, True)), Send("c", VersionReply(ANNOUNCEMENT, 1, 50, True))]
    assert actions[2:] == [Send("b", VersionRequest(3)), Send("c", VersionRequest(4))]
    assert bt.receive("b", ModelRequest(5, 0), 100.5) == [SendModel("b", 5, 0)]  # still serving
    assert bt.receive("b", VersionReply(3, 4, 80, True), 100.5) == []
    assert bt.receive("c", VersionReply(ANNOUNCEMENT, 4, 80, True), 100.6) == [Finished()]
    assert bt.finished


def test_lingering_ends_after_the_linger_timeout_when_a_neighbour_is_silent():
    bt = machine(rounds=1, published_seq=1)
    bt.start(0.0)
    deadline = bt.next_deadline()
    while not bt.finished:
        actions = bt.tick(deadline)
        deadline = bt.next_deadline() or deadline
    assert actions == [Finished()] and deadline == pytest.approx(PARAMS.linger)


def test_params_are_validated():
    with pytest.raises(ConfigError, match="plan.protocol.poll_timeout"):
        BrainTorrentParams.from_dict({"poll_timeout": -1})
    with pytest.raises(ConfigError, match="plan.protocol.bogus"):
        BrainTorrentParams.from_dict({"bogus": 1})


# -- whole federations, simulated ---------------------------------------------------------------

RING5 = {n: [f"n{(i - 1) % 5}", f"n{(i + 1) % 5}"] for i, n in enumerate(f"n{i}" for i in range(5))}
FAST = BrainTorrentParams(round_interval=0.2, poll_timeout=1.0, pull_timeout=2.0, wait_for_new=3.0, linger=10.0, done_poll_interval=0.5)


def test_a_ring_finishes_every_round_and_models_flow_between_neighbours():
    sim = Simulation(RING5, rounds=6, params=FAST)
    sim.run(until=120.0)
    for node in sim.nodes.values():
        assert node.protocol.finished and node.protocol.published_seq == 6
        pulled_from = {p.peer for action in node.history for p in action.pulled}
        assert pulled_from == set(RING5[node.name])
    # Everyone learns of everyone's end, so nobody waits out the linger timeout.
    assert max(n.finished_at for n in sim.nodes.values()) < 60.0


def test_a_dead_node_never_blocks_the_others():
    sim = Simulation(RING5, rounds=4, params=FAST)
    sim.kill("n2")
    sim.run(until=300.0)
    for node in sim.nodes.values():
        assert node.protocol.finished and node.protocol.published_seq == 4
        assert all(p.peer != "n2" for action in node.history for p in action.pulled)


def test_finished_neighbours_whose_last_version_was_merged_are_not_polled_again():
    bt = machine(rounds=5, published_seq=1, merged={"b": 3})
    bt.published_at = 0.0
    assert bt.receive("b", VersionReply(ANNOUNCEMENT, 3, 80, True), 0.0) == []  # b is done at version 3
    polls = start_polling(bt)
    assert polls == [Send("c", VersionRequest(1))]
    # With every neighbour done and merged, nothing new can come: train alone, no waiting.
    bt = machine(rounds=5, published_seq=1, merged={"b": 3, "c": 2})
    bt.receive("b", VersionReply(ANNOUNCEMENT, 3, 80, True), 0.0)
    bt.receive("c", VersionReply(ANNOUNCEMENT, 2, 20, True), 0.0)
    bt.start(0.0)
    assert bt.tick(bt.next_deadline()) == [MergeAndTrain(2, (), self_weight=50.0)]


def test_a_neighbour_with_nothing_newer_keeps_its_weight_inside_our_model():
    bt = machine()
    polls = start_polling(bt)
    bt.receive("b", VersionReply(polls[0].msg.req, 1, 80, False), 1.0)
    bt.receive("c", VersionReply(polls[1].msg.req, 1, 20, False), 1.0)
    bt.model_arrived("b", 3, model(1, samples=80), 1.1)
    assert bt.model_arrived("c", 4, model(1, samples=20), 1.1) == [
        MergeAndTrain(1, (PulledVersion("b", 1, 80.0), PulledVersion("c", 1, 20.0)), self_weight=50.0)]
    bt.published(1, {"b": 1, "c": 1}, 2.0)
    # Round 2: only c moved. b's version 1 is already inside our model, so our model weighs
    # 50 + 80 and c's 20 samples cannot swing it.
    polls = [a for a in bt.tick(bt.next_deadline()) if isinstance(a, Send)]
    now = bt.next_deadline() - PARAMS.poll_timeout + 0.1
    bt.receive("b", VersionReply(polls[0].msg.req, 1, 80, False), now)
    [pull] = bt.receive("c", VersionReply(polls[1].msg.req, 2, 20, False), now)
    assert bt.model_arrived("c", pull.msg.req, model(2, samples=20), now) == [
        MergeAndTrain(2, (PulledVersion("c", 2, 20.0),), self_weight=130.0)]


def test_a_node_waits_for_a_neighbour_that_fell_behind_but_not_for_ever():
    bt = machine(rounds=10, published_seq=4, merged={"b": 2, "c": 3})
    bt.published_at = 0.0
    polls = start_polling(bt)
    now = bt.next_deadline() - PARAMS.poll_timeout + 0.1
    bt.receive("b", VersionReply(polls[0].msg.req, 2, 80, False), now)  # b is 3 rounds behind our next round
    assert bt.receive("c", VersionReply(polls[1].msg.req, 4, 20, False), now) == []  # c moved, but we wait for b
    assert bt.phase is Phase.WAITING
    pulled: list = []
    while not pulled:  # b stays behind; after wait_for_new the round goes on with c's news
        now = bt.next_deadline()
        for action in bt.tick(now):
            if isinstance(action, Send) and isinstance(action.msg, VersionRequest):
                seq = 2 if action.peer == "b" else 4
                pulled += [a for a in bt.receive(action.peer, VersionReply(action.msg.req, seq, 10, False), now)
                           if isinstance(a, Send) and isinstance(a.msg, ModelRequest)]
    assert now >= PARAMS.wait_for_new and [a.peer for a in pulled] == ["c"]
    # Within max_lead (2), nothing waits: two rounds ahead of b is fine.
    bt = machine(rounds=10, published_seq=4, merged={"b": 3, "c": 3})
    bt.published_at = 0.0
    polls = start_polling(bt)
    bt.receive("b", VersionReply(polls[0].msg.req, 3, 80, False), 1.0)
    assert bt.receive("c", VersionReply(polls[1].msg.req, 4, 20, False), 1.0) == [Send("c", ModelRequest(3, 0))]


def test_max_lead_is_a_count_in_the_plan():
    assert BrainTorrentParams.from_dict({"max_lead": 3}).max_lead == 3
    with pytest.raises(ConfigError, match=r"plan\.protocol\.max_lead: must be an integer from 1 to 1024"):
        BrainTorrentParams.from_dict({"max_lead": 0.5})


def test_a_neighbour_stuck_at_one_version_is_not_waited_for():
    bt = machine(rounds=20, published_seq=8, merged={"b": 2, "c": 8})
    assert bt.start(0.0) == []
    bt.published_at = 100.0  # as if we had just published: only b's standstill can end the wait
    now, waited = 0.0, []
    for _ in range(30):  # b answers "version 2" for ever: after wait_for_new it is no longer waited for
        now = bt.next_deadline()
        actions = bt.tick(now)
        for action in [a for a in actions if isinstance(a, Send) and isinstance(a.msg, VersionRequest)]:
            actions += bt.receive(action.peer, VersionReply(action.msg.req, 2 if action.peer == "b" else 9, 10, False), now)
        if any(isinstance(a, Send) and isinstance(a.msg, ModelRequest) for a in actions):
            break
        waited.append(now)
    assert bt.phase is Phase.PULLING and waited and PARAMS.wait_for_new <= now < 2 * PARAMS.wait_for_new


def test_a_node_far_behind_its_neighbours_does_not_wait_for_news_it_catches_up():
    # Restarted after an outage: version 5, while b (merged already at 40) is at 40. b waits
    # for it (max_lead); if it waited for news from b in turn, both would sit out wait_for_new.
    bt = machine(rounds=100, published_seq=5, merged={"b": 40, "c": 40})
    bt.start(0.0)
    polls = start_polling_at(bt, 0.1)
    bt.receive("b", VersionReply(polls[0].msg.req, 40, 80, False), 0.2)
    [train] = bt.receive("c", VersionReply(polls[1].msg.req, 40, 20, False), 0.2)
    assert train == MergeAndTrain(6, (), self_weight=50.0)  # at once
    # Within max_lead of them, it waits for news as before.
    near = machine(rounds=100, published_seq=39, merged={"b": 40, "c": 40})
    near.start(0.0)
    polls = start_polling_at(near, 0.1)
    near.receive("b", VersionReply(polls[0].msg.req, 40, 80, False), 0.2)
    assert near.receive("c", VersionReply(polls[1].msg.req, 40, 20, False), 0.2) == [] and near.phase is Phase.WAITING


def start_polling_at(bt: BrainTorrent, now: float) -> list:
    bt.deadline = now
    return bt.tick(now)
