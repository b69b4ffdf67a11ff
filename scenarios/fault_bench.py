"""What one silent neighbour costs the healthy sites: for a site with `k` neighbours (a
complete graph of k + 1 real node processes), run the scenario three times -- no fault, one
site dead from the start, one site SIGKILLed mid-run and restarted after `down` seconds --
and report the healthy sites' median round time and how the restarted site rejoined: whether
its first round merged its neighbours, and how many rounds each healthy site published from
the restarted site's first new version until it merged that site again.

A round's time is the gap between a site's consecutive publishes, round 1 excluded (it
includes every process's start-up). The restart counts from the moment the restarted node
has rewritten its status.json (it listens and answers again)."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nodes.records import read_metrics

from .config import ScenarioConfig
from .federation import create_federation
from .runner import LocalWorker, signals_held, stop_workers, worker_log_path

CASES = ("no_fault", "dead_from_start", "killed_mid_run")


def _metrics(site: Path) -> list[dict[str, Any]]:
    return read_metrics(site / "metrics.jsonl")


def _status_updated(site: Path) -> float | None:
    try:
        status = json.loads((site / "status.json").read_text())
    except (OSError, ValueError):
        return None
    return status.get("updated") if status.get("state") == "running" else None


def round_gaps(rows: Sequence[dict[str, Any]]) -> list[float]:
    """Seconds between consecutive publishes, from round 2 on."""
    times = [row["time"] for row in sorted(rows, key=lambda r: r["seq"])]
    return [later - earlier for earlier, later in zip(times, times[1:])]


def rejoin(healthy: Sequence[Sequence[dict[str, Any]]], victim_rows: Sequence[dict[str, Any]], victim: str, restarted_at: float) -> dict[str, Any]:
    """How the restarted site rejoined: whether its first round after the restart merged its
    neighbours; for each healthy site, its rounds from the restarted site's first new
    version until it merged that site again (the most over the healthy sites; None when one
    never did); and the seconds from the restart until every healthy site had."""
    new_versions = sorted((r for r in victim_rows if r["time"] >= restarted_at), key=lambda r: r["seq"])
    if not new_versions:
        return {"rounds_to_rejoin": None, "rejoin_s": None, "merged_neighbours_at_once": None}
    first = new_versions[0]
    counts, times = [], []
    for rows in healthy:
        after = sorted((r for r in rows if r["time"] >= first["time"]), key=lambda r: r["seq"])
        merged = next(((n, r) for n, r in enumerate(after, start=1) if r.get("merged", {}).get(victim, 0) >= first["seq"]), None)
        counts.append(merged[0] if merged else None)
        times.append(merged[1]["time"] if merged else None)
    return {
        "rounds_to_rejoin": None if None in counts else max(counts),
        "rejoin_s": None if None in times else round(max(times) - restarted_at, 1),
        "merged_neighbours_at_once": bool(first.get("merged")),
    }


def run_case(config: ScenarioConfig, case: str, out: Path, down: float, progress: Callable[[str], None]) -> dict[str, Any]:
    federation = create_federation(config, out)
    names = list(federation.sites)
    victim = names[-1]
    healthy = names[:-1]
    kill_round = max(2, config.rounds // 3)
    workers: dict[str, LocalWorker] = {}
    killed_at: float | None = None
    relaunched = False
    restarted_at: float | None = None  # when the relaunched node said it runs
    started = time.monotonic()
    timed_out = False
    with signals_held() as held:
        for name in names if case != "dead_from_start" else healthy:
            paths = [federation.sites[name]]
            workers[name] = LocalWorker(paths, worker_log_path(paths))
    try:
        held.raise_if_any()
        while any(workers[name].poll() is None for name in healthy):
            if time.monotonic() - started > config.timeout:
                timed_out = True
                break
            if case == "killed_mid_run":
                site = federation.sites[victim]
                if killed_at is None and len(_metrics(site)) >= kill_round:
                    workers[victim].kill()
                    workers[victim].wait(30)
                    killed_at = time.time()
                    progress(f"  {case}: killed {victim} after its round {kill_round}")
                elif killed_at is not None and not relaunched and time.time() >= killed_at + down:
                    with signals_held() as again:
                        workers[victim] = LocalWorker([site], worker_log_path([site]))
                    relaunched = True
                    again.raise_if_any()
                elif relaunched and restarted_at is None:
                    updated = _status_updated(site)
                    if updated is not None and updated > killed_at + down:
                        restarted_at = updated
                        progress(f"  {case}: {victim} running again")
            time.sleep(0.1)
    finally:
        stop_workers(list(workers.values()))
    gaps = [gap for name in healthy for gap in round_gaps(_metrics(federation.sites[name]))]
    row: dict[str, Any] = {
        "neighbours": len(names) - 1,
        "case": case,
        "median_round_s": round(statistics.median(gaps), 3) if gaps else None,
        "mean_round_s": round(statistics.fmean(gaps), 3) if gaps else None,  # what the median hides: a few slow rounds
        "rounds_published": min(len(_metrics(federation.sites[name])) for name in healthy),
        "timed_out": timed_out,
        "wall_s": round(time.monotonic() - started, 1),
    }
    if case == "killed_mid_run":
        if restarted_at is None:  # the run ended before the victim was back
            row |= {"rounds_to_rejoin": None, "rejoin_s": None, "merged_neighbours_at_once": None}
        else:
            row |= rejoin([_metrics(federation.sites[name]) for name in healthy], _metrics(federation.sites[victim]), victim, restarted_at)
    return row


def run_fault_bench(config: ScenarioConfig, neighbour_counts: Sequence[int], down: float, progress: Callable[[str], None],
                    out: Path | None = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="swarm-faults-") as scratch:
        for k in neighbour_counts:
            cell = config.with_overrides(nodes=k + 1, topology="complete", name=f"{config.name}-k{k}")
            for case in CASES:
                directory = (out or Path(scratch)) / f"k{k}" / case
                directory.mkdir(parents=True, exist_ok=True)
                rows.append(run_case(cell, case, directory, down, progress))
                baseline = next(r["median_round_s"] for r in rows if r["neighbours"] == k and r["case"] == "no_fault")
                if rows[-1]["median_round_s"] is not None and baseline:
                    rows[-1]["vs_no_fault"] = round(rows[-1]["median_round_s"] / baseline, 2)
                progress(format_row(rows[-1], header=len(rows) == 1))
    return rows


COLUMNS = ("neighbours", "case", "median_round_s", "vs_no_fault", "mean_round_s", "rounds_to_rejoin", "rejoin_s", "merged_neighbours_at_once", "rounds_published", "wall_s", "timed_out")


def format_row(row: dict[str, Any], header: bool = False) -> str:
    cells = " | ".join(str(row.get(c, "")) for c in COLUMNS)
    line = f"| {cells} |"
    if header:
        return "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n" + line
    return line
