"""The failure detector on its own: adaptive deadlines, suspicion, background probes."""

from __future__ import annotations

import pytest

from gossip.liveness import Liveness


def test_the_reply_deadline_adapts_to_observed_round_trips_between_floor_and_ceiling():
    live = Liveness(["b"], floor=0.2, probe_interval=1.0)
    assert live.reply_within("b", ceiling=5.0) == 5.0  # nothing known yet: the protocol's timeout
    for req, trip in enumerate([0.30, 0.32, 0.28, 0.31], start=1):
        live.asked("b", req, 10.0 * req)
        live.heard("b", 10.0 * req + trip, req)
    # Twice the slowest recent round trip (0.64) beats mean + 4 sd (about 0.36).
    assert live.reply_within("b", ceiling=5.0) == pytest.approx(0.64)
    assert live.reply_within("b", ceiling=0.5) == 0.5
    fast = Liveness(["b"], floor=0.2, probe_interval=1.0)
    for req in range(1, 5):
        fast.asked("b", req, float(req))
        fast.heard("b", req + 0.001, req)
    assert fast.reply_within("b", ceiling=5.0) == 0.2  # never below the floor
    assert live.reply_within("stranger", ceiling=3.0) == 3.0


def test_a_missed_deadline_starts_a_suspicion_that_any_message_clears():
    live = Liveness(["b", "c"], floor=0.2, probe_interval=1.0)
    assert live.missed("b", 5.0) and not live.missed("b", 6.0)  # one suspicion, not one per miss
    assert live.suspects == {"b"} and live.suspected("b") and not live.suspected("c")
    assert live.probes_due(5.5) == [] and live.next_probe() == 6.0
    assert live.probes_due(6.0) == ["b"]
    live.probe_sent("b", 7, 6.0)
    assert live.probes_due(6.5) == [] and live.is_probe("b", 7) and not live.is_probe("b", 8)
    assert not live.heard("c", 6.1)  # c was never suspected
    assert live.heard("b", 6.2)  # a chunk, a request, anything: b is back
    assert live.suspects == frozenset() and live.next_probe() is None
    assert live.is_probe("b", 7)  # its reply, when it comes, is still known as a probe's
    assert not live.heard("b", 6.3, 7)
    assert live.drain_changes() == [("b", True, 5.0), ("b", False, 6.2)] and live.drain_changes() == []


def test_unanswered_requests_are_forgotten_beyond_a_bound():
    live = Liveness(["b"], floor=0.2, probe_interval=1.0)
    for req in range(1, 1000):
        live.asked("b", req, float(req))
    assert len(live._peers["b"].asked) <= 32
    live.heard("b", 1000.5, 999)
    assert live._peers["b"].round_trips[-1] == pytest.approx(1.5)
