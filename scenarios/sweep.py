"""`swarm-scenario sweep`: one scenario run over the grid topology x protocol x N x seed.

    [sweep]
    scenario = "quickstart"            # a path relative to this file, or a name in scenarios/
    topologies = ["ring", {name = "random-regular", degree = 4}]
    protocols = ["dpsgd"]              # default: the scenario's own [protocol]
    nodes = [16]                       # default: the scenario's node count
    seeds = [0, 1]                     # data and topology seed of each repeat (default [0])
    rounds = 15                        # optional override of [plan] rounds
    timeout = 600                      # optional override of [scenario] timeout (seconds)
    target_accuracy = 0.8              # for rounds/bytes/time to target
    baselines = false                  # local-only and pooled baselines in every cell

    [training]                         # optional: merged key by key into the scenario's
    epochs = 4                         # [training] (likewise [model] and [data]), every cell

Each cell is a whole multi-process federation in OUT/cells/<cell>/ (a run directory as
written by `swarm-scenario run`). A cell is finished once its summary.json exists, so a
sweep that was interrupted resumes where it stopped; OUT/sweep.json records every cell's
configuration so that a different grid is never mixed into the same directory (a new
target_accuracy is fine: it only changes the table, which is recomputed from each cell's
series.json). OUT/results.csv and OUT/plots/ are described in scenarios.sweep_report.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import model_validator

from swarm.atomic import write_atomic
from swarm.config import Table, invalid_value, read_toml, refuse, setting
from swarm.errors import ConfigError

from .config import ROUNDS, TIMEOUT, ScenarioConfig, Section, Sections
from .plots import PlotsUnavailable
from .run import run_scenario
from .sweep_report import cell_row, describe_row, write_plots, write_results, write_series

Progress = Callable[[str], None]
OVERRIDE_TABLES = ("training", "model", "data")  # scenario tables a sweep may adjust for all cells
SCENARIO_DIR = Path(__file__).parent
_LABEL_UNSAFE = re.compile(r"[^a-z0-9.-]+")  # "_" separates the parts of a cell id


@dataclass(frozen=True)
class Cell:
    """One point of the grid and the scenario that runs it."""

    topology: str  # label, e.g. "random-regular-degree4"
    protocol: str  # label, e.g. "dpsgd"
    nodes: int
    seed: int
    config: ScenarioConfig

    @property
    def id(self) -> str:
        return f"{self.topology}_{self.protocol}_n{self.nodes}_s{self.seed}"

    def describe(self) -> str:
        return f"{self.topology} {self.protocol} n={self.nodes} seed {self.seed}"

    def fingerprint(self) -> str:
        # What the sweep file and the scenario decide, not the whole ScenarioConfig: a field
        # added to it by a code change must not make a half-done sweep unresumable.
        config = self.config
        settings = json.dumps({
            "scenario": config.source, "topology": config.topology, "protocol": config.protocol, "nodes": config.nodes,
            "data": config.data, "training": config.training, "model": config.model, "rounds": config.rounds, "timeout": config.timeout, "baselines": [config.local_only, config.pooled],
        }, sort_keys=True, default=str)
        return hashlib.sha256(settings.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Sweep:
    path: Path
    source: str  # the sweep file's text, saved as OUT/sweep.toml
    target_accuracy: float
    cells: tuple[Cell, ...]


Entry = str | dict[str, Any]  # a topology, protocol, attack or defence: its name, or a table with its name and parameters


class SweepFile(Sections):
    sweep: Section = {}
    training: Section = {}  # merged key by key into the scenario's own table (OVERRIDE_TABLES)
    model: Section = {}
    data: Section = {}


class SweepTable(Table):
    """The [sweep] table: the scenario and the grid."""

    TABLE: ClassVar[str] = "sweep"
    scenario: str = setting(example="quickstart")  # a path relative to the sweep file, or a name in scenarios/
    topologies: list[Entry]  # names stay names: the scenario's own parameters are kept where it already uses that one
    protocols: list[Entry] | None = None  # None: the scenario's own
    nodes: list[int] | None = None  # None: the scenario's node count
    seeds: list[int] = [0]
    rounds: int | None = setting(None, **ROUNDS, example=15)  # None: the scenario's
    timeout: float | None = setting(None, **TIMEOUT, example=600.0)  # None: the scenario's
    target_accuracy: float = setting(ge=0.0, le=1.0, example=0.8)
    baselines: bool = False

    @model_validator(mode="before")
    @classmethod
    def _grid(cls, values: Any) -> Any:
        # The axes' messages name the entry and give TOML examples, which their types cannot say.
        if isinstance(values, dict):
            _entries(values, "topologies", "ring", required=True)
            _entries(values, "protocols", "dpsgd", required=False)
            _integers(values, "nodes", minimum=2, example=16)
            _integers(values, "seeds", minimum=0, example=0)
        return values


def load_sweep(path: Path) -> Sweep:
    """Read and validate a sweep file, including every cell's scenario, before anything runs."""
    path = Path(path)
    tables = SweepFile.from_dict(read_toml(path, "sweep"), str(path))
    sweep = SweepTable.from_dict(tables.sweep, "sweep")
    base = ScenarioConfig.load(_scenario_path(path, sweep.scenario))
    if {"site", "sites"} & set(tables.data):
        raise ConfigError("data.sites/data.site: set from the sweep's nodes; remove them from the sweep file")
    # Validated with every cell below (with_overrides checks the whole plan).
    base = base.replace(**{name: getattr(base, name) | getattr(tables, name) for name in OVERRIDE_TABLES if name in tables.model_fields_set})
    if not sweep.baselines:
        # The baselines do not depend on topology or protocol: computing them per cell is waste.
        base = base.replace(local_only=False, pooled=False)
    if sweep.timeout is not None:
        base = base.replace(timeout=sweep.timeout)
    protocols = sweep.protocols if sweep.protocols is not None else [base.protocol.get("name", "braintorrent")]
    node_counts = sweep.nodes if sweep.nodes is not None else [base.nodes]
    cells = []
    for topology in sweep.topologies:
        for protocol in protocols:
            for nodes in node_counts:
                for seed in sweep.seeds:
                    cells.append(_cell(base, topology, protocol, nodes, seed, sweep.rounds))
    _check_unique(cells)
    return Sweep(path=path, source=path.read_text(), target_accuracy=sweep.target_accuracy, cells=tuple(cells))


def _scenario_path(sweep_path: Path, scenario: str) -> Path:
    beside = sweep_path.parent / scenario
    candidates = [beside, beside.with_name(beside.name + ".toml")]
    if "/" not in scenario:
        candidates += [SCENARIO_DIR / scenario, SCENARIO_DIR / f"{scenario}.toml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"sweep.scenario: no scenario file {scenario!r} beside {sweep_path} or in {SCENARIO_DIR}; "
        f'give a path relative to the sweep file or a scenario name (example: scenario = "quickstart")'
    )


def _entries(sweep: dict[str, Any], key: str, example: str, *, required: bool) -> None:
    """A list of names or tables with a `name` (topologies, protocols)."""
    if key not in sweep:
        if required:
            raise refuse(key, f'missing; add e.g. {key} = ["{example}"]')
        return
    values = sweep[key]
    if not isinstance(values, list) or not values:
        raise refuse(key, f'must be a non-empty list of names or tables, got {values!r} (example: {key} = ["{example}", {{name = "{example}"}}])')
    for index, value in enumerate(values):
        name = value if isinstance(value, str) else value.get("name") if isinstance(value, dict) else None
        if not isinstance(name, str) or not name:
            raise refuse(f"{key}[{index}]", f'must be a name or a table with a name, got {value!r} (example: {{name = "{example}"}})')


def _integers(sweep: dict[str, Any], key: str, minimum: int, example: int) -> None:
    if key not in sweep:
        return
    values = sweep[key]
    if not isinstance(values, list) or not values:
        raise invalid_value(key, "a non-empty list of integers", values, [example])
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise refuse(f"{key}[{index}]", f"must be an integer >= {minimum}, got {value!r} (example: {key} = [{example}])")


def label(entry: str | dict[str, Any]) -> str:
    """A file-name-safe label of a topology or protocol entry: its name, then its parameters
    (sorted; the seed is a grid axis of its own), e.g. "random-regular-degree4"."""
    if isinstance(entry, str):
        entry = {"name": entry}
    parts = [entry["name"]] + [f"{key}{entry[key]}" for key in sorted(entry) if key not in ("name", "seed")]
    return "-".join(_LABEL_UNSAFE.sub("", str(part).lower()) or "x" for part in parts)


def _cell(base: ScenarioConfig, topology: str | dict[str, Any], protocol: str | dict[str, Any], nodes: int, seed: int, rounds: int | None) -> Cell:
    topology_label, protocol_label = label(topology), label(protocol)
    cell_id = f"{topology_label}_{protocol_label}_n{nodes}_s{seed}"
    try:
        config = base.with_overrides(nodes=nodes, topology=topology, protocol=protocol, rounds=rounds, seed=seed, name=cell_id)
    except ConfigError as error:
        raise ConfigError(f"sweep cell {cell_id}: {error}") from None
    return Cell(topology_label, protocol_label, nodes, seed, config)


def _check_unique(cells: list[Cell]) -> None:
    seen: set[str] = set()
    for cell in cells:
        if cell.id in seen:
            raise ConfigError(f"sweep: cell {cell.id} appears twice; list each topology, protocol, node count and seed once")
        seen.add(cell.id)


# ---------------------------------------------------------------------------------------------
# Output directory


def cell_dir(out: Path, cell: Cell) -> Path:
    return out / "cells" / cell.id


def is_finished(out: Path, cell: Cell) -> bool:
    return (cell_dir(out, cell) / "summary.json").is_file()


def prepare_sweep_out(sweep: Any, out: Path, force: bool) -> None:
    """Make `out` hold this sweep: new, or resumed only when it was made from the same grid."""
    record = out / "sweep.json"
    if force:
        for name in ("cells", "plots"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("sweep.json", "sweep.toml", "results.csv"):
            (out / name).unlink(missing_ok=True)
    elif record.is_file():
        _check_same_grid(sweep, out, json.loads(record.read_text()).get("cells", {}))
    elif out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: not empty and not a sweep directory (no sweep.json); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "sweep.toml", sweep.source.encode())
    cells = {cell.id: cell.fingerprint() for cell in sweep.cells}
    write_atomic(record, (json.dumps({"cells": cells}, indent=2) + "\n").encode())


def _check_same_grid(sweep: Any, out: Path, recorded: dict[str, str]) -> None:
    cells = {cell.id: cell.fingerprint() for cell in sweep.cells}
    if cells == recorded:
        return
    added = sorted(set(cells) - set(recorded))
    removed = sorted(set(recorded) - set(cells))
    changed = sorted(c for c in set(cells) & set(recorded) if cells[c] != recorded[c])
    what = "; ".join(f"{name}: {', '.join(ids[:3])}{' ...' if len(ids) > 3 else ''}"
                     for name, ids in (("new cells", added), ("cells gone", removed), ("cells with other settings", changed)) if ids)
    raise ConfigError(f"--out {out}: holds a sweep of a different grid ({what}); choose another --out or pass --force to start over")


# ---------------------------------------------------------------------------------------------
# Running


class SweepReport:
    """What a sweep writes: one CSV row per cell, the table after every cell, plots at the end.
    Other grids of scenario runs (scenarios.attack_study) bring their own."""

    def __init__(self, target_accuracy: float) -> None:
        self.target_accuracy = target_accuracy

    def row(self, cell: Any, directory: Path) -> dict[str, Any]:
        return cell_row(cell, directory, self.target_accuracy)

    def describe(self, row: dict[str, Any]) -> str:
        return describe_row(row)

    def write(self, out: Path, rows: list[dict[str, Any]]) -> Path:
        return write_results(out, rows)

    def finish(self, out: Path, rows: list[dict[str, Any]]) -> list[Path]:
        return write_plots(out, rows)


def run_sweep(sweep: Any, out: Path, progress: Progress, *, force: bool = False, report: Any = None) -> list[dict[str, Any]]:
    """Run every unfinished cell, rewrite the results table after each, then draw the plots.
    `sweep` has a path, a source and cells (each with id, describe(), fingerprint() and a
    config); `report` defaults to SweepReport. Returns the rows in grid order."""
    report = report or SweepReport(sweep.target_accuracy)
    prepare_sweep_out(sweep, out, force)
    total = len(sweep.cells)
    left = sum(1 for cell in sweep.cells if not is_finished(out, cell))
    done_before = f" ({total - left} finished before, {left} to run)" if left < total else ""
    progress(f"sweep {sweep.path.name}: {total} cells{done_before} -> {out}")
    rows: list[dict[str, Any]] = []
    run_seconds: list[float] = []
    for index, cell in enumerate(sweep.cells, start=1):
        directory = cell_dir(out, cell)
        header = f"cell {index}/{total} {cell.describe()}"
        ran = not is_finished(out, cell)
        if ran:
            eta = f", about {_duration(left * sum(run_seconds) / len(run_seconds))} left in the sweep" if run_seconds else ""
            progress(f"{header}: running{eta}")
            started = time.monotonic()
            with _noting_interrupts() as interrupted:
                try:
                    # force: clear whatever an interrupted earlier attempt left in this cell
                    summary = run_scenario(cell.config, directory, lambda line: progress(f"    {line}"), force=True)
                    if summary.get("interrupted"):  # SIGTERM, which the runner caught itself
                        interrupted.set()
                except KeyboardInterrupt:
                    interrupted.set()
            if interrupted.is_set():
                # The runner stops the nodes and still writes a summary: drop it, so that
                # this cell is not taken for finished when the sweep resumes.
                (directory / "summary.json").unlink(missing_ok=True)
                progress(f"{header}: interrupted; run the same command again to resume from this cell")
                raise KeyboardInterrupt
            run_seconds.append(time.monotonic() - started)
            left -= 1
        else:
            progress(f"{header}: skipped (finished before)")
        if ran or not (directory / "series.json").is_file():
            write_series(directory)
        rows.append(report.row(cell, directory))
        written = report.write(out, rows)  # after every cell, so an interrupted sweep keeps its table
        if ran:
            progress(f"{header}: {report.describe(rows[-1])}")
    try:
        paths = report.finish(out, rows)
    except PlotsUnavailable as missing:  # the table is written; only the plots need matplotlib
        progress(str(missing))
        paths = []
    progress("wrote " + ", ".join(str(p) for p in [written, *paths]))
    return rows


@contextmanager
def _noting_interrupts() -> Iterator[threading.Event]:
    """An event set by Ctrl-C, which still interrupts as usual: the runner catches the
    KeyboardInterrupt itself, so the sweep could not tell it from a timeout otherwise."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield interrupted
        return

    def note(signum: int, frame: object) -> None:
        interrupted.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, note)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"
