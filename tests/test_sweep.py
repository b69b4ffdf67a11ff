"""`swarm-scenario sweep`: the grid file and its one-line errors, the round series and CSV
row of a hand-made run directory, resuming into the same directory, and a real 2-cell sweep."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from scenarios.cli import main as scenario_cli
from scenarios.sweep import SCENARIO_DIR, label, load_sweep, prepare_sweep_out, run_sweep
from scenarios.sweep_report import COLUMNS, cell_row, consensus_distance, csv_text, first_reaching, spectral_gap, write_series
from swarm.checkpoint import save_checkpoint
from swarm.errors import ConfigError
from swarm.tensors import flatten_state, model_digest
from tests.conftest import write_scenario


def write_sweep(directory: Path, body: str, scenario: str = "base.toml") -> Path:
    if not (directory / "base.toml").exists():
        write_scenario(directory, nodes=3, rounds=2, name="base")
    path = directory / "grid.toml"
    path.write_text(f'[sweep]\nscenario = "{scenario}"\n{body}')
    return path


GRID = 'topologies = ["ring", "complete"]\nprotocols = ["dpsgd"]\nnodes = [3]\nseeds = [0]\ntarget_accuracy = 0.5\n'


# -- the grid file -------------------------------------------------------------------------------


def test_the_grid_is_every_combination_with_labels_from_names_and_parameters(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, (
        'topologies = ["ring", {name = "random-regular", degree = 2}]\nprotocols = ["dpsgd", "gossip"]\n'
        "nodes = [4, 6]\nseeds = [0, 1]\nrounds = 5\ntarget_accuracy = 0.7\n"
    )))
    assert len(sweep.cells) == 2 * 2 * 2 * 2
    assert sweep.cells[0].id == "ring_dpsgd_n4_s0"
    assert sweep.cells[-1].id == "random-regular-degree2_gossip_n6_s1"
    last = sweep.cells[-1].config
    assert (last.nodes, last.rounds, last.topology, last.protocol["name"]) == (6, 5, {"name": "random-regular", "degree": 2, "seed": 1}, "gossip")
    assert last.data["seed"] == 1 and last.name == sweep.cells[-1].id
    assert not last.local_only and not last.pooled  # baselines off unless asked for
    assert sweep.target_accuracy == 0.7
    assert label({"name": "Watts Strogatz", "k": 4, "p": 0.1, "seed": 3}) == "wattsstrogatz-k4-p0.1"


def test_a_scenario_name_finds_the_shipped_scenario_and_a_bare_protocol_name_keeps_its_parameters(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('[sweep]\nscenario = "quickstart"\ntopologies = ["ring"]\ntarget_accuracy = 0.7\nbaselines = true\n')
    cell = load_sweep(path).cells[0]
    assert cell.id == "ring_braintorrent_n6_s0"
    assert cell.config.protocol["round_interval"] == 0.2 and cell.config.pooled


@pytest.mark.parametrize(("body", "fragment"), [
    (GRID + "bogus = 1\n", "sweep.bogus: unknown key"),
    (GRID.replace('topologies = ["ring", "complete"]\n', ""), "sweep.topologies: missing"),
    (GRID.replace('["ring", "complete"]', "[3]"), "sweep.topologies[0]"),
    (GRID.replace('["ring", "complete"]', "[]"), "sweep.topologies: must be a non-empty list"),
    (GRID.replace('["dpsgd"]', '[{degree = 2}]'), "sweep.protocols[0]"),
    (GRID.replace("nodes = [3]", "nodes = [1]"), "sweep.nodes[0]: must be an integer >= 2"),
    (GRID.replace("seeds = [0]", 'seeds = "0"'), "sweep.seeds: must be a non-empty list"),
    (GRID.replace("0.5", "1.5"), "sweep.target_accuracy"),
    (GRID.replace("target_accuracy = 0.5\n", ""), "sweep.target_accuracy: missing"),
    (GRID + "rounds = 0\n", "sweep.rounds"),
    (GRID + "baselines = 1\n", "sweep.baselines"),
    (GRID.replace('"complete"', '"moebius"'), "sweep cell moebius_dpsgd_n3_s0: topology.name: unknown topology"),
    (GRID.replace('"complete"', '{name = "random-regular", degree = 3}'), "sweep cell random-regular-degree3_dpsgd_n3_s0: topology.degree"),
    (GRID.replace('["dpsgd"]', '["dpsgd", "carrier-pigeon"]'), "protocol.name: unknown protocol"),
    (GRID.replace('"complete"', '"ring"'), "cell ring_dpsgd_n3_s0 appears twice"),
])
def test_a_bad_grid_is_refused_naming_the_field(tmp_path, body, fragment):
    with pytest.raises(ConfigError) as caught:
        load_sweep(write_sweep(tmp_path, body))
    assert fragment in str(caught.value)


def test_a_table_other_than_sweep_and_the_adjustable_scenario_tables_is_refused(tmp_path):
    path = write_sweep(tmp_path, GRID + "[plan]\nrounds = 3\n")
    with pytest.raises(ConfigError, match=r"grid.toml.plan: unknown key"):
        load_sweep(path)


def test_training_model_and_data_tables_adjust_every_cell(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, GRID + '[training]\nepochs = 4\n[model]\nhidden = [8]\n[data]\nlabel_skew = 0.0\n'))
    for cell in sweep.cells:
        assert cell.config.training["epochs"] == 4 and cell.config.model == {"name": "mlp", "hidden": [8]}
        assert cell.config.data["label_skew"] == 0.0 and cell.config.data["samples_per_site"] == 80  # the scenario's own keys stay
    with pytest.raises(ConfigError, match="sweep cell ring_dpsgd_n3_s0: .*epochs"):
        load_sweep(write_sweep(tmp_path, GRID + "[training]\nepochs = 0\n"))
    with pytest.raises(ConfigError, match="data.sites/data.site: set from the sweep's nodes"):
        load_sweep(write_sweep(tmp_path, GRID + "[data]\nsites = 4\n"))


def test_a_missing_scenario_says_where_it_looked(tmp_path):
    with pytest.raises(ConfigError, match=r"sweep.scenario: no scenario file 'nowhere'"):
        load_sweep(write_sweep(tmp_path, GRID, scenario="nowhere"))


def test_the_cli_turns_a_bad_grid_into_one_line_and_exit_2(tmp_path):
    path = write_sweep(tmp_path, GRID + "bogus = 1\n")
    result = CliRunner().invoke(scenario_cli, ["sweep", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "sweep.bogus: unknown key" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_the_shipped_topology_sweep_is_valid(tmp_path):
    try:
        sweep = load_sweep(SCENARIO_DIR / "sweep-topologies.toml")
    except ConfigError as error:
        if "unknown topology" in str(error):
            pytest.skip(f"a topology of the sweep is not in swarm.topology yet: {error}")
        raise
    topologies = {cell.topology for cell in sweep.cells}
    assert {"ring", "exponential", "complete"} <= topologies and all(cell.nodes == 16 for cell in sweep.cells)


# -- the output directory --------------------------------------------------------------------------


def test_a_directory_of_another_grid_is_refused_unless_forced(tmp_path):
    out = tmp_path / "out"
    prepare_sweep_out(load_sweep(write_sweep(tmp_path, GRID)), out, force=False)
    prepare_sweep_out(load_sweep(write_sweep(tmp_path, GRID)), out, force=False)  # same grid: resumes
    assert (out / "sweep.toml").read_text().startswith("[sweep]")
    (out / "cells" / "ring_dpsgd_n3_s0").mkdir(parents=True)
    other = load_sweep(write_sweep(tmp_path, GRID.replace("seeds = [0]", "seeds = [0, 1]")))
    with pytest.raises(ConfigError, match=r"different grid \(new cells: complete_dpsgd_n3_s1, ring_dpsgd_n3_s1.*pass --force"):
        prepare_sweep_out(other, out, force=False)
    rounds = load_sweep(write_sweep(tmp_path, GRID + "rounds = 4\n"))
    with pytest.raises(ConfigError, match="cells with other settings: complete_dpsgd_n3_s0, ring_dpsgd_n3_s0"):
        prepare_sweep_out(rounds, out, force=False)
    prepare_sweep_out(other, out, force=True)
    assert not (out / "cells").exists() and set(json.loads((out / "sweep.json").read_text())["cells"]) == {c.id for c in other.cells}


def test_a_non_sweep_directory_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a sweep directory"):
        prepare_sweep_out(load_sweep(write_sweep(tmp_path, GRID)), tmp_path / "out", force=False)


# -- the run loop, with a stand-in for the federation runner ------------------------------------


class FakeRunner:
    """Records which cells ran and writes what `run_scenario` leaves behind that the sweep
    reads (summary.json; no sites, so the series are empty)."""

    def __init__(self, interrupt_in: str | None = None) -> None:
        self.ran: list[str] = []
        self.interrupt_in = interrupt_in

    def __call__(self, config, out: Path, progress, *, force: bool = False) -> dict:
        assert force  # a rerun cell must be cleared of what an earlier attempt left
        self.ran.append(out.name)
        progress(f"federation {config.name}")
        out.mkdir(parents=True, exist_ok=True)
        summary = {"ok": True, "wall_seconds": 1.0, "nodes": [{"name": "hospital-a", "bytes_sent": 10}]}
        if out.name == self.interrupt_in:
            try:  # like the runner: Ctrl-C stops the nodes, and a summary is written anyway
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            except KeyboardInterrupt:
                summary["ok"] = False
        (out / "summary.json").write_text(json.dumps(summary))
        return summary


def test_only_unfinished_cells_run_and_the_table_is_rewritten_after_each(tmp_path, monkeypatch):
    sweep = load_sweep(write_sweep(tmp_path, GRID))
    out = tmp_path / "out"
    runner = FakeRunner()
    monkeypatch.setattr("scenarios.sweep.run_scenario", runner)
    lines: list[str] = []
    rows = run_sweep(sweep, out, lines.append)
    assert runner.ran == ["ring_dpsgd_n3_s0", "complete_dpsgd_n3_s0"] and [r["cell"] for r in rows] == runner.ran
    assert lines[0] == f"sweep grid.toml: 2 cells -> {out}"
    assert "cell 1/2 ring dpsgd n=3 seed 0: running" in lines and "    federation ring_dpsgd_n3_s0" in lines
    assert any(line.startswith("cell 2/2 complete dpsgd n=3 seed 0: running, about 0m") for line in lines)
    assert len((out / "results.csv").read_text().splitlines()) == 3

    runner.ran.clear()
    (out / "cells" / "complete_dpsgd_n3_s0" / "summary.json").unlink()
    lines.clear()
    run_sweep(sweep, out, lines.append)
    assert runner.ran == ["complete_dpsgd_n3_s0"]
    assert lines[0] == f"sweep grid.toml: 2 cells (1 finished before, 1 to run) -> {out}"
    assert "cell 1/2 ring dpsgd n=3 seed 0: skipped (finished before)" in lines


def test_ctrl_c_leaves_the_running_cell_unfinished_and_stops_the_sweep(tmp_path, monkeypatch):
    sweep = load_sweep(write_sweep(tmp_path, GRID))
    out = tmp_path / "out"
    runner = FakeRunner(interrupt_in="complete_dpsgd_n3_s0")
    monkeypatch.setattr("scenarios.sweep.run_scenario", runner)
    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, out, lines.append)
    assert lines[-1] == "cell 2/2 complete dpsgd n=3 seed 0: interrupted; run the same command again to resume from this cell"
    assert not (out / "cells" / "complete_dpsgd_n3_s0" / "summary.json").exists()
    assert len((out / "results.csv").read_text().splitlines()) == 2  # the header and the finished cell
    runner.ran.clear()
    runner.interrupt_in = None
    run_sweep(sweep, out, lines.append)
    assert runner.ran == ["complete_dpsgd_n3_s0"]


# -- series and rows from a hand-made run directory --------------------------------------------


def save_model(site: Path, seq: int, weights: list[float], count: int) -> None:
    # `count` is an integer tensor (like BatchNorm's counter): the consensus distance ignores it.
    flat = flatten_state({"count": torch.tensor([count]), "w": torch.tensor(weights, dtype=torch.float32)}, copy=True)
    (site / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_checkpoint(site / "checkpoints" / f"{seq:08d}.swt", flat, model_digest(flat), {"seq": seq})


def metrics_line(round_no: int, accuracy: float, sent: int, now: float, elapsed: float, wait: float) -> str:
    return json.dumps({"node": "x", "round": round_no, "seq": round_no, "time": now, "elapsed": elapsed, "accuracy": accuracy,
                       "bytes_sent": sent, "bytes_received": 0, "timings": {"wait": wait, "train": 0.5}})


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """Two nodes, three rounds. Mean accuracy 0.55, 0.75, 0.80; bytes sent 150, 450, 850;
    the first node started at t=990, and round 2 was last logged at t=1006."""
    run = tmp_path / "cells" / "ring_dpsgd_n3_s0"
    a, b = run / "sites" / "hospital-a", run / "sites" / "hospital-b"
    for site in (a, b):
        site.mkdir(parents=True)
    (a / "metrics.jsonl").write_text("\n".join([
        metrics_line(1, 0.5, 100, 1000.0, 10.0, 1.0), metrics_line(2, 0.7, 300, 1004.0, 14.0, 1.0),
        metrics_line(3, 0.9, 600, 1008.0, 18.0, 1.0)]) + "\n")
    (b / "metrics.jsonl").write_text("\n".join([
        metrics_line(1, 0.6, 50, 1001.0, 5.0, 2.0), metrics_line(2, 0.8, 150, 1006.0, 10.0, 2.0),
        metrics_line(3, 0.7, 250, 1007.0, 11.0, 2.0)]) + '\n{"round": 4, "accu')  # a torn last line
    save_model(a, 1, [1.0, 1.0], 0)  # b's round-1 checkpoint is missing: no distance for round 1
    save_model(a, 2, [0.0, 0.0], 1)
    save_model(b, 2, [3.0, 4.0], 7)
    save_model(a, 3, [0.0, 0.0], 2)
    save_model(b, 3, [0.0, 2.0], 9)
    summary = {"ok": True, "wall_seconds": 19.5, "primary_metric": "accuracy",
               "topology": {"name": "ring", "neighbours": {"hospital-a": ["hospital-b"], "hospital-b": ["hospital-a"]}},
               "nodes": [{"name": "hospital-a", "bytes_sent": 700}, {"name": "hospital-b", "bytes_sent": 300}]}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_the_series_of_a_run_directory(run_dir):
    series = write_series(run_dir)
    assert series == json.loads((run_dir / "series.json").read_text())
    assert series["rounds"] == [1, 2, 3] and series["reporting"] == [2, 2, 2]
    assert series["mean_accuracy"] == pytest.approx([0.55, 0.75, 0.80])
    assert series["min_accuracy"] == pytest.approx([0.5, 0.7, 0.7])
    assert series["bytes_sent"] == [150, 450, 850]
    assert series["wall_s"] == pytest.approx([11.0, 16.0, 18.0])
    # round 2: models (0, 0) and (3, 4), mean (1.5, 2): each 2.5 away, RMS 2.5
    assert series["consensus_distance"][0] is None and series["consensus_distance"][1:] == pytest.approx([2.5, 1.0])
    assert series["final_consensus_distance"] == pytest.approx(1.0)
    assert series["spectral_gap"] == pytest.approx(1.0)
    assert series["timings"]["wait"] == pytest.approx(4.5) and series["timings"]["transfer"] is None


def test_the_row_of_a_cell(run_dir, tmp_path):
    cell = load_sweep(write_sweep(tmp_path, GRID)).cells[0]
    write_series(run_dir)
    row = cell_row(cell, run_dir, 0.75)
    assert (row["cell"], row["topology"], row["protocol"], row["nodes"], row["seed"], row["rounds"]) == ("ring_dpsgd_n3_s0", "ring", "dpsgd", 3, 0, 2)
    assert row["final_mean_accuracy"] == pytest.approx(0.8) and row["final_min_accuracy"] == pytest.approx(0.7)
    assert (row["rounds_to_target"], row["bytes_to_target"], row["wall_to_target_s"]) == (2, 450, pytest.approx(16.0))
    assert row["consensus_distance"] == pytest.approx(1.0) and row["total_bytes"] == 1000 and row["wall_s"] == 19.5
    assert row["time_wait_s"] == pytest.approx(4.5) and math.isnan(row["time_transfer_s"]) and row["ok"] is True
    never = cell_row(cell, run_dir, 0.95)
    assert all(math.isnan(never[key]) for key in ("rounds_to_target", "bytes_to_target", "wall_to_target_s"))
    parsed = list(csv.DictReader(csv_text([row, never]).splitlines()))
    assert list(parsed[0]) == list(COLUMNS) and len(parsed) == 2
    assert (parsed[0]["rounds_to_target"], parsed[0]["bytes_to_target"], parsed[0]["ok"]) == ("2", "450", "true")
    assert parsed[0]["time_transfer_s"] == "" and parsed[1]["rounds_to_target"] == ""


def test_the_target_counts_only_rounds_every_node_reported():
    series = {"nodes": ["a", "b"], "mean_accuracy": [0.9, 0.6, 0.8], "reporting": [1, 2, 2]}
    assert first_reaching(series, 0.8) == 2 and first_reaching(series, 0.95) is None


def test_consensus_distance_and_spectral_gap_by_hand():
    import numpy as np

    assert consensus_distance([np.array([0.0, 0.0]), np.array([3.0, 4.0])]) == pytest.approx(2.5)
    assert math.isnan(consensus_distance([np.array([0.0]), None]))
    ring = {i: [(i - 1) % 16, (i + 1) % 16] for i in range(16)}
    # MH weights 1/3 on a ring: eigenvalues 1/3 + 2/3 cos(2 pi k / n), the largest below 1 at k = 1
    assert spectral_gap(ring) == pytest.approx(1 - (1 / 3 + 2 / 3 * math.cos(2 * math.pi / 16)))
    assert spectral_gap({i: [j for j in range(5) if j != i] for i in range(5)}) == pytest.approx(1.0)


def test_the_spectral_gap_of_a_time_varying_topology_is_the_mean_over_its_round_graphs():
    names = ["a", "b", "c", "d"]
    complete = {n: [m for m in names if m != n] for n in names}
    # round 1: a ring a-b-c-d-a (gap 1 - 1/3: MH weights 1/3, eigenvalues 1, 1/3, 1/3, -1/3); round 2: complete (gap 1)
    schedule = {"members": names, "directed": False, "graphs": [[[1, 3], [0, 2], [1, 3], [0, 2]], [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]]}
    assert spectral_gap(complete, schedule) == pytest.approx((2 / 3 + 1.0) / 2)


# -- a real sweep ----------------------------------------------------------------------------------


def run_cli(path: Path, out: Path) -> str:
    result = CliRunner().invoke(scenario_cli, ["sweep", str(path), "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_a_real_sweep_writes_a_row_per_cell_and_plots_and_resumes_without_rerunning(tmp_path):
    path = write_sweep(tmp_path, GRID)
    out = tmp_path / "out"
    first = run_cli(path, out)
    assert "cell 1/2 ring dpsgd n=3 seed 0: running" in first and "cell 2/2 complete dpsgd n=3 seed 0: running, about" in first
    assert "    federation ring_dpsgd_n3_s0: 3 hospitals" in first  # the cell's own progress, indented
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert [r["cell"] for r in rows] == ["ring_dpsgd_n3_s0", "complete_dpsgd_n3_s0"] and all(r["ok"] == "true" for r in rows)
    assert all(0.0 <= float(r["final_mean_accuracy"]) <= 1.0 and int(r["total_bytes"]) > 0 for r in rows)
    assert float(rows[1]["spectral_gap"]) == pytest.approx(1.0)
    plots = {p.name for p in (out / "plots").iterdir()}
    assert plots == {"accuracy_vs_round.png", "accuracy_vs_bytes.png", "consensus_vs_round.png", "time_to_target_vs_spectral_gap.png"}
    summaries = {row["cell"]: out / "cells" / row["cell"] / "summary.json" for row in rows}
    stamps = {cell: p.stat().st_mtime_ns for cell, p in summaries.items()}

    again = run_cli(path, out)
    assert again.count("skipped (finished before)") == 2 and "running" not in again
    assert {cell: p.stat().st_mtime_ns for cell, p in summaries.items()} == stamps

    summaries["complete_dpsgd_n3_s0"].unlink()  # as if the sweep had been stopped during this cell
    resumed = run_cli(path, out)
    assert "cell 1/2 ring dpsgd n=3 seed 0: skipped" in resumed and "cell 2/2 complete dpsgd n=3 seed 0: running" in resumed
    assert summaries["ring_dpsgd_n3_s0"].stat().st_mtime_ns == stamps["ring_dpsgd_n3_s0"]
    assert summaries["complete_dpsgd_n3_s0"].is_file()
    assert len((out / "results.csv").read_text().splitlines()) == 3
