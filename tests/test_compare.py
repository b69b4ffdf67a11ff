"""`swarm-scenario compare`: every method on identical splits, scored the same way, the swarm
as real nodes, scored from the versions it published."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from nodes.learner import Task
from nodes.models import build_model
from nodes.site import SiteDir
from scenarios.cli import main as scenario_cli
from scenarios.compare import CONSENSUS, score_published_versions
from scenarios.config import ScenarioConfig
from scenarios.federation import create_federation
from scenarios.scoring import TASK_METRICS, site_metrics
from swarm.checkpoint import load_checkpoint
from swarm.merge import weighted_mean
from swarm.tensors import rebuild_state
from swarm.transport import InMemoryNetwork
from tests.conftest import join, start_nodes, write_scenario

CLASSIFICATION = set(TASK_METRICS["classification"])


def test_bad_compare_settings_are_refused_before_any_work(tmp_path):
    path = write_scenario(tmp_path)
    path.write_text(path.read_text() + '\n[compare]\nmethods = ["single", "swarmavg"]\n')
    result = CliRunner().invoke(scenario_cli, ["compare", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "compare.methods" in result.output and "swarmavg" in result.output
    assert not (tmp_path / "out").exists()


def test_the_swarm_is_scored_from_the_versions_its_sites_published(tmp_path):
    config = ScenarioConfig.load(write_scenario(tmp_path, nodes=3, rounds=3))
    federation = create_federation(config, tmp_path / "run")
    nodes, threads, stop = start_nodes(federation, InMemoryNetwork())
    join(threads, stop)
    for node in nodes.values():
        node.store.close()
    source = config.data_source()
    sites = [source.load_site(i) for i in range(3)]
    sites = [type(s)(**{**s.__dict__, "name": name}) for s, name in zip(sites, federation.sites)]
    held_out = source.global_test()
    task = Task.from_plan(config.model, config.training)
    metrics = TASK_METRICS["classification"]
    swarm, consensus = score_published_versions(federation.sites, task, "classification", sites, held_out, metrics)

    # Prepare: each site's last published model, read back independently.
    def last_state(site):
        seq = SiteDir(federation.sites[site.name]).checkpoint_seqs()[-1]
        return rebuild_state(load_checkpoint(SiteDir(federation.sites[site.name]).checkpoint_path(seq))[0], copy=True)

    model = build_model(task.model_name, task.model_params, sites[0].input_shape, sites[0].num_classes, task.init_seed)
    finals = {s.name: last_state(s) for s in sites}
    for site in sites:
        model.load_state_dict(finals[site.name])
        assert swarm["sites"][site.name] == site_metrics(model, site.test_x, site.test_y, "classification")
        assert swarm["global_models"][site.name] == site_metrics(model, held_out.x, held_out.y, "classification")
    for metric in metrics:
        want = sum(swarm["global_models"][s.name][metric] for s in sites) / 3
        assert swarm["global"][metric] == pytest.approx(want)
    model.load_state_dict(weighted_mean([(float(s.train_samples), finals[s.name]) for s in sites]))
    assert consensus["global"] == site_metrics(model, held_out.x, held_out.y, "classification")
    assert [h["round"] for h in swarm["history"]] == [1, 2, 3] == [h["round"] for h in consensus["history"]]
    assert consensus["history"][-1]["global_models"][CONSENSUS] == consensus["global"]
    assert swarm["site_means"]["accuracy"]["defined"] == 3


@pytest.mark.slow
def test_a_short_comparison_writes_json_table_csv_and_plots(tmp_path):
    path = write_scenario(tmp_path, nodes=3, rounds=2)
    path.write_text(path.read_text() + '\n[compare]\nmethods = ["cross", "single", "mix", "fedavg", "fedsgd", "fedprox", "swarm"]\n')
    out = tmp_path / "cmp"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "scenarios", "compare", str(path), "--repeats", "2", "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "repeat 2/2: BrainTorrent, ring" in result.stdout and "| FedAvg" in result.stdout and "| Majority class" in result.stdout
    results = json.loads((out / "compare.json").read_text())
    assert set(results["methods"]) == {"majority", "cross", "single", "mix", "fedavg", "fedsgd", "fedprox", "swarm", CONSENSUS}
    assert results["threads"] == 1 and results["primary_metric"] == "auc"
    assert results["data"][0]["held_out"]["samples"] == sum(s["test"] for s in results["data"][0]["sites"].values())
    for name, method in results["methods"].items():
        assert set(method["global"]) == CLASSIFICATION
        assert set(method["sites"]) == {"hospital-a", "hospital-b", "hospital-c"}
        assert 0.0 <= method["global"]["accuracy"]["mean"] <= 1.0 and method["global"]["accuracy"]["std"] >= 0.0
        assert len(method["repeats"]) == 2
        if name not in ("majority", CONSENSUS):
            cost = method["cost"]
            assert cost["wall_seconds"]["mean"] > 0 and cost["cpu_seconds"]["mean"] > 0 and cost["peak_rss_mb"]["mean"] > 50
    assert results["methods"]["majority"]["global"]["auc"]["mean"] == 0.5
    assert results["methods"]["swarm"]["cost"]["processes"] == 3
    assert len(results["methods"]["swarm"]["history"]) == 2
    for name in ("compare.md", "compare.csv", "plots/auc_vs_round.png", "plots/auc_per_site.png"):
        assert (out / name).stat().st_size > 100
    assert (out / "plots/auc_vs_round.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for repeat in (0, 1):  # the swarm's own logs are kept and verify
        verify = subprocess.run([sys.executable, "-m", "nodes", "log", "verify", str(out / f"repeat-{repeat}" / "swarm")], capture_output=True, text=True, timeout=120)
        assert verify.returncode == 0, verify.stderr


def test_topology_overrides_take_parameters_and_bad_ones_stop_before_any_work(tmp_path):
    from scenarios.cli import _topology_option

    assert _topology_option("random-regular degree=4") == {"name": "random-regular", "degree": 4}
    assert _topology_option("ring") == "ring" and _topology_option(None) is None
    config = ScenarioConfig.load(write_scenario(tmp_path, nodes=6)).with_overrides(topology=_topology_option("random-regular degree=4"))
    assert all(len(n) == 4 for n in config.plan_for([f"s{i}" for i in range(6)])["neighbours"].values())
    result = CliRunner().invoke(scenario_cli, ["compare", str(write_scenario(tmp_path, nodes=6)), "--topology", "random-regular degree=7",
                                               "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "topology.degree" in result.output
    assert not (tmp_path / "out").exists()
