"""How a packed federation scales on this machine: for each node count, run the scenario
(real worker processes, real sockets), sample the whole process tree's memory, and report
peak memory, memory per node and round time.

Round time is the federation's wall time from the first node's first publish to the last
node's last publish, divided by the rounds after the first (round 1 includes every worker's
start-up: imports, data generation, the first torch call)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import ScenarioConfig
from .run import run_scenario
from .runner import default_nodes_per_worker
from .tree_memory import TreeMemorySampler

GIB = 1 << 30


def measure(config: ScenarioConfig, out: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    with TreeMemorySampler(interval=0.25) as sampler:
        summary = run_scenario(config, out, progress, force=True)
    metrics = [json.loads(line) for site in sorted((out / "sites").iterdir()) for line in (site / "metrics.jsonl").read_text().splitlines() if line]
    firsts = [m["time"] for m in metrics if m["round"] == 1]
    lasts = [m["time"] for m in metrics if m["round"] == config.rounds]
    round_s = (max(lasts) - min(firsts)) / (config.rounds - 1) if config.rounds > 1 and firsts and lasts else float("nan")
    per_worker = config.nodes_per_worker or default_nodes_per_worker(config.nodes)
    return {
        "nodes": config.nodes,
        "nodes_per_worker": per_worker,
        "processes_peak": sampler.peak.processes,
        "ok": summary["ok"],
        "wall_s": round(summary["wall_seconds"], 1),
        "round_s": round(round_s, 2),
        "peak_rss_gib": round(sampler.peak.rss / GIB, 2),
        "peak_pss_gib": round(sampler.peak.pss / GIB, 2),
        "pss_per_node_mib": round(sampler.peak.pss / config.nodes / (1 << 20), 1),
        "mean_accuracy": summary["accuracy"]["swarm_mean"],
    }


def run_scale_bench(config: ScenarioConfig, counts: Sequence[int], progress: Callable[[str], None], out: Path | None = None) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="swarm-scale-") as scratch:
        for count in counts:
            cell = config.with_overrides(nodes=count, name=f"{config.name}-n{count}")
            directory = (out or Path(scratch)) / f"n{count}"
            rows.append(measure(cell, directory, lambda line: None))
            progress(format_row(rows[-1], header=len(rows) == 1))
    return rows


COLUMNS = ("nodes", "nodes_per_worker", "processes_peak", "wall_s", "round_s", "peak_rss_gib", "peak_pss_gib", "pss_per_node_mib", "ok")


def format_row(row: dict[str, Any], header: bool = False) -> str:
    line = "  ".join(f"{str(row[c]):>{len(c)}}" for c in COLUMNS)
    return ("  ".join(COLUMNS) + "\n" + line) if header else line
