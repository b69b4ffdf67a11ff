"""`swarm-scenario`: run whole federations on this machine."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import click

from nodes.cli import run_cli, user_errors
from swarm.atomic import write_atomic
from swarm.errors import ConfigError


def _progress(message: str) -> None:
    click.echo(message, err=False)
    sys.stdout.flush()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Run federations of simulated hospitals on one machine."""


@main.command()
@click.argument("scenario_path", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output directory (default: runs/NAME-TIME).")
@click.option("--force", is_flag=True, help="Replace an existing output directory's sites and summary.")
@user_errors
def run(scenario_path: Path, out: Path | None, force: bool) -> None:
    """Run SCENARIO_PATH: one real `swarm-node run` process per hospital over loopback TCP."""
    from .config import ScenarioConfig
    from .federation import create_federation
    from .report import build_summary, format_table, write_summary
    from .runner import run_federation

    config = ScenarioConfig.load(scenario_path)
    out = out or Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    _prepare_out(out, force)
    write_atomic(out / "scenario.toml", config.source.encode())
    federation = create_federation(config, out)
    _progress(
        f"federation {config.name}: {config.nodes} hospitals, {config.protocol.get('name', 'braintorrent')} on a "
        f"{federation.manifest.plan.topology['name']} topology, {config.rounds} rounds -> {out}"
    )
    outcome = run_federation(federation.sites, config.rounds, config.timeout, _progress)
    summary = build_summary(config, federation, outcome, _progress)
    path = write_summary(out, summary)
    _progress(format_table(summary))
    _progress(f"summary: {path}")
    if not summary["ok"]:
        problems = [f"{n['name']} exited {n['exit_code']} ({n['state']})" for n in summary["nodes"] if n["exit_code"] != 0]
        problems += summary["log_verification"]["failures"][:3]
        click.echo("error: the federation did not complete cleanly: " + "; ".join(problems or ["timed out"]), err=True)
        sys.exit(1)


@main.command()
@click.argument("scenario_path", type=click.Path(path_type=Path))
@click.option("--repeats", type=click.IntRange(min=1, max=100), default=3, show_default=True, help="Repeats with different data seeds (mean +- std).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output directory (default: runs/NAME-compare-TIME).")
@click.option("--force", is_flag=True, help="Replace an existing comparison in --out.")
@user_errors
def compare(scenario_path: Path, repeats: int, out: Path | None, force: bool) -> None:
    """Compare Cross, Single, Mix, FedAvg, FedSGD, FedProx and BrainTorrent on SCENARIO_PATH."""
    import json

    from .compare import compare_settings, run_compare
    from .compare_report import markdown_table, write_report
    from .config import ScenarioConfig

    config = ScenarioConfig.load(scenario_path)
    compare_settings(config)  # refuse bad [compare] settings before any work
    out = out or Path("runs") / f"{config.name}-compare-{time.strftime('%Y%m%d-%H%M%S')}"
    if (out / "compare.json").exists() and not force:
        raise ConfigError(f"--out {out}: already holds a comparison; choose another directory or pass --force")
    if force:
        for child in out.glob("repeat-*"):
            shutil.rmtree(child)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "scenario.toml", config.source.encode())
    results = run_compare(config, repeats, out, _progress)
    write_atomic(out / "compare.json", (json.dumps(results, indent=2) + "\n").encode())
    paths = write_report(results, out)
    _progress(markdown_table(results))
    _progress("wrote " + ", ".join(str(p) for p in [out / "compare.json", *paths.values()]))


def _prepare_out(out: Path, force: bool) -> None:
    if (out / "sites").exists() or (out / "summary.json").exists():
        if not force:
            raise ConfigError(f"--out {out}: already holds a run; choose another directory or pass --force to replace it")
        shutil.rmtree(out / "sites", ignore_errors=True)
        (out / "summary.json").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def entry() -> None:
    run_cli(main)
