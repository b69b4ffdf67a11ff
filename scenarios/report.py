"""After a federation ran: the comparison baselines, the audit, `summary.json` and the table."""

from __future__ import annotations

import json
import math
import platform
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from nodes.audit import verify_sites
from nodes.learner import Task
from swarm import __version__
from swarm.atomic import write_atomic

from .attackers import byzantine_share
from .compare import score_published_versions
from .config import ScenarioConfig
from .federation import Federation
from .methods import run_method
from .runner import RunOutcome
from .scoring import TASK_METRICS, majority_class


def _code_version() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent)
        return f"{__version__}+{commit.stdout.strip()}" if commit.returncode == 0 else __version__
    except OSError:
        return __version__


def _node_status(site: Path) -> dict[str, Any]:
    try:
        return json.loads((site / "status.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def build_summary(config: ScenarioConfig, federation: Federation, outcome: RunOutcome, progress) -> dict[str, Any]:
    task = Task.from_plan(config.model, config.training)
    source = config.data_source()
    shape = source.task_shape()
    metrics = TASK_METRICS[shape.kind]
    sites = [replace(source.load_site(i), name=name) for i, name in enumerate(federation.sites)]
    held_out = source.global_test()

    def baseline(method: str) -> Any:
        return run_method(method, sites, task.model_name, task.model_params, shape.input_shape, shape.num_classes,
                          task.training, config.rounds, task.init_seed, history=False, held_out=held_out)

    local = pooled = None
    if outcome.interrupted and (config.local_only or config.pooled):
        progress("interrupted: no baselines; the summary is marked incomplete")
    if config.local_only and not outcome.interrupted:
        progress("training the local-only baseline (each site alone, same budget)")
        local = baseline("single")
    if config.pooled and not outcome.interrupted:
        progress("training the pooled baseline (all data in one place, same budget)")
        pooled = baseline("mix")
    floor = majority_class({s.name: s.train_y for s in sites}, {s.name: s.test_y for s in sites},
                           held_out.y, shape.num_classes, shape.kind)
    honest = {name: path for name, path in federation.sites.items() if name not in federation.attackers}
    swarm, consensus = score_published_versions(honest, task, shape.kind, [s for s in sites if s.name in honest],
                                                held_out, metrics, every_round=False)
    progress("verifying every update log")
    audit = verify_sites([p for p in federation.sites.values()])
    nodes = []
    rejected: dict[str, int] = {}
    for index, node in enumerate(outcome.nodes):
        status = _node_status(node.site)
        final = node.metrics[-1] if node.metrics else {}
        for reason, count in status.get("rejected", {}).items():
            rejected[reason] = rejected.get(reason, 0) + count
        nodes.append({
            "name": node.name,
            "metrics": _scores(final),
            "local_only": local.sites[node.name] if local else None,
            "pooled": pooled.sites[node.name] if pooled else None,
            "majority": floor["sites"][node.name],
            "rounds_completed": len(node.metrics),
            "state": status.get("state", "unknown"),
            "exit_code": node.exit_code,
            "train_samples": sites[index].train_samples,
            "neighbours": list(federation.manifest.plan.neighbours[node.name]),
            "bytes_sent": sum(status.get("bytes_sent", {}).values()),
            "bytes_received": sum(status.get("bytes_received", {}).values()),
            "rejected": status.get("rejected", {}),
            "byzantine": node.name in federation.attackers,
        })
    primary = "dice" if shape.kind == "segmentation" else "accuracy"
    means = {  # of the primary metric over sites, each on its own test split: "metrics" is the swarm's own
        key: _mean([n[key].get(primary, math.nan) for n in nodes]) if all(n[key] is not None for n in nodes) else None
        for key in ("metrics", "local_only", "pooled", "majority")
    }
    return {
        "scenario": config.name,
        "federation_id": federation.manifest.federation_id.hex(),
        "protocol": dict(federation.manifest.plan.protocol),
        "topology": dict(federation.manifest.plan.topology) | {"neighbours": {k: list(v) for k, v in federation.manifest.plan.neighbours.items()}},
        "rounds": config.rounds,
        "nodes": nodes,
        "pooled": {"accuracy": means["pooled"], "sites": pooled.sites} if pooled else None,
        "primary_metric": primary,
        "means": means,
        "accuracy": {
            "swarm_mean": _mean([n["metrics"].get("accuracy", math.nan) for n in nodes]),
            "local_only_mean": local.overall["accuracy"] if local and "accuracy" in local.overall else None,
            "pooled_mean": pooled.overall["accuracy"] if pooled and "accuracy" in pooled.overall else None,
        },
        "held_out": {  # every model on the same federation-wide test set that no site trains on
            "origin": source.global_test_origin(),
            "samples": len(held_out),
            "swarm": swarm["global"],  # mean over the (honest) sites' last published models
            "swarm_consensus": consensus["global"],  # their sample-weighted average
            "local_only": local.global_ if local else None,
            "pooled": pooled.global_ if pooled else None,
            "majority": floor["global"],
        },
        "log_verification": {
            "ok": audit.ok,
            "entries": audit.entries_checked,
            "logs": audit.logs_checked,
            "failures": [str(f) for f in audit.failures],
        },
        "rejected_messages": {"total": sum(rejected.values()), "by_reason": rejected},
        "merge": dict(federation.manifest.plan.merge) or {"rule": "mean"},
        "attack": _attack_summary(config, federation, nodes, primary),
        "wall_seconds": round(outcome.wall_seconds, 2),
        "workers": outcome.workers,  # worker processes (several nodes each in large federations)
        "timed_out": outcome.timed_out,
        "interrupted": outcome.interrupted,
        "incomplete": outcome.interrupted,  # stopped early: no baselines, nodes short of the plan
        "ok": outcome.all_finished and audit.ok,
        "environment": {"code": _code_version(), "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()},
    }


def _attack_summary(config: ScenarioConfig, federation: Federation, nodes: list[dict[str, Any]], primary: str) -> dict[str, Any] | None:
    """Who attacked and how the honest sites fared (the Byzantine sites' own scores are
    meaningless: they report whatever they like)."""
    if not federation.attackers:
        return None
    honest = [n["metrics"].get(primary, math.nan) for n in nodes if not n["byzantine"]]
    shares = byzantine_share(set(federation.attackers), {k: list(v) for k, v in federation.manifest.plan.neighbours.items()})
    return {
        "kind": config.attack.get("kind"),
        "sites": sorted(federation.attackers),
        "honest_mean": _mean(honest),
        "honest_min": min(honest) if honest else math.nan,
        "max_neighbourhood_share": max(shares.values(), default=0.0),  # worst Byzantine share an honest site merges
    }


METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc", "dice", "loss", "train_loss")


def _scores(row: dict[str, Any]) -> dict[str, float]:
    return {key: row[key] for key in METRICS if key in row}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def interrupted_summary(config: ScenarioConfig, outcome: RunOutcome) -> dict[str, Any]:
    """What is known when a second Ctrl-C cuts the summary short: the nodes' own records."""
    return {
        "scenario": config.name,
        "rounds": config.rounds,
        "interrupted": True,
        "incomplete": True,
        "ok": False,
        "nodes": [{"name": n.name, "rounds_completed": len(n.metrics), "exit_code": n.exit_code, "metrics": _scores(n.metrics[-1] if n.metrics else {})}
                  for n in outcome.nodes],
        "wall_seconds": round(outcome.wall_seconds, 2),
    }


def write_summary(out: Path, summary: dict[str, Any]) -> Path:
    path = out / "summary.json"
    write_atomic(path, (json.dumps(summary, indent=2) + "\n").encode())
    return path


def format_table(summary: dict[str, Any]) -> str:
    def pct(value: float | None) -> str:
        return "   -  " if value is None or math.isnan(value) else f"{100 * value:6.2f}"

    metric = summary["primary_metric"]
    lines = [f"{'site':<14} {'samples':>7} {'swarm':>7} {'local':>7} {'pooled':>7} {'majority':>8} {'rounds':>6}  state"]
    for node in summary["nodes"]:
        mark = "  BYZANTINE (simulated)" if node.get("byzantine") else ""
        local = (node["local_only"] or {}).get(metric)
        pooled = (node["pooled"] or {}).get(metric)
        lines.append(
            f"{node['name']:<14} {node['train_samples']:>7} {pct(node['metrics'].get(metric)):>7} {pct(local):>7} "
            f"{pct(pooled):>7} {pct(node['majority'].get(metric)):>8} {node['rounds_completed']:>6}  {node['state']}{mark}"
        )
    means = summary["means"]
    lines.append(f"{'mean':<14} {'':>7} {pct(means['metrics']):>7} {pct(means['local_only']):>7} {pct(means['pooled']):>7} {pct(means['majority']):>8}")
    held_out = summary.get("held_out")
    if held_out:
        lines.append(
            f"{'held-out':<14} {held_out['samples']:>7} {pct(held_out['swarm'].get(metric)):>7} "
            f"{pct((held_out['local_only'] or {}).get(metric)):>7} {pct((held_out['pooled'] or {}).get(metric)):>7} "
            f"{pct(held_out['majority'].get(metric)):>8}   consensus {pct(held_out['swarm_consensus'].get(metric)).strip()}"
        )
    attack = summary.get("attack")
    if attack:
        lines.append(f"{'honest mean':<14} {'':>7} {pct(attack['honest_mean']):>7}   (worst honest {pct(attack['honest_min']).strip()}; {attack['kind']} at {', '.join(attack['sites'])})")
    audit = summary["log_verification"]
    name = "Dice" if metric == "dice" else "accuracy"
    lines.append(
        f"test {name} (%) on each site's own test split; held-out: every model on {held_out['origin'] if held_out else 'n/a'} "
        f"(swarm and local: mean over the sites' models; consensus: their sample-weighted average)"
    )
    lines.append(
        f"logs: {'verified' if audit['ok'] else 'FAILED'} ({audit['entries']} entries in {audit['logs']} logs); "
        f"rejected messages: {summary['rejected_messages']['total']}; wall time {summary['wall_seconds']:.1f} s"
    )
    return "\n".join(lines)
