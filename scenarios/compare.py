"""`swarm-scenario compare`: the survey-style comparison of methods on identical splits.

Per repeat (a different data seed, so different splits and site draws), every method sees the
same sites: Cross, Single, Mix, FedAvg, FedSGD and FedProx run in this process
(`scenarios.methods`; the federated ones with a simulated central server, the only server in
this project), and BrainTorrent runs as a real federation of `swarm-node run` processes.
Results are summarised as mean and std over repeats (of the per-repeat mean over sites)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from nodes.learner import Task
from nodes.metrics import mean_and_std
from nodes.sources import load_every_site
from swarm.config import check_keys
from swarm.errors import ConfigError

from .config import ScenarioConfig
from .federation import create_federation, site_names
from .methods import METHOD_NAMES, TASK_METRICS, run_method
from .runner import run_federation

SWARM_METHODS = ("braintorrent",)  # run as real node processes
ALL_METHODS = (*METHOD_NAMES, *SWARM_METHODS)
LABELS = {
    "cross": "Cross (train on one site, test on the others)",
    "single": "Single (local only)",
    "mix": "Mix (all data pooled)",
    "fedavg": "FedAvg (simulated server)",
    "fedsgd": "FedSGD (simulated server)",
    "fedprox": "FedProx (simulated server)",
    "braintorrent": "BrainTorrent (serverless, real nodes)",
}
Progress = Callable[[str], None]


def compare_settings(config: ScenarioConfig) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """(methods, per-method parameters) from the scenario's [compare] table."""
    table = dict(config.compare)
    methods = table.pop("methods", list(ALL_METHODS))
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        raise ConfigError(f'compare.methods: must be a list of method names, got {methods!r} (example: methods = ["single", "mix", "fedavg", "braintorrent"])')
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise ConfigError(f"compare.methods: unknown method {unknown[0]!r}; known: {', '.join(ALL_METHODS)}")
    check_keys(table, set(METHOD_NAMES), "compare")
    params = {name: dict(values) for name, values in table.items()}
    return methods, params


def run_compare(config: ScenarioConfig, repeats: int, out: Path, progress: Progress) -> dict[str, Any]:
    methods, params = compare_settings(config)
    shape = config.data_source().task_shape()
    task = Task.from_plan(config.model, config.training)
    metrics = list(TASK_METRICS[shape.kind])
    names = site_names(config.nodes)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    base_seed = int(config.data.get("seed", 0))
    for repeat in range(repeats):
        repeat_config = replace(config, name=f"{config.name}-r{repeat}", data=config.data | {"seed": base_seed + repeat})
        sites = load_every_site(repeat_config.data_table())
        for method in methods:
            progress(f"repeat {repeat + 1}/{repeats}: {LABELS[method]}")
            if method in SWARM_METHODS:
                runs[method].append(_run_swarm(repeat_config, out / f"repeat-{repeat}" / method, metrics, shape.kind, progress))
                continue
            result = run_method(
                method, sites, task.model_name, task.model_params, shape.input_shape, shape.num_classes,
                task.training, config.rounds, task.init_seed, **params.get(method, {}),
            )
            per_site = {names[i]: values for i, values in enumerate(result.sites.values())}
            runs[method].append({"sites": per_site, "overall": result.overall, "history": result.history})
            progress(f"  {method}: " + ", ".join(f"{k} {result.overall[k]:.3f}" for k in metrics if k in result.overall))
    return {
        "scenario": config.name,
        "repeats": repeats,
        "task": shape.kind,
        "metrics": metrics,
        "primary_metric": metrics[0],
        "rounds": config.rounds,
        "nodes": config.nodes,
        "methods": {m: _summarise(runs[m], metrics) | {"label": LABELS[m]} for m in methods},
    }


def _run_swarm(config: ScenarioConfig, out: Path, metrics: Sequence[str], kind: str, progress: Progress) -> dict[str, Any]:
    federation = create_federation(config, out)
    outcome = run_federation(federation.sites, config.rounds, config.timeout, lambda line: None)
    if not outcome.all_finished:
        failed = [n.name for n in outcome.nodes if n.exit_code != 0]
        raise ConfigError(f"compare: the BrainTorrent federation in {out} did not finish (nodes {failed or 'timed out'}); see their node.log")
    # Nodes log segmentation's pixel accuracy as "accuracy" (it is what `evaluate` returns).
    node_key = {"pixel_accuracy": "accuracy"} if kind == "segmentation" else {}

    def scores(line: Mapping[str, Any]) -> dict[str, float]:
        return {metric: float(line[key]) for metric, key in ((m, node_key.get(m, m)) for m in metrics) if key in line}

    per_site = {node.name: scores(node.metrics[-1]) for node in outcome.nodes}
    overall = {m: _nanmean([s.get(m, math.nan) for s in per_site.values()]) for m in metrics}
    history = []
    for round_no in range(1, config.rounds + 1):
        lines = [scores(node.metrics[round_no - 1]) for node in outcome.nodes if len(node.metrics) >= round_no]
        history.append({"round": round_no, **{m: _nanmean([s.get(m, math.nan) for s in lines]) for m in metrics}})
    progress("  braintorrent: " + ", ".join(f"{k} {overall[k]:.3f}" for k in metrics) + f" ({outcome.wall_seconds:.0f} s)")
    return {"sites": per_site, "overall": overall, "history": history}


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def _summarise(runs: list[dict[str, Any]], metrics: Sequence[str]) -> dict[str, Any]:
    sites = list(runs[0]["sites"])
    rounds = max(len(run["history"]) for run in runs)
    history = []
    for i in range(rounds):
        entries = [run["history"][i] for run in runs if len(run["history"]) > i]
        history.append({"round": entries[0]["round"], **{m: mean_and_std([e.get(m, math.nan) for e in entries]) for m in metrics}})
    return {
        "overall": {m: mean_and_std([run["overall"].get(m, math.nan) for run in runs]) for m in metrics},
        "sites": {s: {m: mean_and_std([run["sites"][s].get(m, math.nan) for run in runs]) for m in metrics} for s in sites},
        "history": history,
    }
