"""The one module that imports matplotlib: figures for the reports, drawn off-screen (Agg).

matplotlib is the optional extra `report`. Without it `pyplot()` raises `PlotsUnavailable`,
whose message is the one line a command prints before going on without its plots; the
tables, CSV, JSON and Markdown do not depend on it.

    with figure((6.5, 4.5)) as (fig, ax):
        ax.plot(...)
        legend(ax)
        return save_png(fig, path)
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from swarm.atomic import write_atomic

MISSING = 'plots skipped: matplotlib is not installed (pip install -e ".[report]")'


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed; str() is the line to print."""

    def __init__(self) -> None:
        super().__init__(MISSING)


def pyplot() -> Any:
    """matplotlib.pyplot with the Agg backend (no display needed)."""
    try:
        import matplotlib
    except ModuleNotFoundError as exc:
        if exc.name != "matplotlib":  # matplotlib is there but broken: keep the traceback
            raise
        raise PlotsUnavailable() from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def figure(size: tuple[float, float]) -> Iterator[tuple[Any, Any]]:
    """A figure with one axes, closed on leaving (pyplot keeps every open figure alive)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=size)
    try:
        yield fig, ax
    finally:
        plt.close(fig)


@contextmanager
def panels(count: int, columns: int, panel_size: tuple[float, float]) -> Iterator[tuple[Any, list[Any]]]:
    """A figure of `count` panels sharing the y axis, `columns` to a line; yields the figure
    and the panels in reading order. The unused places of the last line are left blank."""
    plt = pyplot()
    lines = max(1, math.ceil(count / columns))
    fig, grid = plt.subplots(lines, columns, figsize=(panel_size[0] * columns, panel_size[1] * lines), squeeze=False, sharey=True)
    axes = [ax for line in grid for ax in line]
    for ax in axes[count:]:
        ax.axis("off")
    try:
        yield fig, axes[:count]
    finally:
        plt.close(fig)


def colours(names: Iterable[str]) -> dict[str, Any]:
    """One colour per distinct name, in order: the same name gets the same colour in every
    panel of a figure."""
    distinct = list(dict.fromkeys(names))
    cmap = pyplot().get_cmap("tab10" if len(distinct) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(distinct)}


def legend(ax: Any, **options: Any) -> None:
    """A legend of the labelled artists, small and frameless; none when nothing is labelled
    (an empty legend draws a box and makes matplotlib warn)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**({"fontsize": "small", "frameon": False} | options))


def integer_ticks(axis: Any) -> None:
    """Ticks at whole numbers only (rounds)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def save_png(fig: Any, path: Path) -> Path:
    """Write `fig` to `path` as a PNG (atomically, creating the directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    write_atomic(path, buffer.getvalue())
    return path

