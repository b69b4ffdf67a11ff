"""After a federation ran: the comparison baselines, the audit, `summary.json` and the table."""

from __future__ import annotations

import json
import math
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from nodes.audit import verify_sites
from nodes.baselines import local_only, mean_accuracy, pooled
from nodes.sources import load_every_site
from nodes.learner import Task
from swarm import __version__
from swarm.atomic import write_atomic

from .attackers import byzantine_share
from .config import ScenarioConfig
from .federation import Federation
from .runner import RunOutcome


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
    sites = load_every_site(config.data_table())
    local_rows = pooled_result = None
    if config.local_only:
        progress("training the local-only baseline (each site alone, same budget)")
        local_rows = local_only(None, task.model_name, task.model_params, task.training, config.rounds, task.init_seed, sites)
    if config.pooled:
        progress("training the pooled baseline (all data in one place, same budget)")
        pooled_result = pooled(None, task.model_name, task.model_params, task.training, config.rounds, task.init_seed, sites)
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
            "local_only": _scores(local_rows[index]) if local_rows else None,
            "pooled": _scores(pooled_result["sites"][index]) if pooled_result else None,
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
    swarm_mean = _mean([n["metrics"].get("accuracy", math.nan) for n in nodes])
    primary = "dice" if config.data_source().task_shape().kind == "segmentation" else "accuracy"
    return {
        "scenario": config.name,
        "federation_id": federation.manifest.federation_id.hex(),
        "protocol": dict(federation.manifest.plan.protocol),
        "topology": dict(federation.manifest.plan.topology) | {"neighbours": {k: list(v) for k, v in federation.manifest.plan.neighbours.items()}},
        "rounds": config.rounds,
        "nodes": nodes,
        "pooled": {"accuracy": pooled_result["mean_accuracy"], "loss": pooled_result["mean_loss"], "sites": pooled_result["sites"]} if pooled_result else None,
        "primary_metric": primary,
        "means": {  # of the primary metric: "metrics" is the swarm's own
            key: _mean([n[key].get(primary, math.nan) for n in nodes]) if all(n[key] is not None for n in nodes) else None
            for key in ("metrics", "local_only", "pooled")
        },
        "accuracy": {
            "swarm_mean": swarm_mean,
            "local_only_mean": mean_accuracy(local_rows) if local_rows else None,
            "pooled_mean": pooled_result["mean_accuracy"] if pooled_result else None,
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


METRICS = ("accuracy", "sensitivity", "specificity", "auc", "dice", "loss", "train_loss")


def _scores(row: dict[str, Any]) -> dict[str, float]:
    return {key: row[key] for key in METRICS if key in row}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def write_summary(out: Path, summary: dict[str, Any]) -> Path:
    path = out / "summary.json"
    write_atomic(path, (json.dumps(summary, indent=2) + "\n").encode())
    return path


def format_table(summary: dict[str, Any]) -> str:
    def pct(value: float | None) -> str:
        return "   -  " if value is None or math.isnan(value) else f"{100 * value:6.2f}"

    metric = summary["primary_metric"]
    lines = [f"{'site':<14} {'samples':>7} {'swarm':>7} {'local':>7} {'pooled':>7} {'rounds':>6}  state"]
    for node in summary["nodes"]:
        mark = "  BYZANTINE (simulated)" if node.get("byzantine") else ""
        local = (node["local_only"] or {}).get(metric)
        pooled = (node["pooled"] or {}).get(metric)
        lines.append(
            f"{node['name']:<14} {node['train_samples']:>7} {pct(node['metrics'].get(metric)):>7} {pct(local):>7} "
            f"{pct(pooled):>7} {node['rounds_completed']:>6}  {node['state']}{mark}"
        )
    means = summary["means"]
    lines.append(f"{'mean':<14} {'':>7} {pct(means['metrics']):>7} {pct(means['local_only']):>7} {pct(means['pooled']):>7}")
    attack = summary.get("attack")
    if attack:
        lines.append(f"{'honest mean':<14} {'':>7} {pct(attack['honest_mean']):>7}   (worst honest {pct(attack['honest_min']).strip()}; {attack['kind']} at {', '.join(attack['sites'])})")
    audit = summary["log_verification"]
    lines.append(
        f"test {'Dice' if metric == 'dice' else 'accuracy'} (%) on each site's held-out split; logs: {'verified' if audit['ok'] else 'FAILED'} "
        f"({audit['entries']} entries in {audit['logs']} logs); rejected messages: {summary['rejected_messages']['total']}; "
        f"wall time {summary['wall_seconds']:.1f} s"
    )
    return "\n".join(lines)
