"""Back-off of a neighbour that keeps sending garbage, on a fake clock."""

from nodes.backoff import PeerBackoff


def test_strikes_within_the_window_start_a_doubling_backoff():
    b = PeerBackoff(strikes=3, window=10.0, base=5.0, cap=12.0)
    assert [b.strike("x", t) for t in (0.0, 1.0)] == [None, None]
    assert b.strike("x", 2.0) == 5.0 and b.blocked("x", 6.9) and not b.blocked("x", 7.0)
    assert not b.blocked("y", 3.0)  # per peer
    assert [b.strike("x", t) for t in (7.0, 7.5, 8.0)] == [None, None, 10.0]  # doubled
    assert [b.strike("x", t) for t in (18.0, 18.1, 18.2)] == [None, None, 12.0]  # capped


def test_strikes_spread_wider_than_the_window_never_trip_it():
    b = PeerBackoff(strikes=3, window=10.0, base=5.0)
    assert all(b.strike("x", t) is None for t in range(0, 100, 6))
    assert not b.blocked("x", 100.0)


def test_a_peer_that_behaves_for_a_window_starts_over_at_the_base():
    b = PeerBackoff(strikes=2, window=10.0, base=5.0)
    b.strike("x", 0.0)
    assert b.strike("x", 0.1) == 5.0
    b.strike("x", 30.0)
    assert b.strike("x", 30.1) == 5.0  # not 10: it behaved from 5.1 to 30
