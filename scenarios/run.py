"""One scenario run from start to summary: the federation's sites and manifest, its node
processes, the baselines and the audit. `swarm-scenario run` and the sweep cells use it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swarm.atomic import write_atomic
from swarm.errors import ConfigError

from .config import ScenarioConfig
from .federation import create_federation
from .report import build_summary, interrupted_summary, write_summary
from .runner import run_federation, worker_placement

Progress = Callable[[str], None]


def prepare_out(out: Path, force: bool) -> None:
    if (out / "sites").exists() or (out / "summary.json").exists():
        if not force:
            raise ConfigError(f"--out {out}: already holds a run; choose another directory or pass --force to replace it")
        shutil.rmtree(out / "sites", ignore_errors=True)
        (out / "summary.json").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def run_scenario(config: ScenarioConfig, out: Path, progress: Progress, *, force: bool = False) -> dict[str, Any]:
    """Run `config` into `out` and return the summary (also written to out/summary.json)."""
    prepare_out(out, force)
    write_atomic(out / "scenario.toml", config.source.encode())
    # On Ray the hosts (and so the endpoints in the manifest) are chosen before the sites exist.
    with worker_placement(config.backend, config.nodes, config.nodes_per_worker, out) as placement:
        federation = create_federation(config, out, placement.endpoints)
        topology = federation.manifest.plan.topology["name"]
        progress(
            f"federation {config.name}: {config.nodes} hospitals, {config.protocol.get('name', 'braintorrent')} on a "
            f"{topology} topology, {config.rounds} rounds -> {out}"
        )
        outcome = run_federation(federation.sites, config.rounds, config.timeout, progress, nodes_per_worker=placement.nodes_per_worker, backend=config.backend, insecure=config.insecure)
    try:
        summary = build_summary(config, federation, outcome, progress)
    except KeyboardInterrupt:  # a second Ctrl-C: what the nodes recorded is still worth keeping
        summary = interrupted_summary(config, outcome)
        progress("interrupted again: writing what the nodes recorded")
    write_summary(out, summary)
    return summary
