"""The report of `swarm-scenario compare` (scenarios/compare_report.py): Markdown, CSV, PNGs."""

from __future__ import annotations

import csv
import math
import struct
from pathlib import Path

import pytest

from scenarios.compare_report import csv_text, markdown_table, ordered_methods, site_means_table, write_report

NAN = math.nan
METRICS = ["accuracy", "sensitivity", "specificity", "auc"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _s(mean, std=0.01):
    return {"mean": mean, "std": std}


def _method(label, base, *, auc=0.9, rounds=3):
    metrics = {"accuracy": _s(base, 0.012), "sensitivity": _s(base - 0.05), "specificity": _s(base + 0.02),
               "auc": _s(auc, 0.02)}
    return {
        "label": label,
        "global": metrics,
        "sites_mean": {m: _s(v["mean"]) for m, v in metrics.items()},
        "sites_weighted_mean": {m: _s(v["mean"] + 0.005) for m, v in metrics.items()},
        "undefined": {m: {"per_repeat": [0, 0, 0], "sites": []} for m in metrics},
        "sites": {"site-0": {m: _s(v["mean"] - 0.01) for m, v in metrics.items()},
                  "site-1": {m: _s(v["mean"] + 0.01) for m, v in metrics.items()}},
        "history": [{"round": r + 1, "global": {"accuracy": _s(base - 0.1 * (rounds - 1 - r), 0.02)}}
                    for r in range(rounds)],
        "stability": {"metric": "auc", "after_round": 5, "largest_drop": _s(0.02, 0.01), "worst": 0.03},
        "cost": {"wall_seconds": _s(12.0), "cpu_seconds": _s(11.0), "peak_rss_mb": _s(300.0), "processes": 1},
    }


@pytest.fixture
def results():
    # given out of order on purpose: the report lists methods in the canonical order
    return {
        "scenario": "toy",
        "repeats": 3,
        "task": "classification",
        "metrics": METRICS,
        "primary_metric": "accuracy",
        "methods": {
            "swarm": _method("BrainTorrent (serverless)", 0.861),
            "fedavg": _method("FedAvg (simulated server)", 0.843, auc=NAN),
            "single": _method("Single", 0.752, rounds=1),
        },
        "ignored": {"anything": 1},
    }


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _rows(markdown: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in markdown.splitlines() if line.startswith("|")]


def test_write_report_writes_every_file(results, tmp_path):
    paths = write_report(results, tmp_path / "out")
    assert set(paths) == {"markdown", "csv", "rounds_plot", "sites_plot"}
    assert paths["markdown"] == tmp_path / "out" / "compare.md"
    assert paths["csv"] == tmp_path / "out" / "compare.csv"
    assert paths["rounds_plot"] == tmp_path / "out" / "plots" / "accuracy_vs_round.png"
    assert paths["sites_plot"] == tmp_path / "out" / "plots" / "accuracy_per_site.png"
    for name in ("rounds_plot", "sites_plot"):
        assert paths[name].stat().st_size > 5000
        width, height = _png_size(paths[name])
        assert width > 100 and height > 100


def test_markdown_table(results, tmp_path):
    table = markdown_table(results)
    rows = _rows(table)
    assert rows[0] == ["Method", "ACC", "SEN", "SPE", "AUC"]
    assert [r[0] for r in rows[2:]] == ["Single", "FedAvg (simulated server)", "BrainTorrent (serverless)"]
    single, fedavg, swarm = rows[2:]
    assert single[1] == "75.2 ± 1.2"                     # percent, one decimal
    assert swarm[1] == "**86.1 ± 1.2**"                  # best of its column, bold
    assert fedavg[4] == "n/a"                            # NaN AUC
    assert swarm[4] == single[4] == "**90.0 ± 2.0**"     # a tie: both bold
    assert sum("**" in cell for row in rows[2:] for cell in row) == 5

    paths = write_report(results, tmp_path)
    text = paths["markdown"].read_text()
    assert text.startswith("# Comparison: toy")
    assert "FedAvg is a baseline run with a simulated central server" in text
    assert "the swarm runs serverless" in text
    assert table in text
    site_rows = _rows(text.split("## Accuracy per site", 1)[1].split("## Stability", 1)[0])
    assert site_rows[0] == ["Method", "site-0", "site-1", "Mean"]
    assert site_rows[4] == ["BrainTorrent (serverless)", "**85.1 ± 1.0**", "**87.1 ± 1.0**", "**86.1 ± 1.0**"]
    means = _rows(text.split("## Each site's own test split", 1)[1].split("## Accuracy per site", 1)[0])
    assert means[4] == ["BrainTorrent (serverless)", "86.1 / 86.6", "81.1 / 81.6", "88.1 / 88.6", "90.0 / 90.5", "none"]
    cost = _rows(text.split("## Stability and cost", 1)[1])
    assert cost[2] == ["Single", "2.0 ± 1.0 (3.0)", "12", "11", "300 (1)"]


def test_csv(results, tmp_path):
    paths = write_report(results, tmp_path)
    with paths["csv"].open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * (3 + 2) * 4                  # methods x (global, two site means, 2 sites) x metrics
    assert list(rows[0]) == ["method", "label", "site", "metric", "mean", "std"]
    assert [r["method"] for r in rows[::20]] == ["single", "fedavg", "swarm"]
    by_key = {(r["method"], r["site"], r["metric"]): r for r in rows}
    assert float(by_key["swarm", "global", "accuracy"]["mean"]) == pytest.approx(0.861)
    assert float(by_key["swarm", "global", "accuracy"]["std"]) == pytest.approx(0.012)
    assert float(by_key["swarm", "sites_weighted_mean", "accuracy"]["mean"]) == pytest.approx(0.866)
    assert float(by_key["single", "site-1", "sensitivity"]["mean"]) == pytest.approx(0.712)
    nan_row = by_key["fedavg", "global", "auc"]
    assert nan_row["mean"] == "" and nan_row["std"] == "0.02"
    assert by_key["fedavg", "site-0", "auc"]["mean"] == ""
    assert by_key["fedavg", "site-0", "accuracy"]["label"] == "FedAvg (simulated server)"


def test_order_extras_and_missing_values(tmp_path):
    results = {
        "scenario": "seg", "repeats": 1, "task": "segmentation", "metrics": ["dice", "pixel_accuracy"],
        "primary_metric": "dice",
        "methods": {
            "gossip": {"global": {"dice": _s(0.8)}, "sites": {"a": {"dice": _s(0.8)}}},   # extra, no label
            "mix": {"global": {"dice": _s(0.867, NAN), "pixel_accuracy": None}, "history": []},
            "cross": {"global": {"dice": _s(NAN, NAN)}, "sites": {}},
        },
    }
    assert ordered_methods(results) == ["cross", "mix", "gossip"]
    rows = _rows(markdown_table(results))
    assert rows[0] == ["Method", "Dice", "PixAcc"]
    assert rows[2] == ["Cross", "n/a", "n/a"]
    assert rows[3] == ["Mix", "**86.7 ± n/a**", "n/a"]
    assert rows[4] == ["gossip", "80.0 ± 1.0", "n/a"]
    # header; gossip global, two site means, one site; mix and cross global and two site means
    assert len(list(csv.reader(csv_text(results).splitlines()))) == 1 + 4 * 2 + 3 * 2 + 3 * 2
    paths = write_report(results, tmp_path)
    assert paths["rounds_plot"].name == "dice_vs_round.png"   # no history anywhere: flat lines only
    for name in ("rounds_plot", "sites_plot"):
        width, height = _png_size(paths[name])
        assert width > 100 and height > 100
    assert "gossip runs serverless" in paths["markdown"].read_text()


def test_the_majority_class_floor_is_listed_first_and_never_bold(results):
    results = dict(results)
    floor = _method("Majority class (the floor)", 0.5, auc=0.5)
    floor["global"]["specificity"] = _s(1.0, 0.0)  # always "negative": perfect specificity, nothing found
    floor["undefined"]["auc"] = {"per_repeat": [1, 0, 1], "sites": ["site-1"]}
    results["methods"] = {"majority": floor, **results["methods"]}
    rows = _rows(markdown_table(results))
    assert rows[2][0] == "Majority class (the floor)" and rows[2][3] == "100.0 ± 0.0"
    assert not any("**" in cell for cell in rows[2])
    assert any("**" in cell for row in rows[3:] for cell in row[3:4])  # the best real method is bold instead
    means = _rows(site_means_table(results))
    assert means[2][-1] == "AUC at up to 1 of 2 sites (site-1)"
