"""gossip.simulation with its training plugged in: the callback gets each merge the protocol
asks for, with the protocol's weights and the models it pulled, and what it returns is the
model the neighbours pull next. Plus a smoke run of scripts/simulate_braintorrent.py, which
drives the same simulation with torch training."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from gossip.braintorrent import BrainTorrentParams
from gossip.dpsgd import DPSGD, DPSGDParams
from gossip.simulation import Job, Simulation, merge_values

LINE = {"a": ["b"], "b": ["a", "c"], "c": ["b"]}  # Metropolis-Hastings: ends 2/3 self + 1/3; middle 1/3 each
PUSH = DPSGDParams(round_timeout=5.0, linger=10.0, done_poll_interval=0.5)
RING5 = {n: [f"n{(i - 1) % 5}", f"n{(i + 1) % 5}"] for i, n in enumerate(f"n{i}" for i in range(5))}
FAST = BrainTorrentParams(round_interval=0.2, poll_timeout=1.0, pull_timeout=2.0, wait_for_new=3.0, linger=10.0, done_poll_interval=0.5)


def test_the_callback_gets_the_protocols_weights_and_its_models_reach_the_neighbours():
    jobs: list[Job] = []

    def merge_then_add_ten(job: Job) -> float:
        jobs.append(job)
        return merge_values(job) + 10  # "training" moves every model by +10

    sim = Simulation(LINE, rounds=3, params=PUSH, protocol=DPSGD, values={"a": 0.0, "b": 3.0, "c": 6.0}, train=merge_then_add_ten)
    sim.run(until=60.0)

    # Round 1 has nothing to merge; then 2/3 * own + 1/3 * b at the ends, 1/3 each in the middle.
    assert sim.nodes["a"].values == pytest.approx([10, 21, 31 + 2 / 3])
    assert sim.nodes["b"].values == pytest.approx([13, 23, 33])
    assert sim.nodes["c"].values == pytest.approx([16, 25, 34 + 1 / 3])
    b_round3 = next(job for job in jobs if job.node == "b" and job.action.round == 3)
    assert b_round3.model == pytest.approx(23)
    assert b_round3.action.self_weight == pytest.approx(1 / 3)
    assert {p.peer: (p.seq, p.weight, model) for p, model in b_round3.pulled} == {
        "a": (2, pytest.approx(1 / 3), pytest.approx(21)),
        "c": (2, pytest.approx(1 / 3), pytest.approx(25)),
    }
    for job in jobs:  # the callback sees exactly the versions the protocol named
        assert tuple(p for p, _ in job.pulled) == job.action.pulled


def test_any_object_can_be_a_model_and_arrives_as_the_version_the_neighbour_published():
    def provenance(job: Job) -> tuple:
        return (job.node, job.action.round, tuple(model for _, model in job.pulled))

    sim = Simulation(LINE, rounds=2, params=PUSH, protocol=DPSGD, values=dict.fromkeys(LINE, None), train=provenance)
    sim.run(until=60.0)

    assert sim.nodes["b"].values == [("b", 1, ()), ("b", 2, (("a", 1, ()), ("c", 1, ())))]
    assert sim.published[("b", 2)] is sim.nodes["b"].value


def test_the_same_seed_gives_the_same_run_and_another_seed_another():
    def trace(seed: int) -> dict:
        sim = Simulation(RING5, rounds=5, params=FAST, seed=seed, train=lambda job: merge_values(job) + job.action.round)
        sim.run(until=120.0)
        assert all(n.protocol.finished and n.protocol.published_seq == 5 for n in sim.nodes.values())
        return {name: (node.values, node.history, node.finished_at) for name, node in sim.nodes.items()}

    assert trace(0) == trace(0)
    assert trace(0) != trace(1)


def test_the_script_runs_braintorrent_with_torch_training_against_the_baselines(capsys):
    path = Path(__file__).resolve().parents[1] / "scripts" / "simulate_braintorrent.py"
    spec = importlib.util.spec_from_file_location("simulate_braintorrent", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    threads = torch.get_num_threads()
    try:
        assert script.main(["--seeds", "0", "--rounds", "2", "--data", "test_samples=100"]) == 0
    finally:
        torch.set_num_threads(threads)  # the script trains on one thread; the tests after it need not

    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split()[:6] == ["seed", "swarm", "local", "pooled", "sw-loc", "pool-sw"]
    seed_row, mean_row = lines[3].split(), lines[4].split()
    assert seed_row[0] == "0" and mean_row[0] == "mean"
    assert all(0 <= float(cell) <= 100 for cell in seed_row[1:4])
