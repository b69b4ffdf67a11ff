"""`swarm-scenario topology`: the stats of a topology before anyone runs it.

Parses the command's key=value parameters into a [topology] table and formats
swarm.mixing's statistics as a small table or JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from swarm.config import toml_value
from swarm.errors import ConfigError
from swarm.mixing import schedule_stats, topology_stats
from swarm.topology import is_time_varying, topology_graphs


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """key=value arguments as TOML-like values: true/false, integers, floats, else strings."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key or not text:
            raise ConfigError(f"topology parameter {pair!r}: expected key=value, e.g. degree=4 or path=graph.txt")
        params[key] = _value(text)
    return params


def _value(text: str) -> Any:
    if text in ("true", "false"):
        return text == "true"
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


def topology_report(name: str, params: dict[str, Any], nodes: int, rounds: int, seed: int | None) -> dict[str, Any]:
    """The stats of topology `name` on `nodes` members (time-varying: over `rounds` rounds)."""
    if "name" in params:
        raise ConfigError("topology parameter name=...: give the topology name as the first argument instead")
    table = {"name": name, **params} | ({} if seed is None else {"seed": seed})
    graphs = topology_graphs(table, nodes, rounds)
    stats = schedule_stats(graphs) if is_time_varying(name) else topology_stats(graphs[0])
    return {"topology": table, "time_varying": is_time_varying(name)} | stats


def format_report(report: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(report, indent=2)
    rows = [
        ("topology", _describe(report["topology"])),
        ("nodes", report["nodes"]),
        ("edges", report["edges"] if not report["time_varying"] else f"{report['edges']} (union of {report['period']} rounds)"),
        ("degree min/mean/max", f"{report['degree_min']} / {report['degree_mean']:.2f} / {report['degree_max']}"),
        ("diameter", report["diameter"] if report["connected"] else f"inf ({report['components']} components)"),
    ]
    if report["time_varying"]:
        rows += [("spectral gap, per round", f"{report['round_spectral_gap_mean']:.4f} mean, {report['round_spectral_gap_min']:.4f} min"),
                 ("spectral gap, union", f"{report['spectral_gap']:.4f}")]
    else:
        rows.append(("spectral gap (MH)", f"{report['spectral_gap']:.4f}"))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def _describe(table: dict[str, Any]) -> str:
    params = ", ".join(f"{key}={toml_value(value)}" for key, value in table.items() if key != "name")
    return table["name"] + (f" ({params})" if params else "")
