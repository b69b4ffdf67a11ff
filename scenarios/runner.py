"""Running a federation's worker processes and watching them.

Each worker process (`python -m scenarios.worker`, see there) runs the same nodes as
`swarm-node run` for one or more sites, simulated Byzantine sites included. Small
federations get one process per hospital; large ones pack several nodes into each worker,
every node keeping its own ZeroMQ sockets, keys and signed log, so the wire protocol is the
same as between real sites. The runner only reads what nodes write to disk (metrics.jsonl,
status.json) to show progress; it never talks to them over the network."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from nodes.site import SiteDir

from .worker import NODE_ENV, node_arguments

PROCESSES_PER_CORE = 4  # workers mostly wait on each other; a few per core keep both cores busy


def default_nodes_per_worker(nodes: int, cores: int | None = None) -> int:
    """One process per node while that fits a few processes per core; beyond, pack evenly."""
    workers = max(1, PROCESSES_PER_CORE * (cores or os.cpu_count() or 1))
    return max(1, math.ceil(nodes / workers))


class WorkerHandle(Protocol):
    """A running worker: a local subprocess or a Ray task (scenarios.ray_backend)."""

    def poll(self) -> int | None: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...
    def wait(self, timeout: float) -> int | None: ...


@dataclass
class NodeRun:
    name: str
    site: Path
    worker: WorkerHandle
    metrics: list[dict] = field(default_factory=list)
    _offset: int = 0

    @property
    def exit_code(self) -> int | None:
        return self.worker.poll()

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


class LocalWorker:
    """A `python -m scenarios.worker --site ... [--site ...]` subprocess in its own session."""

    def __init__(self, sites: Sequence[Path], log_path: Path, insecure: bool = False) -> None:
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, *node_arguments(sites, insecure)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=os.environ | NODE_ENV,
                start_new_session=True,  # Ctrl-C at the runner is handled by the runner, not each node
            )

    def poll(self) -> int | None:
        return self.process.poll()

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()

    def wait(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def peak_rss(self) -> int | None:
        """The process's peak resident memory so far in bytes (Linux' VmHWM), None once it
        has exited or where /proc cannot tell."""
        try:
            with open(f"/proc/{self.process.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None


def worker_log_path(sites: Sequence[Path]) -> Path:
    """A single site logs into its own node.log; a packed worker's process output (its
    nodes still write their own node.log) goes to workers/<first site>.log."""
    if len(sites) == 1:
        return sites[0] / "node.log"
    directory = sites[0].parent.parent / "workers"
    directory.mkdir(exist_ok=True)
    return directory / f"{sites[0].name}.log"


StartWorker = Callable[..., WorkerHandle]  # (sites, log path, insecure=...)


def start_workers(sites: dict[str, Path], nodes_per_worker: int, start: StartWorker = LocalWorker, insecure: bool = False) -> list[NodeRun]:
    names = list(sites)
    runs: list[NodeRun] = []
    for first in range(0, len(names), nodes_per_worker):
        group = names[first : first + nodes_per_worker]
        paths = [sites[name] for name in group]
        worker = start(paths, worker_log_path(paths), insecure=insecure)
        runs += [NodeRun(name, sites[name], worker) for name in group]
    return runs


@dataclass(frozen=True)
class Placement:
    """What must be known before the manifest is built: how many nodes share a worker and,
    on Ray, each site's endpoint on the host its worker will run on."""

    nodes_per_worker: int
    endpoints: list[str] | None = None  # None: the scenario's host, at ports free here


@contextmanager
def worker_placement(backend: str, nodes: int, nodes_per_worker: int | None, out: Path) -> Iterator[Placement]:
    """Where a run's workers go; on Ray, also the cluster connection the run's workers use,
    closed (a local instance stopped) when the block ends."""
    if backend != "ray":
        yield Placement(nodes_per_worker or default_nodes_per_worker(nodes))
        return
    from .ray_backend import RayCluster

    with RayCluster.connect() as cluster:
        per_worker = nodes_per_worker or default_nodes_per_worker(nodes, cores=cluster.cpus())
        yield Placement(per_worker, cluster.plan_endpoints(nodes, per_worker, out))


@dataclass
class RunOutcome:
    nodes: list[NodeRun]
    wall_seconds: float
    timed_out: bool
    workers: int = 1
    peak_rss_bytes: int | None = None  # sum over worker processes of each one's peak (local workers only)
    interrupted: bool = False  # Ctrl-C or SIGTERM: the nodes were stopped before the plan's end

    @property
    def all_finished(self) -> bool:
        return not self.timed_out and not self.interrupted and all(n.exit_code == 0 for n in self.nodes)


def run_federation(
    sites: dict[str, Path],
    rounds: int,
    timeout: float,
    progress: Callable[[str], None],
    *,
    nodes_per_worker: int | None = None,
    backend: str = "local",
    insecure: bool = False,
) -> RunOutcome:
    per_worker = nodes_per_worker or default_nodes_per_worker(len(sites))
    start = _worker_starter(backend)
    started = time.monotonic()
    if insecure:
        progress("WARNING: --insecure: the nodes run WITHOUT CurveZMQ (plaintext, no allow-list); debugging only")
    with signals_held() as held:  # Ctrl-C while they start would leave nodes nobody stops
        nodes = start_workers(sites, per_worker, start, insecure)
    workers = _distinct_workers(nodes)
    if per_worker > 1 or backend != "local":
        progress(f"{len(sites)} nodes in {len(workers)} worker processes ({per_worker} per worker, {backend})")
    timed_out = interrupted = False
    last_round_shown = 0
    peaks: dict[int, int] = {}
    try:
        held.raise_if_any()
        while any(w.poll() is None for w in workers):
            _sample_peaks(workers, peaks)
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
        interrupted = True
    finally:
        stop_workers(workers)
    for node in nodes:
        node.read_new_metrics()
    peak = sum(peaks.values()) if peaks and all(hasattr(w, "peak_rss") for w in workers) else None
    return RunOutcome(nodes, time.monotonic() - started, timed_out, len(workers), peak, interrupted)


def _sample_peaks(workers: list[WorkerHandle], peaks: dict[int, int]) -> None:
    """Keep each worker's peak memory while it runs (it cannot be read after it exits)."""
    for worker in workers:
        peak = getattr(worker, "peak_rss", lambda: None)()
        if peak is not None:
            peaks[id(worker)] = max(peaks.get(id(worker), 0), peak)


def _worker_starter(backend: str) -> StartWorker:
    if backend == "ray":
        from .ray_backend import RayWorker

        return RayWorker
    return LocalWorker


def _distinct_workers(nodes: list[NodeRun]) -> list[WorkerHandle]:
    seen: dict[int, WorkerHandle] = {}
    for node in nodes:
        seen.setdefault(id(node.worker), node.worker)
    return list(seen.values())


MAX_SHOWN = 12  # a progress line shows every node of a small federation, a summary of a big one


def _progress_line(nodes: list[NodeRun], done: int, rounds: int, elapsed: float) -> str:
    accuracies = [n.metrics[-1].get("accuracy", math.nan) for n in nodes]
    if len(nodes) <= MAX_SHOWN:
        shown = "  ".join(f"{n.name.removeprefix('hospital-')}={a:.3f}" for n, a in zip(nodes, accuracies))
    else:
        finite = [a for a in accuracies if not math.isnan(a)] or [math.nan]
        shown = f"mean={sum(finite) / len(finite):.3f}  min={min(finite):.3f}  max={max(finite):.3f}  ({len(nodes)} nodes)"
    return f"[{elapsed:6.1f}s] round {done:>3}/{rounds}  accuracy  {shown}"


def stop_workers(workers: list[WorkerHandle], grace: float = 15.0) -> None:
    """SIGTERM (nodes finish their step and persist), then SIGKILL whoever is still there."""
    for worker in workers:
        worker.terminate()
    deadline = time.monotonic() + grace
    for worker in workers:
        if worker.wait(max(0.0, deadline - time.monotonic())) is None:
            worker.kill()
            worker.wait(5.0)


class HeldSignals:
    """Ctrl-C and SIGTERM that arrived while `signals_held` held them."""

    def __init__(self) -> None:
        self.signals: list[int] = []

    def raise_if_any(self) -> None:
        if self.signals:
            raise KeyboardInterrupt


@contextmanager
def signals_held() -> Iterator[HeldSignals]:
    """Hold Ctrl-C and SIGTERM while the block runs; `raise_if_any` delivers them later as
    KeyboardInterrupt, where the caller can clean up."""
    held = HeldSignals()
    if threading.current_thread() is not threading.main_thread():  # handlers live in the main thread
        yield held
        return
    previous = {sig: signal.signal(sig, lambda signum, frame: held.signals.append(signum)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield held
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
