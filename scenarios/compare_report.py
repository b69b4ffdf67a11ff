"""The report of `swarm-scenario compare`: a Markdown table like Table II of the Guan et al.
survey, a CSV and two PNG plots, written from the results dict that the runner also saves as
`compare.json`.

    paths = write_report(results, Path("out"))
    paths["markdown"], paths["csv"], paths["rounds_plot"], paths["sites_plot"]
    markdown_table(results)   # the main table alone, for the README

The results dict (everything else in it is ignored):

    {"scenario": str, "repeats": int, "task": "classification" | "segmentation",
     "metrics": ["accuracy", ...], "primary_metric": "accuracy" | "dice",
     "methods": {METHOD: {"overall": {METRIC: {"mean": x, "std": y}},
                          "sites": {SITE: {METRIC: {"mean": x, "std": y}}},
                          "history": [{"round": r, METRIC: {"mean": x, "std": y}}, ...],
                          "label": "FedAvg (simulated server)"}}}

Methods are listed in the order cross, single, mix, fedavg, fedsgd, fedprox, braintorrent
(those present), then any other method in the order of the dict. In the Markdown table and
the plots metrics are percentages (survey style, one decimal); the CSV keeps the raw values.
A NaN, None or missing value is "n/a" in Markdown, an empty cell in the CSV and no point in
the plots. All metrics are "higher is better", so the best mean of each column is in bold.

Only this module's plotting functions import matplotlib (lazily, Agg backend).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from swarm.atomic import write_atomic

__all__ = [
    "METHOD_ORDER", "SIMULATED_SERVER", "write_report", "markdown_table", "site_table",
    "markdown_report", "csv_text", "plot_rounds", "plot_sites", "ordered_methods",
]

METHOD_ORDER = ("cross", "single", "mix", "fedavg", "fedsgd", "fedprox", "braintorrent")
SIMULATED_SERVER = ("fedavg", "fedsgd", "fedprox")
_BASELINES_WITHOUT_FEDERATION = ("cross", "single", "mix")
_DISPLAY = {"cross": "Cross", "single": "Single", "mix": "Mix", "fedavg": "FedAvg",
            "fedsgd": "FedSGD", "fedprox": "FedProx", "braintorrent": "BrainTorrent"}
_ABBREVIATIONS = {"accuracy": "ACC", "sensitivity": "SEN", "specificity": "SPE", "auc": "AUC",
                  "dice": "Dice", "pixel_accuracy": "PixAcc"}
_LONG_NAMES = {"accuracy": "Accuracy", "sensitivity": "Sensitivity", "specificity": "Specificity",
               "auc": "AUC", "dice": "Dice", "pixel_accuracy": "Pixel accuracy"}
_TASK_METRICS = {"classification": ["accuracy", "sensitivity", "specificity", "auc"],
                 "segmentation": ["dice", "pixel_accuracy"]}
NA = "n/a"


# ---------------------------------------------------------------------------------------------
# Reading the results dict


def _number(value: Any) -> float:
    """A finite float, or NaN for NaN, None, infinities, strings and anything missing."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    value = float(value)
    return value if math.isfinite(value) else math.nan


def _stat(entry: Any) -> tuple[float, float]:
    """(mean, std) of a {"mean": x, "std": y} entry; a bare number counts as a mean."""
    if isinstance(entry, Mapping):
        return _number(entry.get("mean")), _number(entry.get("std"))
    return _number(entry), math.nan


def ordered_methods(results: Mapping[str, Any]) -> list[str]:
    """The method names of `results`, known ones in METHOD_ORDER, then the others as given."""
    methods = results.get("methods") or {}
    return [m for m in METHOD_ORDER if m in methods] + [m for m in methods if m not in METHOD_ORDER]


def _metrics(results: Mapping[str, Any]) -> list[str]:
    metrics = list(results.get("metrics") or [])
    if metrics:
        return metrics
    if results.get("task") in _TASK_METRICS:
        return list(_TASK_METRICS[results["task"]])
    seen: list[str] = []
    for method in (results.get("methods") or {}).values():
        seen += [m for m in (method.get("overall") or {}) if m not in seen]
    return seen


def _primary(results: Mapping[str, Any]) -> str:
    primary = results.get("primary_metric")
    if primary:
        return primary
    metrics = _metrics(results)
    return metrics[0] if metrics else "accuracy"


def _sites(results: Mapping[str, Any]) -> list[str]:
    """Every site named by any method, in order of first appearance."""
    seen: list[str] = []
    for name in ordered_methods(results):
        seen += [s for s in (results["methods"][name].get("sites") or {}) if s not in seen]
    return seen


def _display(name: str) -> str:
    return _DISPLAY.get(name, name)


def _label(results: Mapping[str, Any], name: str) -> str:
    return str(results["methods"][name].get("label") or _display(name))


def _abbreviation(metric: str) -> str:
    return _ABBREVIATIONS.get(metric, metric)


def _long_name(metric: str) -> str:
    return _LONG_NAMES.get(metric, metric.replace("_", " ").capitalize())


def _history(method: Mapping[str, Any], metric: str) -> list[tuple[float, float, float]]:
    """(round, mean, std) for every history entry whose mean of `metric` is a number."""
    points = []
    for index, entry in enumerate(method.get("history") or []):
        if not isinstance(entry, Mapping):
            continue
        mean, std = _stat(entry.get(metric))
        round_ = _number(entry.get("round"))
        if math.isnan(round_):
            round_ = float(index + 1)
        if not math.isnan(mean):
            points.append((round_, mean, std))
    return sorted(points)


# ---------------------------------------------------------------------------------------------
# Markdown


def _percent(value: float) -> str:
    return NA if math.isnan(value) else f"{100.0 * value:.1f}"


def _cell(mean: float, std: float, best: bool) -> str:
    if math.isnan(mean):
        return NA
    text = f"{_percent(mean)} ± {_percent(std)}"
    return f"**{text}**" if best else text


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[str], columns: Sequence[Sequence[tuple[float, float]]]) -> str:
    """A Markdown table: one row label per row, one column of (mean, std) per header entry
    after the first; the best mean of each column (all of them if tied) in bold."""
    best = []
    for column in columns:
        # compare the values as printed, so that two cells that read the same are both bold
        means = [round(100.0 * m, 1) for m, _ in column if not math.isnan(m)]
        best.append(max(means) if means else None)
    lines = ["| " + " | ".join(_escape(h) for h in header) + " |",
             "|" + "|".join([":---"] + [":---:"] * len(columns)) + "|"]
    for r, row in enumerate(rows):
        cells = [_escape(row)]
        for c, column in enumerate(columns):
            mean, std = column[r]
            cells.append(_cell(mean, std, best[c] is not None and not math.isnan(mean)
                               and round(100.0 * mean, 1) == best[c]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_table(results: Mapping[str, Any]) -> str:
    """The main table (survey Table II style): a row per method (its label), a column per
    metric (ACC, SEN, SPE, AUC / Dice, PixAcc), cells "mean ± std" in percent, the best mean
    of each column in bold, "n/a" where undefined."""
    methods = ordered_methods(results)
    metrics = _metrics(results)
    columns = [[_stat((results["methods"][m].get("overall") or {}).get(metric)) for m in methods]
               for metric in metrics]
    return _table(["Method"] + [_abbreviation(m) for m in metrics],
                  [_label(results, m) for m in methods], columns)


def site_table(results: Mapping[str, Any], metric: str | None = None) -> str:
    """The primary metric (or `metric`) per site: a row per method, a column per site and a
    last column "Overall"; same cell format and bold as `markdown_table`."""
    metric = metric or _primary(results)
    methods = ordered_methods(results)
    columns = []
    for site in _sites(results):
        columns.append([_stat(((results["methods"][m].get("sites") or {}).get(site) or {}).get(metric))
                        for m in methods])
    columns.append([_stat((results["methods"][m].get("overall") or {}).get(metric)) for m in methods])
    return _table(["Method"] + _sites(results) + ["Overall"], [_label(results, m) for m in methods], columns)


def _join(names: Sequence[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _server_sentence(methods: Sequence[str]) -> str:
    server = [_display(m) for m in methods if m in SIMULATED_SERVER]
    serverless = [_display(m) for m in methods
                  if m not in SIMULATED_SERVER and m not in _BASELINES_WITHOUT_FEDERATION]
    if server:
        sentence = (f"{_join(server)} {'is a baseline' if len(server) == 1 else 'are baselines'} run with a "
                    "simulated central server (the only place a server exists in this project)")
    else:
        sentence = "No simulated-server baseline (FedAvg, FedSGD, FedProx) was run"
    if serverless:
        sentence += f"; {_join(serverless)} {'runs' if len(serverless) == 1 else 'run'} serverless, as real node processes"
    return sentence + ". Cross, Single and Mix are the non-federated references of the survey (train on one site and test on the others, local only, pooled)."


def markdown_report(results: Mapping[str, Any]) -> str:
    """The whole `compare.md`: title, a note on the server baselines, the main table and the
    per-site table of the primary metric."""
    scenario = results.get("scenario") or "scenario"
    repeats = results.get("repeats")
    primary = _primary(results)
    over = (f"over {repeats} repeated random split{'s' if repeats != 1 else ''}"
            if isinstance(repeats, int) else "over the repeated random splits")
    parts = [
        f"# Comparison: {scenario}\n",
        f"{_server_sentence(ordered_methods(results))}\n",
        f"Values are mean ± std {over}, in percent; the best mean of each column is in bold; "
        f"{NA} where a metric is undefined.\n",
        markdown_table(results),
        f"## {_long_name(primary)} per site\n",
        site_table(results, primary),
    ]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# CSV


def _raw(value: float) -> str:
    return "" if math.isnan(value) else repr(value)


def csv_text(results: Mapping[str, Any]) -> str:
    """One row per (method, site or "overall", metric): method, label, site, metric, mean,
    std (raw values, not percent; an empty cell where undefined). Sites are those the method
    reports; every metric of `results["metrics"]` gets a row, defined or not."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "label", "site", "metric", "mean", "std"])
    metrics = _metrics(results)
    for name in ordered_methods(results):
        method = results["methods"][name]
        scopes = [("overall", method.get("overall") or {})]
        scopes += [(site, values or {}) for site, values in (method.get("sites") or {}).items()]
        for site, values in scopes:
            for metric in metrics:
                mean, std = _stat(values.get(metric))
                writer.writerow([name, _label(results, name), site, metric, _raw(mean), _raw(std)])
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Plots


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _colours(plt, methods: Sequence[str]) -> dict[str, Any]:
    cycle = plt.get_cmap("tab10").colors
    return {m: cycle[i % len(cycle)] for i, m in enumerate(methods)}


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    write_atomic(path, buffer.getvalue())
    return path


def plot_rounds(results: Mapping[str, Any], path: Path, metric: str | None = None) -> Path:
    """The primary metric (or `metric`, in percent) against the round: a line per method whose
    history has more than one point, shaded ±std; a method with a one-point history, or with
    no history but an overall mean, is a horizontal dashed line at that value."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    metric = metric or _primary(results)
    methods = ordered_methods(results)
    colours = _colours(plt, methods)
    fig, ax = plt.subplots(figsize=(9, 5))
    try:
        flat: list[tuple[str, float, float]] = []
        rounds: list[float] = []
        for name in methods:
            method = results["methods"][name]
            points = _history(method, metric)
            if len(points) > 1:
                x = [p[0] for p in points]
                y = [100.0 * p[1] for p in points]
                s = [0.0 if math.isnan(p[2]) else 100.0 * p[2] for p in points]
                ax.plot(x, y, marker="o", markersize=3, linewidth=1.8, color=colours[name],
                        label=_label(results, name))
                ax.fill_between(x, [a - b for a, b in zip(y, s)], [a + b for a, b in zip(y, s)],
                                color=colours[name], alpha=0.15, linewidth=0)
                rounds += x
            elif points:
                flat.append((name, points[0][1], points[0][2]))
            else:
                mean, std = _stat((method.get("overall") or {}).get(metric))
                if not math.isnan(mean):
                    flat.append((name, mean, std))
        for name, mean, std in flat:
            ax.axhline(100.0 * mean, linestyle="--", linewidth=1.5, color=colours[name],
                       label=f"{_label(results, name)} (final)")
            if not math.isnan(std) and std > 0:
                ax.axhspan(100.0 * (mean - std), 100.0 * (mean + std), color=colours[name], alpha=0.08, linewidth=0)
        if rounds:
            ax.set_xlim(min(rounds), max(rounds))
        else:
            ax.set_xlim(0, 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("Round")
        ax.set_ylabel(f"{_long_name(metric)} (%)")
        ax.set_title(f"{results.get('scenario') or 'comparison'}: {_long_name(metric).lower()} per round "
                     "(mean ± std over repeats)")
        ax.grid(True, alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            # legend in the table's order, whether a method is a line or a flat reference
            rank = {_label(results, m): i for i, m in enumerate(methods)}
            pairs = sorted(zip(handles, labels), key=lambda hl: rank.get(hl[1].removesuffix(" (final)"), len(rank)))
            ax.legend([h for h, _ in pairs], [lab for _, lab in pairs], loc="center left",
                      bbox_to_anchor=(1.01, 0.5), fontsize="small", frameon=False)
        else:
            ax.text(0.5, 0.5, "no values to plot", ha="center", va="center", transform=ax.transAxes)
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def plot_sites(results: Mapping[str, Any], path: Path, metric: str | None = None) -> Path:
    """Grouped bars of the primary metric (or `metric`, in percent): a group per site and a
    last group "Overall", a bar per method with a ±std error bar; undefined values get no bar."""
    plt = _pyplot()

    metric = metric or _primary(results)
    methods = ordered_methods(results)
    colours = _colours(plt, methods)
    groups = _sites(results) + ["Overall"]
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 + 0.35 * len(groups) * max(1, len(methods))), 5))
    try:
        for i, name in enumerate(methods):
            method = results["methods"][name]
            xs, ys, errs = [], [], []
            for g, group in enumerate(groups):
                entry = (method.get("overall") or {}) if group == "Overall" else ((method.get("sites") or {}).get(group) or {})
                mean, std = _stat(entry.get(metric))
                if math.isnan(mean):
                    continue
                xs.append(g - 0.4 + width * (i + 0.5))
                ys.append(100.0 * mean)
                errs.append(0.0 if math.isnan(std) else 100.0 * std)
            ax.bar(xs, ys, width=width, yerr=errs, capsize=2, color=colours[name],
                   label=_label(results, name), error_kw={"linewidth": 1})
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups)
        if len(groups) > 8:
            plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
        ax.axvline(len(groups) - 1.5, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("Site")
        ax.set_ylabel(f"{_long_name(metric)} (%)")
        ax.set_title(f"{results.get('scenario') or 'comparison'}: {_long_name(metric).lower()} per site "
                     "(mean ± std over repeats)")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", frameon=False)
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Everything


def write_report(results: Mapping[str, Any], out: Path) -> dict[str, Path]:
    """Write `compare.md`, `compare.csv`, `plots/<primary>_vs_round.png` and
    `plots/<primary>_per_site.png` under `out` (created if needed) and return their paths
    by name: "markdown", "csv", "rounds_plot", "sites_plot"."""
    out = Path(out)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    primary = _primary(results)
    paths = {"markdown": out / "compare.md", "csv": out / "compare.csv",
             "rounds_plot": plots / f"{primary}_vs_round.png", "sites_plot": plots / f"{primary}_per_site.png"}
    write_atomic(paths["markdown"], markdown_report(results).encode("utf-8"))
    write_atomic(paths["csv"], csv_text(results).encode("utf-8"))
    plot_rounds(results, paths["rounds_plot"], primary)
    plot_sites(results, paths["sites_plot"], primary)
    return paths
