"""The shipped MedMNIST scenarios take a file the user downloaded (`--data-path`); bad files,
missing paths and impossible partitions are one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from swarm.config import tomllib

import numpy as np
import pytest
from click.testing import CliRunner

from scenarios.cli import main as scenario_cli
from scenarios.config import ScenarioConfig

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


def medmnist_file(path: Path, *, train=300, val=60, test=100, rgb=False, classes=2, drop=()) -> Path:
    """A small file in the MedMNIST v2 layout (uint8 images, labels N x 1)."""
    rng = np.random.default_rng(7)
    shape = (28, 28, 3) if rgb else (28, 28)
    arrays = {}
    for split, count in (("train", train), ("val", val), ("test", test)):
        labels = rng.integers(0, classes, (count, 1))
        images = rng.integers(0, 80, (count, *shape)).astype(np.int64)
        images[..., 10:18, 10:18] += (labels.reshape(-1, *([1] * len(shape))) * 120)  # a learnable bright patch
        arrays[f"{split}_images"] = np.clip(images, 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels
    np.savez(path, **{k: v for k, v in arrays.items() if k not in drop})
    return path


def _compare(*args: str):
    return CliRunner().invoke(scenario_cli, ["compare", str(SCENARIOS / "medmnist-pneumonia.toml"), *args])


def test_a_missing_file_names_the_field_and_the_fix(tmp_path):
    result = _compare("--data-path", str(tmp_path / "nowhere.npz"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line and "data.path" in line and "--data-path" in line and "Traceback" not in line
    assert not (tmp_path / "out").exists()


def test_a_file_without_its_test_split_is_refused(tmp_path):
    path = medmnist_file(tmp_path / "no-test.npz", drop=("test_images", "test_labels"))
    result = _compare("--data-path", str(path), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "missing array(s) test_images, test_labels" in result.output
    assert not (tmp_path / "out").exists()


def test_a_partition_that_leaves_a_site_nothing_to_train_on_is_refused(tmp_path):
    path = medmnist_file(tmp_path / "tiny.npz", train=12, val=4, test=10)
    scenario = (SCENARIOS / "medmnist-pneumonia.toml").read_text().replace('seed = 0\n', 'seed = 0\nmin_samples = 2\n')
    (tmp_path / "s.toml").write_text(scenario)
    result = CliRunner().invoke(scenario_cli, ["compare", str(tmp_path / "s.toml"), "--data-path", str(path),
                                               "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "data." in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name, rgb, classes", [("medmnist-pneumonia", False, 2), ("medmnist-retina", True, 5)])
def test_the_shipped_medmnist_scenarios_run_a_federation_on_a_file_of_that_layout(tmp_path, name, rgb, classes):
    path = medmnist_file(tmp_path / f"{name}.npz", rgb=rgb, classes=classes)
    out = tmp_path / "run"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "scenarios", "run", str(SCENARIOS / f"{name}.toml"), "--data-path", str(path),
                             "--rounds", "2", "--out", str(out)], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["held_out"]["samples"] == 100
    assert "official test split" in summary["held_out"]["origin"]
    assert 0.0 <= summary["held_out"]["swarm"]["auc"] <= 1.0


def test_every_shipped_scenario_loads(tmp_path):
    data_file = medmnist_file(tmp_path / "any.npz", rgb=True, classes=5)
    loaded = []
    for path in sorted(SCENARIOS.glob("*.toml")):
        if {"study", "sweep"} & set(tomllib.loads(path.read_text())):
            continue  # a study or a sweep, checked by its own tests
        needs_file = "medmnist" in path.stem
        config = ScenarioConfig.load(path, data_file if needs_file else None)
        if config.data.get("source") == "breast-cancer":
            pytest.importorskip("sklearn", reason='optional extra: pip install "swarm-hospitals[sklearn]"')
        assert config.nodes >= 2 and config.data_source().task_shape().num_classes >= 2, path.name
        loaded.append(path.stem)
    assert {"quickstart", "imaging-skewed", "segmentation-phantom", "medmnist-pneumonia", "medmnist-retina"} <= set(loaded)
