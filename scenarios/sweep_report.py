"""What a sweep reports: per-cell round series, one CSV row per cell and the plots.

A cell's series (cells/<cell>/series.json) is read once from its run directory, so the
plots never re-read checkpoints. For round r (the rounds every node numbers 1, 2, ...):

  mean_accuracy[r], min_accuracy[r]  over the nodes that reported round r (the primary
                                     metric of the scenario: Dice for segmentation)
  bytes_sent[r]        sum over nodes of each node's cumulative bytes sent when it logged r
  wall_s[r]            seconds from the earliest node start until the last node logged r
  consensus_distance[r] = sqrt( (1/n) sum_i ||w_i - w_mean||^2 ), w_i node i's published
                       model of round r (all floating-point tensors, as one vector) and
                       w_mean their plain average: the root-mean-square distance of the
                       models from their average, in parameter units (0 = all equal)

The CSV row of a cell (a missing value is an empty cell):

  cell, topology, protocol, nodes, seed, rounds (planned), target_accuracy,
  final_mean_accuracy, final_min_accuracy (each node's last logged metric),
  consensus_distance (of every node's last published checkpoint),
  rounds_to_target, bytes_to_target, wall_to_target_s (at the first round whose mean over
  all nodes reaches target_accuracy), total_bytes (all bytes the nodes sent, from their
  status files), wall_s (the federation's wall time), spectral_gap (1 - second largest
  eigenvalue modulus of the Metropolis-Hastings mixing matrix of the cell's graph; for a
  time-varying topology the mean over its round graphs),
  time_<bucket>_s (mean over nodes of the seconds spent in wait, transfer, verify, merge,
  train), ok (every node finished and every log verified)

The plots are drawn through scenarios.plots (matplotlib, the optional extra `report`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from nodes.site import SiteDir
from swarm.atomic import write_atomic
from swarm.checkpoint import CheckpointError, load_checkpoint
from swarm.errors import SwarmError
from swarm.manifest import load_manifest
from swarm.mixing import mh_matrix, schedule_stats
from swarm.mixing import spectral_gap as mixing_gap
from swarm.tensors import rebuild_state

from .plots import colours, figure, legend, panels, save_png

NAN = math.nan
TIMING_BUCKETS = ("wait", "transfer", "verify", "merge", "train")
COLUMNS = (
    "cell", "topology", "protocol", "nodes", "seed", "rounds", "target_accuracy",
    "final_mean_accuracy", "final_min_accuracy", "consensus_distance",
    "rounds_to_target", "bytes_to_target", "wall_to_target_s", "total_bytes", "wall_s",
    "spectral_gap", *(f"time_{bucket}_s" for bucket in TIMING_BUCKETS), "ok",
)


# ---------------------------------------------------------------------------------------------
# Reading one run directory


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return NAN
    return float(value) if math.isfinite(value) else NAN


def read_metrics(path: Path) -> dict[int, dict[str, Any]]:
    """round -> that round's metrics line (the last one, should a restarted node repeat it)."""
    rows: dict[int, dict[str, Any]] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a killed node
            continue
        if isinstance(row, dict) and isinstance(row.get("round"), int):
            rows[row["round"]] = row
    return rows


def model_vector(path: Path) -> np.ndarray | None:
    """Every floating-point tensor of a checkpoint as one float64 vector; None if unreadable."""
    try:
        # The run's audit already verified every log and digest; skip rehashing each model.
        flat, _, _ = load_checkpoint(path, verify=False)
    except (OSError, CheckpointError):
        return None
    state = rebuild_state(flat)
    parts = [t.reshape(-1).double().numpy() for _, t in sorted(state.items()) if t.is_floating_point()]
    return np.concatenate(parts) if parts else np.zeros(0)


def consensus_distance(vectors: Sequence[np.ndarray | None]) -> float:
    """sqrt((1/n) sum_i ||w_i - w_mean||^2); NaN when a model is missing or shapes differ."""
    if not vectors or any(v is None for v in vectors) or len({v.shape for v in vectors}) != 1:  # type: ignore[union-attr]
        return NAN
    stacked = np.stack(vectors)  # type: ignore[arg-type]
    deviations = stacked - stacked.mean(axis=0)
    return float(math.sqrt(float(np.mean(np.sum(deviations * deviations, axis=1)))))


def spectral_gap(neighbours: Mapping[str, Sequence[str]], schedule: Mapping[str, Any] | None = None) -> float:
    """The Metropolis-Hastings spectral gap of a cell's graph (swarm.mixing): how much one
    round of neighbour averaging shrinks the disagreement (1 = one round suffices, near 0 =
    slow). For a time-varying topology (a plan `schedule`), the mean over its round graphs.
    NaN without a graph."""
    if len(neighbours) < 2:
        return NAN
    if schedule:
        return float(schedule_stats(_round_graphs(schedule))["round_spectral_gap_mean"])
    graph = nx.Graph()
    graph.add_nodes_from(neighbours)
    graph.add_edges_from((name, peer) for name, peers in neighbours.items() for peer in peers)
    return mixing_gap(mh_matrix(graph))


def _round_graphs(schedule: Mapping[str, Any]) -> list[nx.Graph]:
    graphs = []
    for links in schedule["graphs"]:
        graph = nx.DiGraph() if schedule.get("directed") else nx.Graph()
        graph.add_nodes_from(range(len(links)))
        graph.add_edges_from((i, j) for i, peers in enumerate(links) for j in peers)
        graphs.append(graph)
    return graphs


def _cell_graph(directory: Path, summary: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(neighbour lists, schedule or None) of a cell, from its manifest (the summary lacks
    the schedule of a time-varying topology)."""
    try:
        plan = load_manifest(directory / "manifest.json").manifest.plan
        return {name: list(peers) for name, peers in plan.neighbours.items()}, plan.schedule
    except SwarmError:
        return dict((summary.get("topology") or {}).get("neighbours") or {}), None


def cell_series(directory: Path) -> dict[str, Any]:
    """The round series of one run directory (see the module docstring)."""
    summary = read_summary(directory)
    sites = sorted(p for p in (directory / "sites").iterdir() if p.is_dir()) if (directory / "sites").is_dir() else []
    metric = summary.get("primary_metric", "accuracy")
    metrics = {site.name: read_metrics(SiteDir(site).metrics_path) for site in sites}
    rounds = sorted({r for rows in metrics.values() for r in rows})
    starts = [_number(rows[min(rows)].get("time")) - _number(rows[min(rows)].get("elapsed")) for rows in metrics.values() if rows]
    started = min(starts, default=NAN)
    series: dict[str, list[float]] = {key: [] for key in ("mean_accuracy", "min_accuracy", "reporting", "bytes_sent", "wall_s", "consensus_distance")}
    for round_no in rounds:
        rows = [node_rows[round_no] for node_rows in metrics.values() if round_no in node_rows]
        scores = [s for s in (_number(row.get(metric)) for row in rows) if not math.isnan(s)]
        series["mean_accuracy"].append(sum(scores) / len(scores) if scores else NAN)
        series["min_accuracy"].append(min(scores, default=NAN))
        series["reporting"].append(len(rows))
        series["bytes_sent"].append(sum(_bytes_by(node_rows, round_no) for node_rows in metrics.values()))
        times = [_number(row.get("time")) for row in rows]
        series["wall_s"].append(NAN if any(math.isnan(t) for t in times) else max(times) - started)
        series["consensus_distance"].append(consensus_distance([_round_model(site, metrics[site.name].get(round_no)) for site in sites]))
    final = {name: _number(rows[max(rows)].get(metric)) if rows else NAN for name, rows in metrics.items()}
    last_models = [_last_model(site) for site in sites]
    return {
        "metric": metric,
        "nodes": [site.name for site in sites],
        "rounds": rounds,
        **{key: [_json_number(v) for v in values] for key, values in series.items()},
        "final_accuracy": {name: _json_number(v) for name, v in final.items()},
        "final_consensus_distance": _json_number(consensus_distance(last_models)),
        "spectral_gap": _json_number(spectral_gap(*_cell_graph(directory, summary))),
        "timings": {bucket: _json_number(_mean_time(metrics.values(), bucket)) for bucket in TIMING_BUCKETS},
    }


def read_summary(directory: Path) -> dict[str, Any]:
    """A run directory's summary.json; {} when it is missing or torn."""
    try:
        return json.loads((directory / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _bytes_by(rows: Mapping[int, Mapping[str, Any]], round_no: int) -> float:
    """A node's cumulative bytes sent at `round_no`: its last count at or before that round
    (a node that stopped early sends nothing more)."""
    earlier = [r for r in rows if r <= round_no]
    return _number(rows[max(earlier)].get("bytes_sent")) if earlier else 0.0


def _round_model(site: Path, row: Mapping[str, Any] | None) -> np.ndarray | None:
    seq = None if row is None else row.get("seq")
    return model_vector(SiteDir(site).checkpoint_path(seq)) if isinstance(seq, int) else None


def _last_model(site: Path) -> np.ndarray | None:
    seqs = SiteDir(site).checkpoint_seqs()
    return model_vector(SiteDir(site).checkpoint_path(seqs[-1])) if seqs else None


def _mean_time(node_metrics: Iterable[Mapping[int, Mapping[str, Any]]], bucket: str) -> float:
    totals = []
    for rows in node_metrics:
        spent = [_number((row.get("timings") or {}).get(bucket)) for row in rows.values()]
        totals.append(sum(spent) if spent else NAN)
    return sum(totals) / len(totals) if totals else NAN


def _json_number(value: float) -> float | None:
    return None if value is None or math.isnan(value) else value


def _floats(values: Iterable[Any]) -> list[float]:
    return [NAN if v is None else float(v) for v in values]


def write_series(directory: Path) -> dict[str, Any]:
    series = cell_series(directory)
    write_atomic(directory / "series.json", (json.dumps(series) + "\n").encode())
    return series


def read_series(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "series.json").read_text())


# ---------------------------------------------------------------------------------------------
# One row per cell


def first_reaching(series: Mapping[str, Any], target: float) -> int | None:
    """Index of the first round whose mean over all nodes reaches `target` (a mean over the
    few nodes that got there first would claim the target too early); None if never."""
    everyone = len(series.get("nodes") or [])
    for i, (mean, reporting) in enumerate(zip(_floats(series["mean_accuracy"]), series["reporting"])):
        if reporting == everyone and not math.isnan(mean) and mean >= target:
            return i
    return None


def cell_row(cell: Any, directory: Path, target: float) -> dict[str, Any]:
    """The CSV row of a finished cell from its series.json and summary.json. `cell` is a
    grid point of scenarios.sweep (id, topology, protocol, nodes, seed, config.rounds); this
    module does not import the sweep, which imports it."""
    series = read_series(directory)
    summary = read_summary(directory)
    final = [v for v in _floats(series["final_accuracy"].values()) if not math.isnan(v)]
    reached = first_reaching(series, target)

    def at_target(key: str) -> float:
        return NAN if reached is None else _floats(series[key])[reached]

    total_bytes = sum(node.get("bytes_sent", 0) for node in summary.get("nodes", [])) if summary.get("nodes") else NAN
    return {
        "cell": cell.id,
        "topology": cell.topology,
        "protocol": cell.protocol,
        "nodes": cell.nodes,
        "seed": cell.seed,
        "rounds": cell.config.rounds,
        "target_accuracy": target,
        "final_mean_accuracy": sum(final) / len(final) if final else NAN,
        "final_min_accuracy": min(final, default=NAN),
        "consensus_distance": _floats([series["final_consensus_distance"]])[0],
        "rounds_to_target": NAN if reached is None else series["rounds"][reached],
        "bytes_to_target": at_target("bytes_sent"),
        "wall_to_target_s": at_target("wall_s"),
        "total_bytes": total_bytes,
        "wall_s": _number(summary.get("wall_seconds")),
        "spectral_gap": _floats([series["spectral_gap"]])[0],
        **{f"time_{bucket}_s": _floats([series["timings"].get(bucket)])[0] for bucket in TIMING_BUCKETS},
        "ok": bool(summary.get("ok", False)),
    }


def describe_row(row: Mapping[str, Any]) -> str:
    """One progress line: the row's headline numbers."""
    target = row["target_accuracy"]
    reached = (f"reached {target:g} at round {row['rounds_to_target']} after {_megabytes(row['bytes_to_target'])}"
               if not math.isnan(_number(row["rounds_to_target"])) else f"did not reach {target:g}")
    return (f"mean accuracy {row['final_mean_accuracy']:.3f} (min {row['final_min_accuracy']:.3f}), {reached}, "
            f"consensus distance {row['consensus_distance']:.4g}, {_megabytes(row['total_bytes'])} sent, "
            f"{row['wall_s']:.0f} s{'' if row['ok'] else ', NOT OK: see the cell summary.json'}")


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as an aligned text table for the terminal (results.csv has every column)."""
    def number(value: Any, spec: str) -> str:
        return "-" if math.isnan(_number(value)) else format(value, spec)

    width = max([4] + [len(row["cell"]) for row in rows])
    lines = [f"{'cell':<{width}}  {'gap':>5}  {'final':>6}  {'min':>6}  {'rounds':>6}  {'MB':>8}  {'s':>6}  {'consensus':>9}  ok"]
    for row in rows:
        lines.append(
            f"{row['cell']:<{width}}  {number(row['spectral_gap'], '.3f'):>5}  {number(row['final_mean_accuracy'], '.3f'):>6}  "
            f"{number(row['final_min_accuracy'], '.3f'):>6}  {number(row['rounds_to_target'], '.0f'):>6}  "
            f"{number(_number(row['bytes_to_target']) / 1e6, '.2f'):>8}  {number(row['wall_to_target_s'], '.1f'):>6}  "
            f"{number(row['consensus_distance'], '.4g'):>9}  {'yes' if row['ok'] else 'NO'}"
        )
    target = format(rows[0]["target_accuracy"], "g") if rows else "?"
    lines.append(f"gap: spectral gap; final/min: mean and lowest node accuracy at the end; rounds, MB (sent by all nodes) "
                 f"and s: to a mean accuracy of {target} (- = never); consensus: RMS distance of the final models from their mean")
    return "\n".join(lines)


def _megabytes(value: float) -> str:
    return "? MB" if math.isnan(_number(value)) else f"{value / 1e6:.2f} MB"


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_value(row.get(column)) for column in columns])
    return buffer.getvalue()


def _csv_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def write_results(out: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    path = out / "results.csv"
    write_atomic(path, csv_text(rows).encode())
    return path


# ---------------------------------------------------------------------------------------------
# Plots

Group = tuple[str, str, int]  # protocol, topology, nodes: the seeds of a group are averaged


def _groups(out: Path, rows: Sequence[Mapping[str, Any]]) -> dict[Group, list[dict[str, Any]]]:
    """The series of every cell, grouped over seeds, in the order the grid lists them."""
    groups: dict[Group, list[dict[str, Any]]] = {}
    for row in rows:
        directory = out / "cells" / row["cell"]
        if (directory / "series.json").is_file():
            groups.setdefault((row["protocol"], row["topology"], row["nodes"]), []).append(read_series(directory))
    return groups


def _mean_over_seeds(seeds: Sequence[Mapping[str, Any]], key: str) -> dict[int, float]:
    """round -> mean of `key` over the seeds that have a value for that round."""
    values: dict[int, list[float]] = {}
    for series in seeds:
        for round_no, value in zip(series["rounds"], _floats(series[key])):
            if not math.isnan(value):
                values.setdefault(round_no, []).append(value)
    return {r: sum(v) / len(v) for r, v in sorted(values.items())}


def _line_label(group: Group, several_sizes: bool) -> str:
    return f"{group[1]} n={group[2]}" if several_sizes else group[1]


def plot_curves(groups: Mapping[Group, Sequence[Mapping[str, Any]]], path: Path, y_key: str, y_label: str,
                *, x_key: str = "rounds", log_y: bool = False) -> Path:
    """One panel per protocol, one line per topology (and node count): `y_key` against the
    round or, with x_key "bytes_sent", against the cumulative bytes; means over seeds."""
    protocols = list(dict.fromkeys(group[0] for group in groups))
    several_sizes = len({group[2] for group in groups}) > 1
    colour = colours(group[1] for group in groups)  # one per topology, the same in every panel
    with panels(len(protocols), len(protocols), (5.5, 4.2)) as (fig, axes):
        for ax, protocol in zip(axes, protocols):
            for group, seeds in groups.items():
                if group[0] != protocol:
                    continue
                ys = _mean_over_seeds(seeds, y_key)
                xs = _mean_over_seeds(seeds, x_key) if x_key != "rounds" else {r: float(r) for r in ys}
                points = [(xs[r], y) for r, y in ys.items() if r in xs and not (log_y and y <= 0)]
                if points:
                    ax.plot(*zip(*points), marker=".", color=colour[group[1]], label=_line_label(group, several_sizes))
            ax.set_title(protocol)
            ax.set_xlabel("round" if x_key == "rounds" else "bytes sent by all nodes (cumulative)")
            if x_key != "rounds":
                ax.set_xscale("log")
            if log_y:
                ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
            legend(ax)
        axes[0].set_ylabel(y_label)
        return save_png(fig, path)


def plot_time_to_target(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Rounds to reach the target accuracy against the spectral gap: a point per cell (each
    seed), marker and colour per protocol, labelled per topology (and node count); a cell
    that never reached the target is an x on the dashed line above the planned rounds."""
    by_group: dict[Group, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_group.setdefault((row["protocol"], row["topology"], row["nodes"]), []).append(row)
    protocols = list(dict.fromkeys(group[0] for group in by_group))
    markers = "osD^vP*X"
    several_sizes = len({group[2] for group in by_group}) > 1
    ceiling = max((int(row["rounds"]) for row in rows), default=1) + 1
    labelled: set[str] = set()  # one legend entry per protocol
    with figure((6.5, 4.5)) as (fig, ax):
        for group, members in by_group.items():
            points = [(_number(m["spectral_gap"]), _number(m["rounds_to_target"])) for m in members]
            points = [(x, y) for x, y in points if not math.isnan(x)]
            if not points:
                continue
            colour, marker = f"C{protocols.index(group[0]) % 10}", markers[protocols.index(group[0]) % len(markers)]
            reached = [(x, y) for x, y in points if not math.isnan(y)]
            missed = [(x, ceiling) for x, y in points if math.isnan(y)]
            if reached:
                ax.scatter(*zip(*reached), marker=marker, color=colour, alpha=0.8, label=None if group[0] in labelled else group[0])
                labelled.add(group[0])
            if missed:
                ax.scatter(*zip(*missed), marker="x", color=colour)
            ys = [y for _, y in reached] + [y for _, y in missed]
            note = f" ({len(missed)}/{len(points)} not reached)" if missed else ""
            ax.annotate(_line_label(group, several_sizes) + note, (points[0][0], sum(ys) / len(ys)),
                        textcoords="offset points", xytext=(6, 4), fontsize="small")
        ax.axhline(ceiling, color="grey", linestyle="--", linewidth=0.8)
        ax.set_ylim(0, ceiling + 1)
        ax.set_xscale("log")
        ax.set_xlabel("spectral gap of the mixing matrix (log scale)")
        ax.set_ylabel(f"rounds to mean accuracy {_number(rows[0]['target_accuracy']):g}" if rows else "rounds to target")
        ax.grid(True, alpha=0.3)
        legend(ax)
        return save_png(fig, path)


def write_plots(out: Path, rows: Sequence[Mapping[str, Any]]) -> list[Path]:
    """plots/accuracy_vs_round.png, accuracy_vs_bytes.png, consensus_vs_round.png and
    time_to_target_vs_spectral_gap.png under `out`; nothing when no cell has finished.
    Raises scenarios.plots.PlotsUnavailable without matplotlib."""
    groups = _groups(out, rows)
    if not groups:
        return []
    plots = out / "plots"
    return [
        plot_curves(groups, plots / "accuracy_vs_round.png", "mean_accuracy", "mean accuracy over nodes"),
        plot_curves(groups, plots / "accuracy_vs_bytes.png", "mean_accuracy", "mean accuracy over nodes", x_key="bytes_sent"),
        plot_curves(groups, plots / "consensus_vs_round.png", "consensus_distance", "consensus distance (RMS to the mean model)", log_y=True),
        plot_time_to_target(rows, plots / "time_to_target_vs_spectral_gap.png"),
    ]
