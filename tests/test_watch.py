"""The warnings a running node logs as things change (nodes.watch), on a fake clock."""

from __future__ import annotations

from nodes.site_status import ALONE_ROUNDS, LOW_DISK_BYTES, SILENT_S
from nodes.watch import Watch


def test_a_silent_neighbour_is_reported_once_and_its_return_too():
    watch = Watch(["hospital-b", "hospital-c"], started=0.0)
    assert watch.check(SILENT_S) == []
    watch.heard("hospital-c", SILENT_S)
    [line] = watch.check(SILENT_S + 1)
    assert line.startswith("hospital-b silent since the node started")
    assert watch.check(SILENT_S + 30) == []  # said once
    assert watch.heard("hospital-b", SILENT_S + 40) == "hospital-b is back after 100 s of silence"
    assert watch.heard("hospital-b", SILENT_S + 41) is None
    [line] = watch.check(2 * SILENT_S + 1)  # b was heard at 101, c last at 60
    assert "hospital-c silent for" in line and "hospital-b" not in line
    assert watch.heard("a stranger", 0.0) is None


def test_training_alone_and_a_low_disk_are_said_when_they_start():
    watch = Watch([], started=0.0)
    lines = [watch.round({}) for _ in range(ALONE_ROUNDS + 2)]
    assert lines.count(None) == ALONE_ROUNDS + 1 and "trained alone" in lines[ALONE_ROUNDS - 1]
    assert watch.round({"hospital-b": 3}) is None and watch.alone_rounds == 0
    assert watch.disk(LOW_DISK_BYTES * 10) is None
    assert "disk low" in watch.disk(LOW_DISK_BYTES // 2)
    assert watch.disk(LOW_DISK_BYTES // 3) is None  # still low: said already
    assert watch.disk(LOW_DISK_BYTES * 2) is None
    assert "disk low" in watch.disk(1)  # low again
