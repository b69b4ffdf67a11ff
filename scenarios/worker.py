"""A scenario's worker process: `python -m scenarios.worker --site A [--site B ...] [--insecure]`.

It runs the same nodes as `swarm-node run` (nodes.launch.run_sites), with one difference: a
site whose site.toml has an `[attack]` table gets a simulated Byzantine learner
(scenarios.byzantine). A hospital's `swarm-node run` refuses such a site, so the attacks
live here with the experiments and never in what a hospital installs. The runner starts
workers on this machine (scenarios.runner) or on Ray hosts (scenarios.ray_backend)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from nodes.cli import run_cli, user_errors

NODE_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def node_arguments(sites: Sequence[Path], insecure: bool = False) -> list[str]:
    """What a worker runs after the host's own Python (on this machine or a Ray host)."""
    arguments = ["-m", "scenarios.worker"]
    for site in sites:
        arguments += ["--site", str(site)]
    return arguments + (["--insecure"] if insecure else [])


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--site", "site_dirs", required=True, multiple=True, type=click.Path(path_type=Path), help="A site directory (repeat for several sites' nodes in this process).")
@click.option("--insecure", is_flag=True, help="DEBUGGING ONLY: turn CurveZMQ off (plaintext, no allow-list).")
@user_errors
def main(site_dirs: tuple[Path, ...], insecure: bool) -> None:
    """Run these sites' nodes until the plan is done or SIGTERM, as `swarm-node run` does,
    simulated Byzantine sites included."""
    from nodes.launch import INSECURE_WARNING, run_sites

    from .byzantine import scenario_learner

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    if insecure:
        click.echo(f"WARNING: {INSECURE_WARNING}", err=True)
    outcomes = run_sites(list(site_dirs), insecure=insecure, make_learner=scenario_learner)
    for site_dir, outcome in zip(site_dirs, outcomes):
        click.echo(f"{outcome.state} at version {outcome.published_seq}" + (f" ({site_dir})" if len(site_dirs) > 1 else ""))


if __name__ == "__main__":
    run_cli(main)
