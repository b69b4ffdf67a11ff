"""Peak memory of a process tree, sampled from /proc (Linux).

RSS counts a shared page once in every process that maps it, so the sum over a tree
overstates what the tree costs when workers share libraries; PSS divides each shared page
among its users and sums to the real footprint. Both are reported."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The command name (field 2) is in parentheses and may hold spaces: split after it.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process exited while we looked
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _kib(path: Path, keys: tuple[str, ...]) -> dict[str, int]:
    values = {}
    try:
        for line in path.read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in keys:
                values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values


def tree_usage(root: int) -> tuple[int, int, int]:
    """(processes, RSS bytes, PSS bytes) of `root` and everything below it."""
    pids = descendants(root)
    rss = pss = 0
    for pid in pids:
        values = _kib(Path(f"/proc/{pid}/smaps_rollup"), ("Rss", "Pss"))
        rss += values.get("Rss", 0) * 1024
        pss += values.get("Pss", 0) * 1024
    return len(pids), rss, pss


@dataclass
class Peak:
    rss: int = 0
    pss: int = 0
    processes: int = 0


class TreeMemorySampler:
    """Samples the tree under `root` (default: this process) every `interval` s until stopped."""

    def __init__(self, root: int | None = None, interval: float = 0.5) -> None:
        self.root = root or os.getpid()
        self.interval = interval
        self.peak = Peak()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def __enter__(self) -> TreeMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            processes, rss, pss = tree_usage(self.root)
            self.peak = Peak(max(self.peak.rss, rss), max(self.peak.pss, pss), max(self.peak.processes, processes))
            if self._stop.wait(self.interval):
                return
