"""What a running node writes down about itself: refused messages (counted per reason and
per authenticated neighbour, logged at a bounded rate), one metrics line per published
version (`metrics.jsonl`) and its status document (`status.json`, rewritten atomically)."""

from __future__ import annotations

import json
import logging
import resource
import shutil
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from swarm.atomic import write_atomic

log = logging.getLogger("swarm.node")


class RejectionLog:
    """Counts refused messages per reason, and per neighbour and reason (the neighbour the
    transport authenticated: under CurveZMQ the owner of the key, never a claimed name);
    logs each (peer, reason) at most every 10 s."""

    def __init__(self, clock: Callable[[], float], known_peers: set[str], interval: float = 10.0) -> None:
        self.counts: Counter[str] = Counter()
        self.by_peer: dict[str, Counter[str]] = {}  # neighbours only: strangers pick their names
        self.known_peers = known_peers
        self.clock = clock
        self.interval = interval
        self._last_logged: dict[tuple[str, str], float] = {}
        self._unlogged: Counter[tuple[str, str]] = Counter()

    def reject(self, peer: str, reason: str, detail: str = "") -> None:
        self.counts[reason] += 1
        if peer in self.known_peers:
            self.by_peer.setdefault(peer, Counter())[reason] += 1
        # Senders choose their names: rate-limit all strangers together so memory stays bounded.
        key = (peer if peer in self.known_peers else "<not a neighbour>", reason)
        now = self.clock()
        if now - self._last_logged.get(key, -1e18) >= self.interval:
            also = f" (+{self._unlogged[key]} more since last report)" if self._unlogged[key] else ""
            log.warning("rejected message from %s: %s%s%s", peer[:64], reason, f": {detail}" if detail else "", also)
            self._last_logged[key] = now
            self._unlogged[key] = 0
        else:
            self._unlogged[key] += 1


def read_metrics(path: Path, last: int | None = None) -> list[dict[str, Any]]:
    """The lines of a metrics.jsonl (the `last` ones only, if given); none for a missing
    file, and a line cut by a crash is left out."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines[-last:] if last else lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def append_metrics_line(path: Path, line: Mapping[str, Any]) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(line) + "\n")


def metrics_line(
    node: str, round_no: int, seq: int, elapsed: float, metrics: Mapping[str, float], samples: int,
    merged: Mapping[str, int], bytes_sent: int, bytes_received: int, timings: Mapping[str, float],
) -> dict[str, Any]:
    """One round's line: the signed metrics, what was merged, cumulative bytes on the wire and
    the wall time per activity (the loop's wait, transfer, verify, publish; the worker's
    merge, train, evaluate, snapshot)."""
    return {
        "node": node,
        "round": round_no,
        "seq": seq,
        "time": time.time(),
        "elapsed": round(elapsed, 3),
        **metrics,
        "samples": samples,
        "merged": dict(merged),
        "bytes_sent": bytes_sent,
        "bytes_received": bytes_received,
        "timings": {k: round(v, 4) for k, v in timings.items()},
    }


def peak_rss_bytes() -> int:
    """The most memory this process has held (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def disk_free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds `path` (what the node can still write)."""
    return shutil.disk_usage(path).free


def write_status(path: Path, status: Mapping[str, Any]) -> None:
    write_atomic(path, (json.dumps(status, indent=2) + "\n").encode())
