"""`swarm-dev`: the developer tools' commands. `swarm-node` offers the same command
objects as `swarm-node bench` and `swarm-node fuzz` where this package is installed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from nodes.cli import run_cli, user_errors


def entry() -> None:
    run_cli(main)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Developer tools for the swarm: the model-exchange benchmark and the fuzzer."""


@main.command()
@click.option("--size-mb", type=click.FloatRange(min=0.001, max=4096), default=100.0, show_default=True, help="Model size in MiB.")
@click.option("--repeats", type=click.IntRange(min=1, max=100), default=5, show_default=True, help="Timed transfers per path.")
@click.option("--chunk-mib", type=click.IntRange(min=1, max=64), default=4, show_default=True, help="Chunk size in MiB, as site.toml [transfer] chunk_mib.")
@click.option("--window", type=click.IntRange(min=1, max=64), default=4, show_default=True, help="Chunk requests outstanding, as site.toml [transfer] window.")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Also cut a transfer after half its chunks and resume it.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (ratio_vs_raw_zmq, peak_rss_bytes per side, model_bytes, resume).")
@user_errors
def bench(size_mb: float, repeats: int, chunk_mib: int, window: int, resume: bool, as_json: bool) -> None:
    """Time a model exchange (snapshot, digest, sign, offer, chunked pull, verification) between
    two processes on loopback against raw pyzmq with the same bytes; peak memory per side."""
    from .bench import format_bench, run_bench

    result = run_bench(size_mb=size_mb, repeats=repeats, chunk_mib=chunk_mib, window=window, resume=resume)
    click.echo(json.dumps(result, indent=2) if as_json else format_bench(result))


@main.command()
@click.option("--seconds", type=click.FloatRange(min=0.1), default=60.0, show_default=True, help="Total run time, shared equally by the targets.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random generator (one stream per target).")
@click.option("--crashes", "crashes_dir", type=click.Path(path_type=Path), default=Path("fuzz-crashes"), show_default=True, help="Where crashing inputs are saved.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@user_errors
def fuzz(seconds: float, seed: int, crashes_dir: Path, as_json: bool) -> None:
    """Feed mutated and random input to the wire decoder, the log reader, the entry opener
    and the chain check. Exit 1 if any input raised anything but the documented refusal."""
    from .fuzz import format_fuzz, run_fuzz

    result = run_fuzz(seconds=seconds, seed=seed, crashes_dir=crashes_dir)
    click.echo(json.dumps(result, indent=2) if as_json else format_fuzz(result))
    if result["crashes"]:
        sys.exit(1)
