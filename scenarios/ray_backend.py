"""Worker processes on a Ray cluster (`swarm-scenario run --backend ray`).

Ray only places and supervises processes. On every Ray node a small agent actor starts the
same `python -m scenarios.worker --site ...` workers as the local backend, and the nodes
still talk ZeroMQ over TCP to each other, each binding the address Ray knows its host by.
The signed manifest lists every endpoint before any worker starts, so the hosts are chosen
first (`RayCluster.plan_endpoints`) and each chosen host is asked for free ports of its own.
The nodes read and write their site directories on their hosts: the output directory must be
on a filesystem that every host mounts at the same path.

Which cluster: `RAY_ADDRESS` if set (an address such as `10.0.0.1:6379`, or `auto` for the
cluster this machine joined with `ray start`), otherwise a private local Ray instance that is
shut down again at the end of the run."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from nodes.site import SiteDir
from swarm.errors import ConfigError

from .worker import NODE_ENV, node_arguments

INSTALL_HINT = "install the ray extra: pip install 'swarm-hospitals[ray]'"
HOST_LOST = 75  # a worker's exit code when its host (or its agent) left the cluster
POLL_TIMEOUT = 2.0  # seconds; a slower answer counts as "still running", asked again next time
CALL_TIMEOUT = 120.0  # seconds for starting or signalling a worker on its host (a busy host may take a minute)
WAIT_STEP = 0.1
CONNECT_TIMEOUT = 5.0  # seconds to reach the head at RAY_ADDRESS
PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


@dataclass(frozen=True)
class Host:
    """A Ray node that can run workers: its Ray id, the address its nodes bind and its CPUs."""

    node_id: str
    address: str
    cpus: float


def assign_workers(hosts: Sequence[Host], worker_count: int) -> list[Host]:
    """The host of each worker: always the host with the fewest workers per CPU after taking
    one more, so equal hosts are filled round-robin and a host with twice the CPUs gets twice
    the workers. A host without CPUs (a head started with `--num-cpus=0`) gets none."""
    usable = [host for host in hosts if host.cpus > 0]
    if not usable:
        raise ConfigError("backend ray: no Ray node offers CPUs; start one with `ray start --address=HEAD:6379` (without --num-cpus=0)")
    counts = {host.node_id: 0 for host in usable}
    assigned = []
    for _ in range(worker_count):
        host = min(usable, key=lambda h: (counts[h.node_id] + 1) / h.cpus)
        counts[host.node_id] += 1
        assigned.append(host)
    return assigned


def alive_hosts() -> list[Host]:
    """Every live node of the connected cluster, in address order so plans are repeatable."""
    ray = _import_ray()
    hosts = [
        Host(node["NodeID"], node["NodeManagerAddress"], float(node.get("Resources", {}).get("CPU", 0.0)))
        for node in ray.nodes()
        if node.get("Alive")
    ]
    return sorted(hosts, key=lambda host: (host.address, host.node_id))


def plan_hosts(worker_count: int) -> list[Host]:
    """The host of each of `worker_count` workers on the connected cluster."""
    return assign_workers(alive_hosts(), worker_count)


class _HostAgent:
    """One per Ray node that runs workers: starts and signals their processes there.

    A serial actor, so every call runs on the agent process's main thread; that thread is the
    parent the kernel watches for PR_SET_PDEATHSIG (see `_die_with_agent`)."""

    def __init__(self) -> None:
        self.processes: dict[str, subprocess.Popen] = {}

    def free_ports(self, address: str, count: int) -> list[int]:
        from swarm.transport.zeromq import free_tcp_ports

        return free_tcp_ports(address, count)

    def reads(self, path: str, token: str) -> bool:
        """Whether this host sees the file the driver just wrote (a shared filesystem)."""
        try:
            return Path(path).read_text() == token
        except OSError:
            return False

    def start(self, key: str, arguments: list[str], sites: list[str], log_path: str, cwd: str) -> list[str]:
        """Start `python ARGUMENTS` as worker `key`; returns the site directories this host
        cannot see (and then starts nothing)."""
        missing = [site for site in sites if not Path(site).is_dir()]
        if missing:
            return missing
        with open(log_path, "ab") as log:
            self.processes[key] = subprocess.Popen(
                [sys.executable, *arguments],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_node_environment(),
                cwd=cwd if Path(cwd).is_dir() else None,  # relative data paths resolve as with the local backend
                start_new_session=True,  # signals go to the node alone, as with LocalWorker
                preexec_fn=_die_with_agent,
            )
        return []

    def poll(self, key: str) -> int | None:
        return self.processes[key].poll()

    def stop(self, key: str, kill: bool) -> None:
        process = self.processes[key]
        if process.poll() is not None:
            return
        if kill:
            process.kill()
        else:
            process.send_signal(signal.SIGTERM)


def _node_environment() -> dict[str, str]:
    """The host's environment as a node should see it, without what Ray sets for its own
    workers: an empty CUDA_VISIBLE_DEVICES is Ray hiding the GPUs from a zero-GPU actor."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "PYTHONBREAKPOINT"}
    if environment.get("CUDA_VISIBLE_DEVICES") == "":
        del environment["CUDA_VISIBLE_DEVICES"]
    return environment | NODE_ENV


_LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None  # loaded before fork, not in the child


def _die_with_agent() -> None:
    """Runs in the child before exec. If the agent dies (the driver was killed, the job
    ended), the kernel sends the node SIGTERM, so no orphan keeps its port on a remote host."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class RayCluster:
    """The connection to Ray for one run; use as a context manager. While connected it is
    the cluster RayWorker starts workers on."""

    def __init__(self, ray: ModuleType, owns_instance: bool) -> None:
        self.ray = ray
        self.owns_instance = owns_instance  # a local instance we started, or a connection we opened
        self.agents: dict[str, Any] = {}  # host address -> agent actor handle
        self.agent_class = ray.remote(num_cpus=0)(_HostAgent)  # no CPU: it only waits on processes
        self.closed = False

    @classmethod
    def connect(cls) -> RayCluster:
        global _active
        ray = _import_ray()
        if _active is not None:
            raise RuntimeError("a RayCluster is already connected in this process; close it first")
        if ray.is_initialized():  # the caller connected (a notebook, a test): use it, leave it up
            _active = cls(ray, owns_instance=False)
            return _active
        address = os.environ.get("RAY_ADDRESS")
        quiet: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
        try:
            if address:
                _check_reachable(address)
                ray.init(address=address, **quiet)
            else:
                # "local": never join a cluster that `ray start` left running on this machine by accident
                ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **quiet)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            if not address:
                raise ConfigError(f"backend ray: cannot start a local Ray instance ({exc}); see `ray start --head` for what Ray needs") from None
            raise ConfigError(
                f"RAY_ADDRESS={address}: cannot connect to a Ray cluster ({exc}); a cluster with token authentication also "
                "needs RAY_AUTH_MODE=token and its token in ~/.ray/auth_token here; or unset RAY_ADDRESS to run on a local Ray instance"
            ) from None
        _active = cls(ray, owns_instance=True)
        return _active

    def __enter__(self) -> RayCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect; a local instance we started stops, and with it every agent (whose
        nodes then get SIGTERM). Call after the workers were stopped."""
        global _active
        if self.closed:
            return
        self.closed = True
        _active = None
        for agent in self.agents.values():
            self.ray.kill(agent)
        if self.owns_instance:
            self.ray.shutdown()

    def cpus(self) -> int:
        return int(sum(host.cpus for host in alive_hosts()))

    def plan_endpoints(self, sites: int, nodes_per_worker: int, out: Path) -> list[str]:
        """Each site's endpoint, in site order: worker w runs sites [w*k, (w+1)*k) like
        `start_workers` groups them, on the host `plan_hosts` picks, at a port free there."""
        workers = -(-sites // nodes_per_worker)
        site_hosts = [host for host in plan_hosts(workers) for _ in range(nodes_per_worker)][:sites]
        by_address = {host.address: host for host in site_hosts}
        self._check_shared(out, list(by_address.values()))
        free = {
            address: self.ray.get(self.agent_for(address).free_ports.remote(address, sum(h.address == address for h in site_hosts)), timeout=CALL_TIMEOUT)
            for address in by_address
        }
        return [f"tcp://{host.address}:{free[host.address].pop()}" for host in site_hosts]

    def agent_for(self, address: str) -> Any:
        """The agent on the host with this address, started there on first use."""
        if address not in self.agents:
            host = next((h for h in alive_hosts() if h.address == address), None)
            if host is None:
                raise ConfigError(f"{address}: no live Ray node has this address; the site was planned for a host that left the cluster, run again")
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            self.agents[address] = self.agent_class.options(scheduling_strategy=NodeAffinitySchedulingStrategy(host.node_id, soft=False)).remote()
        return self.agents[address]

    def forget(self, address: str) -> None:
        """Drop a dead agent; a host that comes back gets a new one."""
        self.agents.pop(address, None)

    def _check_shared(self, out: Path, hosts: list[Host]) -> None:
        probe = out.resolve() / f".ray-probe-{uuid.uuid4().hex}"
        token = uuid.uuid4().hex
        probe.write_text(token)
        try:
            for host in hosts:
                if not self.ray.get(self.agent_for(host.address).reads.remote(str(probe), token), timeout=CALL_TIMEOUT):
                    raise ConfigError(
                        f"--out {out}: Ray host {host.address} does not see this directory; put the output directory on a "
                        "filesystem every Ray node mounts at the same path (NFS, CephFS, ...)"
                    )
        finally:
            probe.unlink(missing_ok=True)


_active: RayCluster | None = None


def active_cluster() -> RayCluster:
    if _active is None:
        raise RuntimeError("backend ray: no RayCluster is connected; open one with `with RayCluster.connect():`")
    return _active


class RayWorker:
    """A WorkerHandle for a worker process that an agent runs on the host its sites' endpoints
    name. The exit code is kept once known, so it can still be read after the cluster closed."""

    def __init__(self, sites: Sequence[Path], log_path: Path, insecure: bool = False) -> None:
        self.cluster = active_cluster()
        self.address = _endpoint_host(sites)
        self.key = str(log_path.resolve())
        self.exit_code: int | None = None
        self.agent = self.cluster.agent_for(self.address)
        start = self.agent.start.remote(self.key, node_arguments([s.resolve() for s in sites], insecure), [str(s.resolve()) for s in sites], self.key, os.getcwd())
        missing = self.cluster.ray.get(start, timeout=CALL_TIMEOUT)
        if missing:
            raise ConfigError(
                f"{missing[0]}: Ray host {self.address} does not see this site directory; put the output directory on a "
                "filesystem every Ray node mounts at the same path"
            )

    def poll(self) -> int | None:
        if self.exit_code is not None:
            return self.exit_code
        if self.cluster.closed:  # the agents are gone, and their nodes with them
            self.exit_code = HOST_LOST
            return self.exit_code
        ray = self.cluster.ray
        try:
            self.exit_code = ray.get(self.agent.poll.remote(self.key), timeout=POLL_TIMEOUT)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.ActorUnavailableError):
            return None  # a slow or briefly unreachable host is not an exit
        except ray.exceptions.RayActorError:
            self.cluster.forget(self.address)
            self.exit_code = HOST_LOST
        return self.exit_code

    def terminate(self) -> None:
        self._signal(kill=False)

    def kill(self) -> None:
        self._signal(kill=True)

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None and time.monotonic() < deadline:
            time.sleep(WAIT_STEP)
        return code

    def _signal(self, kill: bool) -> None:
        if self.poll() is not None:
            return
        ray = self.cluster.ray
        try:
            ray.get(self.agent.stop.remote(self.key, kill), timeout=CALL_TIMEOUT)
        except ray.exceptions.RayError:
            pass  # the host is gone or not answering: poll() reports it


def _endpoint_host(sites: Sequence[Path]) -> str:
    """The host every site of one worker binds; they must share one, since one process runs them."""
    endpoints = [SiteDir(site).load_config().endpoint for site in sites]
    addresses = {endpoint.removeprefix("tcp://").rsplit(":", 1)[0] for endpoint in endpoints if endpoint is not None}
    if len(addresses) != 1:
        raise ConfigError(
            f"{sites[0].parent}: one worker's sites bind different hosts ({', '.join(sorted(addresses))}); "
            "create the federation with the endpoints RayCluster.plan_endpoints gives for the same nodes_per_worker"
        )
    return addresses.pop()


def _check_reachable(address: str) -> None:
    """Fail in seconds where Ray would retry an unreachable head for minutes."""
    if address in ("auto", "local") or "://" in address:
        return  # Ray resolves these itself
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise ConfigError(f"RAY_ADDRESS={address}: not HOST:PORT (example: RAY_ADDRESS=10.0.0.1:6379, or auto)")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise ConfigError(
            f"RAY_ADDRESS={address}: nothing answers there ({exc.strerror or exc}); start the head with "
            "`ray start --head --port=6379`, check the address and firewall, or unset RAY_ADDRESS to run on a local Ray instance"
        ) from None


def _import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise ConfigError(f"backend ray: {INSTALL_HINT}") from None
    return ray
