"""Disconnecting a neighbour that keeps sending garbage, for a while.

Each rejected message is a strike against its sender. `strikes` strikes within `window`
seconds put the peer in back-off: its messages are dropped unread (no decoding, no
verification: garbage costs us nothing more) and we send it nothing. The first back-off
lasts `base` seconds and each one after doubles, up to `cap`; a peer that behaves for a
whole window after a back-off starts from `base` again. A real neighbour with a bug comes
back on its own; a flood stays cheap."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class _Record:
    strikes: deque[float] = field(default_factory=deque)
    until: float = 0.0
    level: int = 0  # back-offs in a row


class PeerBackoff:
    def __init__(self, strikes: int = 20, window: float = 60.0, base: float = 30.0, cap: float = 600.0) -> None:
        self.limit = strikes
        self.window = window
        self.base = base
        self.cap = cap
        self._peers: dict[str, _Record] = {}

    def blocked(self, peer: str, now: float) -> bool:
        record = self._peers.get(peer)
        return record is not None and now < record.until

    def strike(self, peer: str, now: float) -> float | None:
        """Count a rejected message; returns the back-off length when this one starts one."""
        record = self._peers.setdefault(peer, _Record())
        if record.level and now >= record.until + self.window:
            record.level = 0  # behaved for a window since the last back-off
        record.strikes.append(now)
        while record.strikes and record.strikes[0] <= now - self.window:
            record.strikes.popleft()
        if len(record.strikes) < self.limit or now < record.until:
            return None
        seconds = min(self.cap, self.base * 2**record.level)
        record.level += 1
        record.until = now + seconds
        record.strikes.clear()
        return seconds
