"""`swarm-scenario compare`: every method on identical splits, scored the same way.

Per repeat (a different data seed, so different splits and site draws), every method sees the
same sites and the same federation-wide held-out test set (`DataSource.global_test()`, a data
set's official test split where it has one). Cross, Single, Mix, FedAvg, FedSGD and FedProx
(`scenarios.methods`; the federated ones with a simulated central server, the only server in
this project) each run in a fresh child process, so that the wall time, CPU time and peak
memory recorded for a method are its own; the swarm runs as a real federation of
`swarm-node run` processes with the scenario's protocol and topology.

What is scored (`scenarios.scoring`), the same for every method:
- global: the method's final model(s) on the held-out set. One-model methods (Mix, FedAvg,
  FedSGD, FedProx) are their model; Single and Cross are the mean over the sites' own
  models; the swarm is the mean over each site's last published model (what each hospital
  ends with), and "swarm-consensus" is the sample-weighted average of those models (the
  serverless counterpart of FedAvg's global model).
- per site: each site's model (or the one model) on the site's own local test split,
  summarised unweighted and weighted by test size, with the sites where a metric is
  undefined (a one-class split has no AUC) counted and named.
- the majority-class floor, and per round the global score of every model, from which
  "stability" is the largest round-to-round fall of any site's model after round 5.

Summaries are mean and std over repeats of the per-repeat figures."""

from __future__ import annotations

import math
import multiprocessing
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import field_validator
from torch import Tensor

from nodes.data import SiteData
from nodes.datasets import Samples
from nodes.learner import Task
from nodes.metrics import mean_and_std, site_means
from nodes.models import build_model
from nodes.site import SiteDir
from swarm.checkpoint import load_checkpoint
from swarm.config import Table, refuse
from swarm.errors import ConfigError
from swarm.merge import weighted_mean
from swarm.tensors import rebuild_state

from .config import ScenarioConfig
from .federation import create_federation, site_names
from .methods import METHOD_NAMES, CrossParams, FedAvgParams, FedProxParams, FedSGDParams, MixParams, SingleParams, run_method
from .runner import run_federation, signals_held
from .scoring import TASK_METRICS, largest_drop, majority_class, mean_over, site_metrics

SWARM = "swarm"  # the scenario's own protocol, as real node processes
CONSENSUS = "swarm-consensus"  # the sample-weighted average of the swarm's final models
MAJORITY = "majority"
ALL_METHODS = (*METHOD_NAMES, SWARM)
STABLE_AFTER = 5  # stability counts falls from round 5 on
LABELS = {
    MAJORITY: "Majority class (the floor)",
    "cross": "Cross (train on one site, test on the others)",
    "single": "Single (local only)",
    "mix": "Mix (all data pooled)",
    "fedavg": "FedAvg (simulated server)",
    "fedsgd": "FedSGD (simulated server)",
    "fedprox": "FedProx (simulated server)",
}
Progress = Callable[[str], None]


class CompareTable(Table):
    """The scenario's [compare] table: the methods to run, and a table of parameters for each
    baseline method that takes some (scenarios.methods)."""

    TABLE: ClassVar[str] = "compare"
    methods: list[str] = list(ALL_METHODS)
    single: SingleParams = SingleParams()
    cross: CrossParams = CrossParams()
    mix: MixParams = MixParams()
    fedavg: FedAvgParams = FedAvgParams()
    fedsgd: FedSGDParams = FedSGDParams()
    fedprox: FedProxParams = FedProxParams()

    @field_validator("methods", mode="before")
    @classmethod
    def _method_names(cls, methods: Any) -> Any:
        if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
            raise refuse("", f'must be a list of method names, got {methods!r} (example: methods = ["single", "mix", "fedavg", "swarm"])')
        unknown = [m for m in methods if m not in ALL_METHODS]
        if unknown:
            raise refuse("", f"unknown method {unknown[0]!r}; known: {', '.join(ALL_METHODS)} (swarm: the scenario's own protocol as real nodes)")
        return methods


def compare_settings(config: ScenarioConfig) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """(methods, per-method parameters) from the scenario's [compare] table."""
    table = CompareTable.from_dict(config.compare)
    return table.methods, {name: getattr(table, name).fields() for name in METHOD_NAMES if name in table.model_fields_set}


def swarm_label(config: ScenarioConfig) -> str:
    protocol = {"braintorrent": "BrainTorrent", "dpsgd": "D-PSGD", "gossip": "Gossip learning",
                "epidemic": "Epidemic learning"}.get(config.protocol.get("name", "braintorrent"), "swarm")
    return f"{protocol}, {config.topology.get('name', 'ring')} (serverless, real nodes)"


def run_compare(config: ScenarioConfig, repeats: int, out: Path, progress: Progress, threads: int = 1) -> dict[str, Any]:
    """Run every method of the comparison `repeats` times; the results dict that
    `compare.json` holds (see `scenarios.compare_report` for its shape)."""
    torch.set_num_threads(threads)
    methods, params = compare_settings(config)
    shape = config.data_source().task_shape()
    task = Task.from_plan(config.model, config.training)
    metrics = list(TASK_METRICS[shape.kind])
    names = site_names(config.nodes)
    order = [MAJORITY, *methods] + ([CONSENSUS] if SWARM in methods else [])
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in order}
    data: list[dict[str, Any]] = []
    base_seed = int(config.data.get("seed", 0))
    try:
        _run_repeats(config, repeats, out, progress, threads, methods, params, shape, task, metrics, names, runs, data, base_seed)
        interrupted = False
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep what finished, say it is not the whole comparison
        progress("interrupted: the comparison keeps the runs that finished and is marked incomplete")
        interrupted = True
    labels = LABELS | {SWARM: swarm_label(config), CONSENSUS: f"{swarm_label(config).split(' (')[0]}: consensus of the final models"}
    return {
        "scenario": config.name,
        "repeats": repeats,
        **({"incomplete": True, "interrupted": True, "runs_completed": {m: len(runs[m]) for m in order}} if interrupted else {}),
        "task": shape.kind,
        "metrics": metrics,
        "primary_metric": _ranking_metric(shape.kind),
        "rounds": config.rounds,
        "nodes": config.nodes,
        "threads": threads,
        "settings": {"topology": config.topology, "protocol": config.protocol, "model": config.model,
                     "training": config.training, "data": config.data},  # with the command line's overrides
        "stable_after_round": STABLE_AFTER,
        "data": data,
        "methods": {m: _summarise(runs[m], metrics, _ranking_metric(shape.kind)) | {"label": labels[m]} for m in order if runs[m]},
    }


def _run_repeats(config: ScenarioConfig, repeats: int, out: Path, progress: Progress, threads: int, methods: Sequence[str],
                 params: Mapping[str, Any], shape: Any, task: Task, metrics: list[str], names: Sequence[str],
                 runs: dict[str, list[dict[str, Any]]], data: list[dict[str, Any]], base_seed: int) -> None:
    for repeat in range(repeats):
        repeat_config = config.replace(name=f"{config.name}-r{repeat}", data=config.data | {"seed": base_seed + repeat})
        source = repeat_config.data_source()
        sites = [replace(source.load_site(i), name=name) for i, name in enumerate(names)]
        held_out = source.global_test()
        data.append(_data_summary(sites, held_out, shape.kind, shape.num_classes) | {"held_out_origin": source.global_test_origin()})
        floor = majority_class({s.name: s.train_y for s in sites}, {s.name: s.test_y for s in sites},
                               held_out.y, shape.num_classes, shape.kind)
        runs[MAJORITY].append(_scored(floor["global"], {}, floor["sites"], sites, metrics, [], None))
        for method in methods:
            label = swarm_label(config) if method == SWARM else LABELS[method]
            progress(f"repeat {repeat + 1}/{repeats}: {label}")
            if method == SWARM:
                swarm, consensus = _run_swarm(repeat_config, out / f"repeat-{repeat}" / SWARM, task, shape.kind, sites, held_out, metrics)
                runs[SWARM].append(swarm)
                runs[CONSENSUS].append(consensus)
            else:
                runs[method].append(_run_baseline(method, sites, held_out, task, shape, config.rounds, params.get(method, {}), threads))
            progress(f"  {method}: {_line(runs[method][-1], metrics)}")
        if SWARM in methods:
            progress(f"  {CONSENSUS}: {_line(runs[CONSENSUS][-1], metrics)}")


def _ranking_metric(kind: str) -> str:
    return "auc" if kind == "classification" else "dice"


def _line(run: Mapping[str, Any], metrics: Sequence[str]) -> str:
    shown = ", ".join(f"{k} {run['global'][k]:.3f}" for k in metrics if k in run["global"])
    cost = run.get("cost") or {}
    return f"global {shown}" + (f" ({cost['wall_seconds']:.0f} s)" if "wall_seconds" in cost else "")


def _data_summary(sites: Sequence[SiteData], held_out: Samples, kind: str, num_classes: int) -> dict[str, Any]:
    """What every method of one repeat trained and was tested on: sizes and class counts."""

    def counts(labels: Tensor) -> list[int] | None:
        return torch.bincount(labels, minlength=num_classes).tolist() if kind == "classification" else None

    return {
        "sites": {s.name: {"train": s.train_samples, "test": s.test_samples, "train_classes": counts(s.train_y),
                           "test_classes": counts(s.test_y)} for s in sites},
        "held_out": {"samples": len(held_out), "classes": counts(held_out.y)},
    }


def _scored(global_scores: Mapping[str, float], per_model: Mapping[str, Mapping[str, float]],
            site_rows: Mapping[str, Mapping[str, float]], sites: Sequence[SiteData], metrics: Sequence[str],
            history: list[dict[str, Any]], cost: dict[str, float] | None) -> dict[str, Any]:
    """One repeat of one method in the shape every method shares: its held-out scores (and
    each of its models'), each site's split, the means over sites, history and cost."""
    sizes = {s.name: float(s.test_samples) for s in sites}
    return {
        "global": dict(global_scores),
        "global_models": {name: dict(row) for name, row in per_model.items()},
        "sites": {name: dict(row) for name, row in site_rows.items()},
        "site_means": site_means(site_rows, sizes, metrics),
        "history": history,
        **({"cost": cost} if cost is not None else {}),
    }


# ---------------------------------------------------------------------------------------------
# The baselines, each in a fresh child process


def _run_baseline(method: str, sites: Sequence[SiteData], held_out: Samples, task: Task, shape: Any, rounds: int,
                  params: Mapping[str, Any], threads: int) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")  # a clean process: its peak memory is the method's
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_baseline_process, args=(sender, method, list(sites), held_out, task, shape.input_shape,
                                                              shape.num_classes, rounds, dict(params), threads), daemon=True)
    with signals_held() as held:  # Ctrl-C in the middle of start() would leave the child unowned
        process.start()
    sender.close()
    try:
        held.raise_if_any()
        while not receiver.poll(0.5):
            if not process.is_alive() and not receiver.poll(0):
                raise RuntimeError(f"the {method} baseline process died (exit {process.exitcode}); its traceback is above")
        ok, payload = receiver.recv()
    finally:  # Ctrl-C or SIGTERM included: a baseline never outlives the comparison
        if process.is_alive():
            process.terminate()
        process.join(10)
    if not ok:
        raise RuntimeError(f"the {method} baseline failed: {payload}")
    result, cost = payload
    history = [{"round": h["round"], "global": h.get("global", {}), "global_models": h.get("global_models", {})}
               for h in result["history"]]
    return _scored(result["global"], result["global_models"], result["sites"], sites, result["metrics"], history, cost)


def _baseline_process(conn: Any, *args: Any) -> None:
    try:
        conn.send((True, _baseline_job(*args)))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent reports it
        pass
    except BaseException as exc:
        import traceback

        traceback.print_exc()
        conn.send((False, f"{type(exc).__name__}: {exc}"))


def _baseline_job(method: str, sites: list[SiteData], held_out: Samples, task: Task, input_shape: tuple[int, ...],
                  num_classes: int, rounds: int, params: dict[str, Any], threads: int) -> tuple[dict[str, Any], dict[str, float]]:
    torch.set_num_threads(threads)
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_method(method, sites, task.model_name, task.model_params, input_shape, num_classes, task.training,
                        rounds, task.init_seed, held_out=held_out, **params)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cost = {"wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
            "peak_rss_mb": usage.ru_maxrss / 1024, "processes": 1}
    return result.to_dict(), cost


# ---------------------------------------------------------------------------------------------
# The swarm: real node processes, scored from the versions they published


def _run_swarm(config: ScenarioConfig, out: Path, task: Task, kind: str, sites: Sequence[SiteData], held_out: Samples,
               metrics: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    federation = create_federation(config, out)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    outcome = run_federation(federation.sites, config.rounds, config.timeout, lambda line: None)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if outcome.interrupted:  # the runner stopped the nodes: the comparison stops too
        raise KeyboardInterrupt
    if not outcome.all_finished:
        failed = [n.name for n in outcome.nodes if n.exit_code != 0]
        raise ConfigError(f"compare: the federation in {out} did not finish (nodes {failed or 'timed out'}); see their node.log")
    cost = {
        "wall_seconds": outcome.wall_seconds,
        "cpu_seconds": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "peak_rss_mb": math.nan if outcome.peak_rss_bytes is None else outcome.peak_rss_bytes / 2**20,
        "processes": outcome.workers,
    }
    return score_published_versions(federation.sites, task, kind, sites, held_out, metrics, cost)


def _version_state(site: SiteDir, seq: int) -> tuple[int, dict[str, Tensor]]:
    """(round, state dict) of version `seq` of a site: its published tensors plus the ones
    it kept at the site (partial sharing, FedBN)."""
    flat, _, meta = load_checkpoint(site.checkpoint_path(seq))
    state = rebuild_state(flat)
    local = site.local_checkpoint_path(seq)
    if local.exists():
        state |= rebuild_state(load_checkpoint(local)[0])
    return int(meta.get("round", seq)), state


def score_published_versions(site_dirs: Mapping[str, Path], task: Task, kind: str, sites: Sequence[SiteData],
                             held_out: Samples, metrics: Sequence[str], cost: dict[str, float] | None = None,
                             *, every_round: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """(each site's published models, their consensus), scored like every other method:
    each site's last version on the held-out set and on the site's own test split, and the
    consensus of those last versions weighted by the sites' training samples. With
    `every_round`, also every earlier version on the held-out set, round by round, and the
    consensus of each round's versions (the history; it holds every version in memory,
    which suits the small models of comparisons). A site that published nothing counts
    as undefined."""
    data = {s.name: s for s in sites}
    by_round: dict[int, dict[str, dict[str, Tensor]]] = {}
    final_states: dict[str, dict[str, Tensor]] = {}
    for name, path in site_dirs.items():
        site = SiteDir(path)
        seqs = site.checkpoint_seqs()
        for seq in seqs if every_round else seqs[-1:]:
            round_no, state = _version_state(site, seq)
            by_round.setdefault(round_no, {})[name] = state
            final_states[name] = state
    model = build_model(task.model_name, task.model_params, sites[0].input_shape, sites[0].num_classes, task.init_seed)

    def held_out_scores(state: Mapping[str, Tensor]) -> dict[str, float]:
        model.load_state_dict(state)
        return site_metrics(model, held_out.x, held_out.y, kind)

    def consensus(states: Mapping[str, Mapping[str, Tensor]]) -> dict[str, Tensor]:
        return weighted_mean([(float(data[name].train_samples), state) for name, state in states.items()])

    history, consensus_history = [], []
    if every_round:
        for round_no in sorted(by_round):
            scores = {name: held_out_scores(state) for name, state in by_round[round_no].items()}
            history.append({"round": round_no, "global": mean_over(scores.values(), metrics), "global_models": scores})
            together = held_out_scores(consensus(by_round[round_no]))
            consensus_history.append({"round": round_no, "global": together, "global_models": {CONSENSUS: together}})
    site_rows, final_global = {}, {}
    for name, state in final_states.items():
        final_global[name] = held_out_scores(state)
        site_rows[name] = site_metrics(model, data[name].test_x, data[name].test_y, kind)  # the model just loaded
    for name in site_dirs:
        site_rows.setdefault(name, {m: math.nan for m in metrics})  # published nothing: counted as undefined
    swarm = _scored(mean_over(final_global.values(), metrics), final_global, site_rows, sites, metrics, history, cost)
    if not final_states:
        return swarm, _scored({}, {}, {}, sites, metrics, [], None)
    model.load_state_dict(consensus(final_states))
    consensus_rows = {s.name: site_metrics(model, s.test_x, s.test_y, kind) for s in sites}
    consensus_global = site_metrics(model, held_out.x, held_out.y, kind)
    return swarm, _scored(consensus_global, {CONSENSUS: consensus_global}, consensus_rows, sites, metrics,
                          consensus_history, None)


# ---------------------------------------------------------------------------------------------
# Over repeats


def _stability(run: Mapping[str, Any], metric: str) -> float:
    """The largest round-to-round fall of any one model's held-out `metric` after round
    STABLE_AFTER (NaN without enough rounds)."""
    series: dict[str, list[float]] = {}
    for entry in run["history"]:
        for name, row in entry.get("global_models", {}).items():
            series.setdefault(name, []).append(row.get(metric, math.nan))
    drops = [largest_drop(values, STABLE_AFTER) for values in series.values()]
    drops = [d for d in drops if not math.isnan(d)]
    return max(drops) if drops else math.nan


def _summarise(runs: list[dict[str, Any]], metrics: Sequence[str], ranking: str) -> dict[str, Any]:
    def stat(values: Any) -> dict[str, float]:
        return mean_and_std(list(values))

    site_names_ = list(runs[0]["sites"])
    rounds = max((len(run["history"]) for run in runs), default=0)
    history = []
    for i in range(rounds):
        entries = [run["history"][i] for run in runs if len(run["history"]) > i]
        history.append({"round": entries[0]["round"],
                        "global": {m: stat(e["global"].get(m, math.nan) for e in entries) for m in metrics}})
    drops = [_stability(run, ranking) for run in runs]
    summary: dict[str, Any] = {
        "global": {m: stat(run["global"].get(m, math.nan) for run in runs) for m in metrics},
        "sites_mean": {m: stat(run["site_means"][m]["mean"] for run in runs) for m in metrics},
        "sites_weighted_mean": {m: stat(run["site_means"][m]["weighted_mean"] for run in runs) for m in metrics},
        "undefined": {m: {"per_repeat": [len(run["site_means"][m]["undefined"]) for run in runs],
                          "sites": sorted({s for run in runs for s in run["site_means"][m]["undefined"]})}
                      for m in metrics},
        "sites": {s: {m: stat(run["sites"][s].get(m, math.nan) for run in runs) for m in metrics} for s in site_names_},
        "history": history,
        "models_per_repeat": len(runs[0]["global_models"]) or None,
        "stability": {"metric": ranking, "after_round": STABLE_AFTER, "largest_drop": stat(drops),
                      "worst": max((d for d in drops if not math.isnan(d)), default=math.nan)},
        "repeats": runs,
    }
    if all("cost" in run for run in runs):
        summary["cost"] = {key: stat(run["cost"][key] for run in runs) for key in ("wall_seconds", "cpu_seconds", "peak_rss_mb")}
        summary["cost"]["processes"] = runs[0]["cost"]["processes"]
    return summary
