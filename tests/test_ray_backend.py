"""The Ray backend: host planning, worker handles on a local Ray instance, and a whole
scenario run with `--backend ray`.

Without the ray extra they are skipped, except under CI=true (.ci/run installs the extra), where
a missing Ray fails: a CI that forgot the extra cannot pass without running them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

if not os.environ.get("CI"):
    pytest.importorskip("ray", reason='the ray extra is not installed: pip install -e ".[ray]"')

from scenarios.config import ScenarioConfig
from scenarios.federation import create_federation
from scenarios.ray_backend import HOST_LOST, Host, RayCluster, RayWorker, _check_reachable, _endpoint_host, assign_workers, plan_hosts
from scenarios.runner import stop_workers, worker_log_path
from swarm.errors import ConfigError
from tests.conftest import write_scenario

ENV = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
QUICKSTART = Path(__file__).parent.parent / "scenarios" / "quickstart.toml"


def hosts(*cpus: float) -> list[Host]:
    return [Host(f"node-{i}", f"10.0.0.{i}", c) for i, c in enumerate(cpus)]


def test_workers_fill_equal_hosts_round_robin():
    assert [h.node_id for h in assign_workers(hosts(2, 2, 2), 5)] == ["node-0", "node-1", "node-2", "node-0", "node-1"]


def test_a_host_with_more_cpus_gets_more_workers_and_one_without_gets_none():
    assigned = [h.node_id for h in assign_workers(hosts(0, 4, 2), 6)]
    assert assigned.count("node-0") == 0
    assert (assigned.count("node-1"), assigned.count("node-2")) == (4, 2)


def test_a_cluster_without_cpus_is_a_config_error():
    with pytest.raises(ConfigError, match="no Ray node offers CPUs"):
        assign_workers(hosts(0), 1)


def test_without_the_ray_extra_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    with pytest.raises(ConfigError, match=r"pip install 'swarm-hospitals\[ray\]'"):
        RayCluster.connect()


def test_an_unreachable_or_malformed_ray_address_fails_at_once():
    started = time.monotonic()
    with pytest.raises(ConfigError, match="nothing answers there"):
        _check_reachable("127.0.0.1:1")  # Ray itself would retry for minutes
    assert time.monotonic() - started < 10
    with pytest.raises(ConfigError, match="not HOST:PORT"):
        _check_reachable("head-without-port")
    _check_reachable("auto")  # left to Ray


def test_the_federation_uses_the_endpoints_it_is_given(tmp_path):
    config = ScenarioConfig.load(write_scenario(tmp_path, nodes=3))
    endpoints = ["tcp://10.0.0.1:7001", "tcp://10.0.0.1:7002", "tcp://10.0.0.2:7001"]
    federation = create_federation(config, tmp_path / "run", endpoints)
    assert [m.endpoint for m in federation.manifest.members] == endpoints
    sites = list(federation.sites.values())
    assert _endpoint_host(sites[:2]) == "10.0.0.1"
    with pytest.raises(ConfigError, match="bind different hosts"):
        _endpoint_host(sites[1:])  # one worker process cannot bind on two hosts


# --- on a local Ray instance -------------------------------------------------------------


def require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        pytest.fail("the Ray backend tests need the ray extra: pip install -e '.[ray,test]'")


@pytest.mark.slow
def test_a_scenario_runs_end_to_end_on_ray(tmp_path):
    # First in the file: it starts its own local Ray, before the module's cluster is up.
    require_ray()
    out = tmp_path / "out"
    command = [sys.executable, "-m", "scenarios", "run", str(QUICKSTART), "--backend", "ray", "--rounds", "2", "--nodes", "4", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 nodes in 4 worker processes (1 per worker, ray)" in result.stdout and "round   2/2" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["log_verification"]["ok"]
    assert [(n["exit_code"], n["rounds_completed"]) for n in summary["nodes"]] == [(0, 2)] * 4
    import ray.util

    manifest = json.loads((out / "manifest.json").read_text())
    endpoints = [m["endpoint"] for m in manifest["members"]]
    assert all(e.startswith(f"tcp://{ray.util.get_node_ip_address()}:") for e in endpoints), "nodes bind the Ray node's address"
    assert len(set(endpoints)) == 4
    assert not list(out.glob(".ray-probe-*"))


@pytest.fixture(scope="module")
def cluster():
    require_ray()
    with RayCluster.connect() as connected:
        yield connected


@pytest.fixture
def sites(cluster, tmp_path):
    """Two site directories whose endpoints are on the local Ray node (nothing runs them)."""
    config = ScenarioConfig.load(write_scenario(tmp_path, nodes=2))
    federation = create_federation(config, tmp_path / "run", cluster.plan_endpoints(2, 2, tmp_path))
    return list(federation.sites.values())


def run_python(monkeypatch, sites: list[Path], code: str) -> RayWorker:
    """A RayWorker that runs `python -c CODE` on the sites' host instead of the node."""
    monkeypatch.setattr("scenarios.ray_backend.node_arguments", lambda _sites, _insecure=False: ["-c", code])
    return RayWorker(sites, worker_log_path(sites))


def wait_for_line(path: Path, text: str, limit: float = 30.0) -> str:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}")


@pytest.mark.slow
def test_hosts_are_planned_on_the_local_node(cluster):
    import ray

    (node,) = [n for n in ray.nodes() if n["Alive"]]
    planned = plan_hosts(3)
    assert planned == [Host(node["NodeID"], node["NodeManagerAddress"], float(os.cpu_count()))] * 3
    assert cluster.cpus() == os.cpu_count()


@pytest.mark.slow
def test_endpoints_are_on_the_planned_host_at_distinct_ports(cluster, tmp_path):
    endpoints = cluster.plan_endpoints(5, 2, tmp_path)
    address = plan_hosts(1)[0].address
    assert all(e.startswith(f"tcp://{address}:") for e in endpoints)
    assert len(set(endpoints)) == 5
    assert not list(tmp_path.glob(".ray-probe-*")), "the shared-filesystem probe is removed"


@pytest.mark.slow
def test_a_worker_reports_its_exit_code_and_logs_its_output(cluster, sites, monkeypatch):
    worker = run_python(monkeypatch, sites, "import sys; print('hello from the host'); sys.exit(3)")
    assert worker.wait(30) == 3
    assert worker.poll() == 3
    assert "hello from the host" in worker_log_path(sites).read_text()


@pytest.mark.slow
def test_a_running_worker_stops_on_terminate_and_one_ignoring_it_on_kill(cluster, sites, monkeypatch):
    sleeper = run_python(monkeypatch, sites[:1], "import time; print('ready', flush=True); time.sleep(60)")
    stubborn = run_python(monkeypatch, sites[1:], "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)")
    wait_for_line(worker_log_path(sites[:1]), "ready")
    wait_for_line(worker_log_path(sites[1:]), "ready")
    assert sleeper.poll() is None and sleeper.wait(0.3) is None
    stop_workers([sleeper, stubborn], grace=2.0)
    assert sleeper.poll() == -signal.SIGTERM
    assert stubborn.poll() == -signal.SIGKILL


@pytest.mark.slow
def test_a_host_that_cannot_see_the_sites_starts_nothing(cluster, sites, tmp_path):
    agent = cluster.agent_for(plan_hosts(1)[0].address)
    missing = str(tmp_path / "not-on-this-host")
    log = str(tmp_path / "worker.log")
    assert cluster.ray.get(agent.start.remote(log, ["-c", "pass"], [missing], log, str(tmp_path))) == [missing]
    assert not Path(log).exists()


@pytest.mark.slow
def test_when_the_agent_dies_its_worker_is_lost_and_its_process_stopped(cluster, sites, monkeypatch):
    # Last: it kills the host's agent (the cluster starts a new one when next asked).
    worker = run_python(monkeypatch, sites[:1], "import os, time; print('pid', os.getpid(), flush=True); time.sleep(60)")
    pid = int(wait_for_line(worker_log_path(sites[:1]), "pid").split()[1])
    cluster.ray.kill(worker.agent)
    assert worker.wait(30) == HOST_LOST
    deadline = time.monotonic() + 10
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(pid), "the node outlived its agent"
    replacement = run_python(monkeypatch, sites[1:], "pass")
    assert replacement.wait(30) == 0


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
