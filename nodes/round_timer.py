"""Where a node's wall time goes between two published versions.

The main loop charges the time since its last mark to what the protocol is doing (waiting
for neighbours, pulling models, training in the worker thread); work the loop does itself
-- verifying a model, sending one -- is measured and charged to its own bucket instead. The
learner adds merge/train/evaluate times it measured in the worker thread."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

BACKGROUND = "train"  # while the worker thread trains, the loop's idle time is not a cost of its own
BUCKETS = ("wait", "transfer", "verify", "publish")  # always reported, 0 when unused


class RoundTimer:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.mark = clock()
        self.round_started = self.mark
        self.spent: Counter[str] = Counter()

    def charge(self, activity: str) -> None:
        """Charge the time since the last mark to `activity`."""
        now = self.clock()
        if activity != BACKGROUND:
            self.spent[activity] += now - self.mark
        self.mark = now

    @contextmanager
    def measure(self, bucket: str, activity: str) -> Iterator[None]:
        """Charge what came before to `activity`, the enclosed work to `bucket`."""
        self.charge(activity)
        try:
            yield
        finally:
            now = self.clock()
            self.spent[bucket] += now - self.mark
            self.mark = now

    def take(self, activity: str) -> dict[str, float]:
        """This round's breakdown (plus its wall time as "round"), and start the next round."""
        self.charge(activity)
        spent = {bucket: 0.0 for bucket in BUCKETS} | dict(self.spent) | {"round": self.mark - self.round_started}
        self.spent = Counter()
        self.round_started = self.mark
        return spent
