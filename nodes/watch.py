"""The warnings a running node logs as things change: a neighbour silent or back, training
alone, the disk running low. Pure: times and figures in, log lines out (each said once per
change, not every step)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .site_status import ALONE_ROUNDS, LOW_DISK_BYTES, SILENT_S


class Watch:
    def __init__(self, peers: Iterable[str], started: float, silent_s: float = SILENT_S) -> None:
        self.silent_s = silent_s
        self.started = started
        self.silent: set[str] = set()
        self.heard_at: dict[str, float] = {peer: started for peer in peers}  # start: not silent yet
        self.alone_rounds = 0
        self.disk_low = False

    def heard(self, peer: str, now: float) -> str | None:
        """A message from `peer`; a line when it was silent until now."""
        if peer not in self.heard_at:
            return None
        previous = self.heard_at[peer]
        self.heard_at[peer] = now
        if peer in self.silent:
            self.silent.discard(peer)
            return f"{peer} is back after {now - previous:.0f} s of silence"
        return None

    def check(self, now: float) -> list[str]:
        """Lines for neighbours that have just gone silent."""
        lines = []
        for peer, heard in sorted(self.heard_at.items()):
            if peer not in self.silent and now - heard > self.silent_s:
                self.silent.add(peer)
                since = "since the node started" if heard == self.started else f"for {now - heard:.0f} s"
                lines.append(f"{peer} silent {since}: check its node and the link (rounds go on without it)")
        return lines

    def round(self, merged: Mapping[str, int]) -> str | None:
        """A published round; a line when it makes ALONE_ROUNDS in a row without a neighbour."""
        self.alone_rounds = 0 if merged else self.alone_rounds + 1
        if self.alone_rounds == ALONE_ROUNDS:
            return f"trained alone for {ALONE_ROUNDS} rounds in a row: no neighbour's model arrived"
        return None

    def disk(self, free_bytes: int) -> str | None:
        """Free space now; a line when it drops below LOW_DISK_BYTES (again once it recovered)."""
        low = free_bytes < LOW_DISK_BYTES
        changed, self.disk_low = low != self.disk_low, low
        if changed and low:
            return f"disk low: {free_bytes / 1024**3:.2f} GiB free for the site directory; free space before it fills"
        return None
