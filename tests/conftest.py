from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path

import threading

import pytest

from scenarios.config import ScenarioConfig
from nodes.launch import open_node
from nodes.node import Node
from nodes.records import read_metrics
from scenarios.federation import Federation, create_federation
from swarm.transport import InMemoryNetwork

SMALL_SCENARIO = """
[scenario]
name = "{name}"
nodes = {nodes}
timeout = 120

[plan]
rounds = {rounds}

[topology]
name = "{topology}"

[protocol]
name = "braintorrent"
round_interval = 0.05
poll_timeout = 2.0
pull_timeout = 10.0
wait_for_new = 2.0
linger = 10.0
done_poll_interval = 0.2

[model]
name = "mlp"

[training]
epochs = 1

[data]
seed = 3
samples_per_site = 80
"""


def write_scenario(directory: Path, nodes: int = 3, rounds: int = 3, topology: str = "ring", name: str = "test", model_extra: str = "") -> Path:
    path = directory / f"{name}.toml"
    text = SMALL_SCENARIO.format(nodes=nodes, rounds=rounds, topology=topology, name=name)
    path.write_text(text.replace('[model]\nname = "mlp"\n', '[model]\nname = "mlp"\n' + model_extra))
    return path


@pytest.fixture
def small_federation(tmp_path: Path):
    def make(nodes: int = 3, rounds: int = 3, topology: str = "ring", model_extra: str = "") -> tuple[ScenarioConfig, Federation]:
        config = ScenarioConfig.load(write_scenario(tmp_path, nodes, rounds, topology, model_extra=model_extra))
        return config, create_federation(config, tmp_path / "run")

    return make


def start_nodes(federation, network: InMemoryNetwork) -> tuple[dict[str, Node], list[threading.Thread], threading.Event]:
    nodes = {name: open_node(site, lambda config, links, settings: network.endpoint(config.name))[0] for name, site in federation.sites.items()}
    stop = threading.Event()
    threads = [threading.Thread(target=node.run, args=(stop,), daemon=True) for node in nodes.values()]
    for thread in threads:
        thread.start()
    return nodes, threads, stop


def join(threads, stop, limit=90.0) -> None:
    for thread in threads:
        thread.join(limit)
    stop.set()
    assert not any(t.is_alive() for t in threads), "a node did not finish"


def merged_peers(site: Path) -> set[str]:
    """Every neighbour whose model the site merged in some round (from its metrics.jsonl)."""
    return {peer for row in read_metrics(site / "metrics.jsonl") for peer in row["merged"]}


def stop_processes(processes: Iterable[subprocess.Popen]) -> None:
    """SIGTERM every node process; each must stop cleanly."""
    processes = list(processes)
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        assert process.wait(120) == 0


def kill_survivors(processes: Iterable[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
