"""`swarm-scenario`: run whole federations on this machine."""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click

from nodes.cli import run_cli, user_errors
from swarm.atomic import write_atomic
from swarm.config import Table, setting
from swarm.errors import ConfigError


class _Option(Table):
    """A command-line option the scenario takes as it is: a bad value is a ConfigError naming
    the flag, as with --nodes and --rounds (ScenarioConfig.with_overrides). The scenario's own
    bounds apply when it takes the value."""

    nodes_per_worker: int = setting(ge=1, le=2**62, example=1)


def _topology_option(text: str | None) -> str | dict | None:
    """--topology "NAME [key=value ...]": a name alone keeps the file's parameters when the
    name is unchanged; with parameters, exactly those."""
    if text is None or " " not in text.strip():
        return text
    from .topology_report import parse_params

    name, *pairs = text.split()
    return {"name": name, **parse_params(pairs)}


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
@click.option("--nodes", type=int, default=None, help="Override [scenario] nodes.")
@click.option("--topology", default=None, help='Override [topology]: a name (its other settings are kept only if the name is unchanged) or "NAME key=value ...", e.g. "random-regular degree=4".')
@click.option("--protocol", default=None, help="Override [protocol] name: braintorrent, gossip, dpsgd or epidemic.")
@click.option("--rounds", type=int, default=None, help="Override [plan] rounds.")
@click.option("--nodes-per-worker", type=int, default=None, help="Nodes packed into each worker process (default: from node and core counts).")
@click.option("--backend", type=click.Choice(["local", "ray"]), default=None, help="Run worker processes here (local) or on a Ray cluster (needs the ray extra).")
@click.option("--insecure", is_flag=True, help="DEBUGGING ONLY: the nodes run without CurveZMQ (plaintext, no allow-list).")
@click.option("--data-path", type=click.Path(path_type=Path), default=None, help="Override [data] path: a data file on this disk (e.g. a MedMNIST .npz).")
@click.option("--threads", type=click.IntRange(min=1, max=256), default=1, show_default=True, help="Torch threads of this process (baselines); each node uses its site's [node] threads.")
@user_errors
def run(scenario_path: Path, out: Path | None, force: bool, nodes: int | None, topology: str | None, protocol: str | None,
        rounds: int | None, nodes_per_worker: int | None, backend: str | None, insecure: bool, data_path: Path | None,
        threads: int) -> None:
    """Run SCENARIO_PATH: real `swarm-node` processes (several nodes per worker process for
    large federations) talking ZeroMQ over TCP."""
    from .config import ScenarioConfig
    from .report import format_table
    from .run import run_scenario

    import torch

    torch.set_num_threads(threads)
    config = ScenarioConfig.load(scenario_path, data_path).with_overrides(nodes=nodes, topology=_topology_option(topology), protocol=protocol, rounds=rounds)
    if nodes_per_worker is not None:
        config = config.replace(nodes_per_worker=_Option.from_dict({"nodes_per_worker": nodes_per_worker}, "--nodes-per-worker").nodes_per_worker)
    if backend is not None:
        config = config.replace(backend=backend)
    if insecure:
        config = config.replace(insecure=True)
    config.check_data()
    out = out or Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    with _sigterm_as_interrupt():
        summary = run_scenario(config, out, _progress, force=force)
    if summary.get("interrupted"):
        click.echo(f"interrupted: the nodes were stopped and keep their state; partial summary (no baselines) at {out / 'summary.json'}", err=True)
        sys.exit(130)
    _progress(format_table(summary))
    _progress(f"summary: {out / 'summary.json'}")
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
@click.option("--topology", default=None, help='Override [topology] for the swarm: a name (its other settings are kept only if the name is unchanged) or "NAME key=value ...", e.g. "random-regular degree=4".')
@click.option("--protocol", default=None, help="Override [protocol] name for the swarm: braintorrent, gossip, dpsgd or epidemic.")
@click.option("--nodes", type=int, default=None, help="Override [scenario] nodes (hospitals).")
@click.option("--data-path", type=click.Path(path_type=Path), default=None, help="Override [data] path: a data file on this disk (e.g. a MedMNIST .npz).")
@click.option("--threads", type=click.IntRange(min=1, max=256), default=1, show_default=True, help="Torch threads of each baseline process (the nodes use one each).")
@user_errors
def compare(scenario_path: Path, repeats: int, out: Path | None, force: bool, topology: str | None, protocol: str | None,
            nodes: int | None, data_path: Path | None, threads: int) -> None:
    """Compare the majority-class floor, Cross, Single, Mix, FedAvg, FedSGD, FedProx and the
    scenario's swarm protocol on SCENARIO_PATH, every model scored on the same held-out set."""
    import json

    from .compare import compare_settings, run_compare
    from .compare_report import markdown_table, write_report
    from .config import ScenarioConfig

    config = ScenarioConfig.load(scenario_path, data_path).with_overrides(nodes=nodes, topology=_topology_option(topology), protocol=protocol)
    compare_settings(config)  # refuse bad [compare] settings and data before any work
    config.check_data()
    out = out or Path("runs") / f"{config.name}-compare-{time.strftime('%Y%m%d-%H%M%S')}"
    if (out / "compare.json").exists() and not force:
        raise ConfigError(f"--out {out}: already holds a comparison; choose another directory or pass --force")
    if force:
        for child in out.glob("repeat-*"):
            shutil.rmtree(child)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "scenario.toml", config.source.encode())
    with _sigterm_as_interrupt():
        results = run_compare(config, repeats, out, _progress, threads=threads)
    write_atomic(out / "compare.json", (json.dumps(results, indent=2) + "\n").encode())
    if results.get("incomplete"):
        click.echo(f"interrupted: {out / 'compare.json'} holds the runs that finished ({results['runs_completed']}), marked incomplete", err=True)
        sys.exit(130)
    paths = write_report(results, out)
    _progress(markdown_table(results))
    _progress("wrote " + ", ".join(str(p) for p in [out / "compare.json", *paths.values()]))


@main.command("scale-bench")
@click.argument("scenario_path", type=click.Path(path_type=Path))
@click.option("--nodes", "counts", default="16,32,64,128", show_default=True, help="Comma-separated node counts to run.")
@click.option("--rounds", type=int, default=None, help="Override [plan] rounds.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Keep each run here (default: a temporary directory).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@user_errors
def scale_bench(scenario_path: Path, counts: str, rounds: int | None, out: Path | None, as_json: bool) -> None:
    """Run SCENARIO_PATH at each node count; print peak memory of the whole process tree,
    memory per node and round time."""
    import json

    from .config import ScenarioConfig
    from .scale_bench import run_scale_bench

    try:
        node_counts = [int(c) for c in counts.split(",") if c.strip()]
    except ValueError:
        raise ConfigError(f"--nodes: expected comma-separated integers such as 16,32,64, got {counts!r}") from None
    config = ScenarioConfig.load(scenario_path).with_overrides(rounds=rounds)
    rows = run_scale_bench(config, node_counts, (lambda line: None) if as_json else _progress, out)
    if as_json:
        click.echo(json.dumps(rows, indent=2))


@main.command("fault-bench")
@click.argument("scenario_path", type=click.Path(path_type=Path), default=Path("scenarios/quickstart.toml"))
@click.option("--neighbours", "counts", default="3,8", show_default=True, help="Comma-separated neighbour counts (a complete graph of k + 1 sites each).")
@click.option("--rounds", type=int, default=60, show_default=True, help="Override [plan] rounds (enough that the healthy sites still run when the killed one is back).")
@click.option("--down", type=float, default=5.0, show_default=True, help="Seconds the killed site stays down before it is restarted.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Keep each run here (default: a temporary directory).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@user_errors
def fault_bench(scenario_path: Path, counts: str, rounds: int, down: float, out: Path | None, as_json: bool) -> None:
    """What one silent neighbour costs: healthy sites' median round time with one of k
    neighbours dead from the start or killed mid-run (against no fault), and the rounds
    until a restarted site is merged again. One process per site."""
    import json

    from .config import ScenarioConfig
    from .fault_bench import run_fault_bench

    try:
        neighbour_counts = [int(c) for c in counts.split(",") if c.strip()]
    except ValueError:
        raise ConfigError(f"--neighbours: expected comma-separated integers such as 3,8, got {counts!r}") from None
    if not neighbour_counts or min(neighbour_counts) < 2:
        raise ConfigError(f"--neighbours: each count must be at least 2 (one dead, one healthy), got {counts!r}")
    if down <= 0:
        raise ConfigError(f"--down: must be a positive number of seconds, got {down}")
    config = ScenarioConfig.load(scenario_path).with_overrides(rounds=rounds)
    rows = run_fault_bench(config, neighbour_counts, down, (lambda line: None) if as_json else _progress, out)
    if as_json:
        click.echo(json.dumps(rows, indent=2))


@main.command()
@click.argument("sweep_path", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output directory (default: runs/SWEEP); an unfinished sweep there resumes.")
@click.option("--force", is_flag=True, help="Discard the cells, results and plots already in --out and start over.")
@user_errors
def sweep(sweep_path: Path, out: Path | None, force: bool) -> None:
    """Run the grid topology x protocol x nodes x seed of SWEEP_PATH, one real federation per
    cell; write results.csv (a row per cell) and plots/*.png. Finished cells are not rerun."""
    from .sweep import load_sweep, run_sweep
    from .sweep_report import format_table

    grid = load_sweep(sweep_path)  # every cell validated before the first one runs
    # A fixed default (no timestamp), so running the same command again resumes the sweep.
    out = out or Path("runs") / grid.path.stem
    try:
        with _sigterm_as_interrupt():
            rows = run_sweep(grid, out, _progress, force=force)
    except KeyboardInterrupt:
        click.echo(f"interrupted: finished cells and {out / 'results.csv'} are kept; run the same command again to resume", err=True)
        sys.exit(130)
    _progress(format_table(rows))
    failed = [row["cell"] for row in rows if not row["ok"]]
    if failed:
        click.echo(f"error: {len(failed)} of {len(rows)} cells did not complete cleanly: {', '.join(failed[:5])}"
                   f"{' ...' if len(failed) > 5 else ''}; see their summary.json under {out / 'cells'} "
                   "(delete a cell's directory to run it again)", err=True)
        sys.exit(1)


@main.command("attack-study")
@click.argument("study_path", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output directory (default: runs/STUDY); an unfinished study there resumes.")
@click.option("--force", is_flag=True, help="Discard the cells and results already in --out and start over.")
@user_errors
def attack_study(study_path: Path, out: Path | None, force: bool) -> None:
    """Run attack x defence x Byzantine share (plus a no-attack run per defence) of
    STUDY_PATH, one real federation per cell; write study.md (the table), results.csv and
    plots/attack-study.png. Finished cells are not rerun."""
    from .attack_report import StudyReport, markdown, with_baselines
    from .attack_study import load_study
    from .sweep import run_sweep

    study = load_study(study_path)
    out = out or Path("runs") / study.path.stem
    rows = run_sweep(study, out, _progress, force=force, report=StudyReport())
    _progress(markdown(with_baselines(rows)))
    failed = [row["cell"] for row in rows if not row["ok"]]
    if failed:
        click.echo(f"error: {len(failed)} of {len(rows)} cells did not complete cleanly: {', '.join(failed[:5])}"
                   f"{' ...' if len(failed) > 5 else ''}; see their summary.json under {out / 'cells'}", err=True)
        sys.exit(1)


@main.command()
@click.argument("name")
@click.argument("params", nargs=-1)
@click.option("--nodes", type=click.IntRange(min=2), required=True, help="Number of members.")
@click.option("--seed", type=int, default=None, help="Seed of a random topology (default: its `seed` parameter, else 0).")
@click.option("--rounds", type=click.IntRange(min=1), default=100, show_default=True, help="Rounds of a time-varying topology (its default period).")
@click.option("--json", "as_json", is_flag=True, help="Print the stats as JSON.")
@user_errors
def topology(name: str, params: tuple[str, ...], nodes: int, seed: int | None, rounds: int, as_json: bool) -> None:
    """Stats of topology NAME with PARAMS (key=value, e.g. `torus rows=4` or `random-s-out s=2`):
    edges, degrees, diameter and Metropolis-Hastings spectral gap."""
    from .topology_report import format_report, parse_params, topology_report

    click.echo(format_report(topology_report(name, parse_params(params), nodes, rounds, seed), as_json))


def entry() -> None:
    run_cli(main)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a service manager, `kill`) stops a run the way Ctrl-C does."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
