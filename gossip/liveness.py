"""Which neighbours seem dead: a failure detector with adaptive deadlines. Pure (times in).

Each request we send a neighbour and the reply it gets gives a round-trip time. A poll waits
for a neighbour's reply only as long as its recent round trips make likely (the mean plus
four standard deviations, at least twice the slowest recent one), never less than
`floor` and never more than the protocol's own timeout. A neighbour that misses that
deadline is suspected: rounds stop waiting for it, and it is probed in the background
every `probe_interval` until any message of its arrives, which clears the suspicion.

A false suspicion costs a round without that neighbour's newest model; a dead neighbour
that is not suspected costs every round a full timeout. The detector errs towards the
first, and the probe brings a live neighbour back within one probe interval."""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

SAMPLES = 32  # round trips remembered per neighbour
SPREAD = 4.0  # standard deviations above the mean a reply may take
SLOWEST = 2.0  # and at least this many times the slowest recent round trip


@dataclass
class _Peer:
    round_trips: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    asked: dict[int, tuple[float, bool]] = field(default_factory=dict)  # request id -> (sent at, a probe)
    suspected_since: float | None = None
    probed_at: float = -1e18


class Liveness:
    def __init__(self, peers: Iterable[str], floor: float, probe_interval: float) -> None:
        self.floor = floor
        self.probe_interval = probe_interval
        self._peers = {peer: _Peer() for peer in peers}
        self.changes: list[tuple[str, bool, float]] = []  # (peer, suspected now, at): for the runtime's log

    # -- what the protocol tells it ------------------------------------------------------------

    def asked(self, peer: str, req: int, now: float, probe: bool = False) -> None:
        """We sent `peer` request `req` (a version request) and will time its reply."""
        record = self._peers.get(peer)
        if record is None:
            return
        if len(record.asked) >= SAMPLES:  # unanswered ones from long ago: forget the oldest
            del record.asked[min(record.asked)]
        record.asked[req] = (now, probe)

    def heard(self, peer: str, now: float, req: int | None = None) -> bool:
        """Any message from `peer` (a reply to `req` when given): it is alive. True when it
        was suspected until now."""
        record = self._peers.get(peer)
        if record is None:
            return False
        sent, _ = record.asked.pop(req, (None, False)) if req is not None else (None, False)
        if sent is not None and now >= sent:
            record.round_trips.append(now - sent)
        if record.suspected_since is None:
            return False
        record.suspected_since = None
        self.changes.append((peer, False, now))
        return True

    def missed(self, peer: str, now: float) -> bool:
        """`peer` did not answer in time. True when this starts a suspicion."""
        record = self._peers.get(peer)
        if record is None or record.suspected_since is not None:
            return False
        record.suspected_since = now
        record.probed_at = now  # it was just asked: the first probe follows an interval later
        self.changes.append((peer, True, now))
        return True

    # -- what the protocol asks of it -----------------------------------------------------------

    def suspected(self, peer: str) -> bool:
        record = self._peers.get(peer)
        return record is not None and record.suspected_since is not None

    @property
    def suspects(self) -> frozenset[str]:
        return frozenset(peer for peer, record in self._peers.items() if record.suspected_since is not None)

    def reply_within(self, peer: str, ceiling: float) -> float:
        """How long to wait for `peer`'s reply: adaptive, in [min(floor, ceiling), ceiling];
        the ceiling until a few round trips are known."""
        record = self._peers.get(peer)
        if record is None or len(record.round_trips) < 3:
            return ceiling
        trips = record.round_trips
        adaptive = max(statistics.fmean(trips) + SPREAD * statistics.pstdev(trips), SLOWEST * max(trips))
        return min(ceiling, max(self.floor, adaptive))

    def probes_due(self, now: float) -> list[str]:
        """Suspected neighbours due for a background probe (each is then `probe_sent`)."""
        return [peer for peer, record in self._peers.items()
                if record.suspected_since is not None and now >= record.probed_at + self.probe_interval]

    def probe_sent(self, peer: str, req: int, now: float) -> None:
        self._peers[peer].probed_at = now
        self.asked(peer, req, now, probe=True)

    def is_probe(self, peer: str, req: int) -> bool:
        """Whether `req` is one of our background probes of `peer` (its reply needs no round)."""
        record = self._peers.get(peer)
        return record is not None and record.asked.get(req, (0.0, False))[1]

    def next_probe(self) -> float | None:
        due = [record.probed_at + self.probe_interval for record in self._peers.values() if record.suspected_since is not None]
        return min(due) if due else None

    def drain_changes(self) -> list[tuple[str, bool, float]]:
        changes, self.changes = self.changes, []
        return changes
