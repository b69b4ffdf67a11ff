"""Running a federation's node processes and watching them.

Each hospital is a separate OS process running the real `swarm-node run` (via
`python -m nodes`, the same entry point). The runner only reads what nodes write to disk
(metrics.jsonl, status.json) to show progress; it never talks to them over the network."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nodes.site import SiteDir


@dataclass
class NodeProcess:
    name: str
    site: Path
    process: subprocess.Popen
    metrics: list[dict] = field(default_factory=list)
    _offset: int = 0

    def read_new_metrics(self) -> bool:
        """Append complete new lines of metrics.jsonl; True if any arrived."""
        path = SiteDir(self.site).metrics_path
        if not path.exists():
            return False
        with open(path, "rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        lines = [json.loads(line) for line in complete.splitlines() if line.strip()]
        self.metrics += lines
        return bool(lines)


def start_node(name: str, site: Path) -> NodeProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log = open(site / "node.log", "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "nodes", "run", "--site", str(site)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # Ctrl-C at the runner is handled by the runner, not each node
    )
    log.close()
    return NodeProcess(name, site, process)


@dataclass
class RunOutcome:
    nodes: list[NodeProcess]
    wall_seconds: float
    timed_out: bool

    @property
    def all_finished(self) -> bool:
        return not self.timed_out and all(n.process.returncode == 0 for n in self.nodes)


def run_federation(sites: dict[str, Path], rounds: int, timeout: float, progress: Callable[[str], None]) -> RunOutcome:
    started = time.monotonic()
    nodes = [start_node(name, site) for name, site in sites.items()]
    timed_out = False
    last_round_shown = 0
    try:
        while any(n.process.poll() is None for n in nodes):
            if time.monotonic() - started > timeout:
                timed_out = True
                progress(f"timeout after {timeout:.0f} s: stopping the nodes")
                break
            if any([n.read_new_metrics() for n in nodes]):
                done = min(len(n.metrics) for n in nodes)
                if done > last_round_shown:
                    last_round_shown = done
                    progress(_progress_line(nodes, done, rounds, time.monotonic() - started))
            time.sleep(0.25)
    except KeyboardInterrupt:
        progress("interrupted: stopping the nodes (they persist their state)")
        timed_out = True
    finally:
        stop_nodes(nodes)
    for node in nodes:
        node.read_new_metrics()
    return RunOutcome(nodes, time.monotonic() - started, timed_out)


def _progress_line(nodes: list[NodeProcess], done: int, rounds: int, elapsed: float) -> str:
    accuracies = "  ".join(f"{n.name.removeprefix('hospital-')}={n.metrics[-1]['accuracy']:.3f}" for n in nodes)
    return f"[{elapsed:6.1f}s] round {done:>3}/{rounds}  accuracy  {accuracies}"


def stop_nodes(nodes: list[NodeProcess], grace: float = 15.0) -> None:
    """SIGTERM (nodes finish their step and persist), then SIGKILL whoever is still there."""
    for node in nodes:
        if node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for node in nodes:
        try:
            node.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()
