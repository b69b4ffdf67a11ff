"""The attack study: its grid, refusals at load time, and a real (small) study in which a
sign-flipping minority wrecks the plain mean and the coordinate-wise median holds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from scenarios.attack_report import markdown, with_baselines
from scenarios.attack_study import load_study
from scenarios.cli import main
from swarm.errors import ConfigError


SCENARIO = """
[scenario]
nodes = 8
timeout = 120
nodes_per_worker = 4

[plan]
rounds = 6

[topology]
{topology}

[protocol]
name = "dpsgd"
round_timeout = 20.0

[model]
name = "mlp"

[data]
seed = 3
"""


def write_study(tmp_path: Path, body: str, topology: str = 'name = "random-regular"\ndegree = 4') -> Path:
    (tmp_path / "scenario.toml").write_text(SCENARIO.format(topology=topology))
    path = tmp_path / "study.toml"
    path.write_text('[study]\nscenario = "scenario.toml"\n' + body)
    return path


def test_the_grid_has_a_no_attack_run_per_defence(tmp_path):
    path = write_study(tmp_path, 'attacks = ["sign_flip", {kind = "alie", z = 1.0}]\ndefences = ["mean", {rule = "trimmed_mean", f = 1}]\nshares = [0.1, 0.3]\n')
    study = load_study(path)
    ids = [cell.id for cell in study.cells]
    assert len(ids) == 2 * (1 + 2 * 2)
    assert "none_mean_p00_s0" in ids and "alie-z1.0_trimmed-mean-f1_p30_s0" in ids
    cell = next(c for c in study.cells if c.id == "sign-flip_trimmed-mean-f1_p10_s0")
    assert cell.config.merge == {"rule": "trimmed_mean", "f": 1}
    assert cell.config.attack == {"kind": "sign_flip", "share": 0.1, "placement": "random", "seed": 0}


def test_a_defence_the_topology_cannot_support_is_refused_before_anything_runs(tmp_path):
    path = write_study(tmp_path, 'attacks = ["sign_flip"]\ndefences = [{rule = "krum", f = 1}]\n', topology='name = "ring"')
    with pytest.raises(ConfigError, match=r"study cell none_krum-f1_p00_s0: plan\.merge\.rule krum with f = 1 needs at least 5"):
        load_study(path)


@pytest.mark.parametrize("body, match", [
    ('attacks = ["teleport"]\ndefences = ["mean"]\n', "attack.kind"),
    ('attacks = ["sign_flip"]\ndefences = ["average"]\n', "merge.rule"),
    ('attacks = ["sign_flip"]\ndefences = ["mean"]\nshares = [0.5, 1.2]\n', "study.shares"),
    ('attacks = []\ndefences = ["mean"]\n', "study.attacks"),
])
def test_bad_study_files_name_the_field(tmp_path, body, match):
    with pytest.raises(ConfigError, match=match):
        load_study(write_study(tmp_path, body))


def test_the_table_compares_each_cell_with_its_defences_no_attack_run():
    rows = [
        {"cell": "a", "attack": "none", "defence": "mean", "share": 0.0, "seed": 0, "honest_mean": 0.7, "honest_min": 0.6, "byzantine_majority_sites": 0},
        {"cell": "b", "attack": "sign_flip", "defence": "mean", "share": 0.2, "seed": 0, "honest_mean": 0.4, "honest_min": 0.2, "byzantine_majority_sites": 1},
    ]
    full = with_baselines(rows)
    assert full[1]["baseline_mean"] == 0.7 and full[1]["drop"] == pytest.approx(0.3)
    text = markdown(full)
    assert "| no attack | 70.0 / 60.0 |" in text and "| sign_flip | 40.0 / 20.0 (1) |" in text


@pytest.mark.slow
def test_a_real_study_sign_flipping_breaks_the_mean_and_not_the_median(tmp_path):
    path = write_study(tmp_path, 'attacks = ["sign_flip"]\ndefences = ["mean", "median"]\nshares = [0.25]\nplacement = "spread"\n')
    out = tmp_path / "out"
    from click.testing import CliRunner

    result = CliRunner().invoke(main, ["attack-study", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = {r["cell"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert set(rows) == {"none_mean_p00_s0", "sign-flip_mean_p25_s0", "none_median_p00_s0", "sign-flip_median_p25_s0"}
    assert all(r["ok"] == "true" for r in rows.values())
    mean_attacked, median_attacked = rows["sign-flip_mean_p25_s0"], rows["sign-flip_median_p25_s0"]
    assert mean_attacked["byzantine_sites"] == "2"
    assert float(mean_attacked["drop"]) > 0.05  # the plain mean follows the flipped models
    assert float(median_attacked["drop"]) < float(mean_attacked["drop"]) - 0.03
    summary = json.loads((out / "cells" / "sign-flip_mean_p25_s0" / "summary.json").read_text())
    attackers = [n["name"] for n in summary["nodes"] if n["byzantine"]]
    assert attackers == summary["attack"]["sites"] and len(attackers) == 2
    assert (out / "study.md").read_text().count("sign_flip") >= 1 and (out / "plots" / "attack-study.png").stat().st_size > 1000
