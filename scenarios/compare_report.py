"""The report of `swarm-scenario compare`: a Markdown table like Table II of the Guan et al.
survey, a CSV and two PNG plots, written from the results dict that the runner also saves as
`compare.json`.

    paths = write_report(results, Path("out"))
    paths["markdown"], paths["csv"], paths["rounds_plot"], paths["sites_plot"]
    markdown_table(results)   # the main table alone, for the README

The results dict (everything else in it is ignored; S = {"mean": x, "std": y} over repeats):

    {"scenario": str, "repeats": int, "task": "classification" | "segmentation",
     "metrics": ["accuracy", ...], "primary_metric": "auc" | "dice",
     "methods": {METHOD: {"label": "FedAvg (simulated server)",
                          "global": {METRIC: S},                 # on the held-out set
                          "sites_mean": {METRIC: S},             # over sites' own splits
                          "sites_weighted_mean": {METRIC: S},    # ... weighted by test size
                          "undefined": {METRIC: {"per_repeat": [k, ...], "sites": [...]}},
                          "sites": {SITE: {METRIC: S}},
                          "history": [{"round": r, "global": {METRIC: S}}, ...],
                          "stability": {"largest_drop": S, "worst": x, "metric": m, "after_round": 5},
                          "cost": {"wall_seconds": S, "cpu_seconds": S, "peak_rss_mb": S, "processes": n}}}}

Methods are listed in the order majority, cross, single, mix, fedavg, fedsgd, fedprox, swarm,
swarm-consensus (those present), then any other method in the order of the dict. The
majority-class row is the floor: it is never bold. In the Markdown table and
the plots metrics are percentages (survey style, one decimal); the CSV keeps the raw values.
A NaN, None or missing value is "n/a" in Markdown, an empty cell in the CSV and no point in
the plots. All metrics are "higher is better", so the best mean of each column is in bold.

The plots are drawn through scenarios.plots (matplotlib, the optional extra `report`); without
it `write_report` writes everything else and says in one line that the plots were skipped.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from swarm.atomic import write_atomic

from .plots import PlotsUnavailable, colours, figure, integer_ticks, legend, save_png

__all__ = [
    "METHOD_ORDER", "SIMULATED_SERVER", "write_report", "markdown_table", "site_table", "site_means_table", "cost_table",
    "markdown_report", "csv_text", "plot_rounds", "plot_sites", "ordered_methods",
]

FLOOR = "majority"
METHOD_ORDER = (FLOOR, "cross", "single", "mix", "fedavg", "fedsgd", "fedprox", "swarm", "swarm-consensus")
SIMULATED_SERVER = ("fedavg", "fedsgd", "fedprox")
_BASELINES_WITHOUT_FEDERATION = (FLOOR, "cross", "single", "mix")
_DISPLAY = {FLOOR: "Majority class", "cross": "Cross", "single": "Single", "mix": "Mix", "fedavg": "FedAvg",
            "fedsgd": "FedSGD", "fedprox": "FedProx", "swarm": "the swarm", "swarm-consensus": "its consensus model"}
_ABBREVIATIONS = {"accuracy": "ACC", "balanced_accuracy": "BACC", "sensitivity": "SEN", "specificity": "SPE",
                  "auc": "AUC", "dice": "Dice", "pixel_accuracy": "PixAcc"}
_LONG_NAMES = {"accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "sensitivity": "Sensitivity",
               "specificity": "Specificity", "auc": "AUC", "dice": "Dice", "pixel_accuracy": "Pixel accuracy"}
_TASK_METRICS = {"classification": ["accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc"],
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
        seen += [m for m in (method.get("global") or {}) if m not in seen]
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
    """(round, mean, std) for every history entry whose held-out mean of `metric` is a number."""
    points = []
    for index, entry in enumerate(method.get("history") or []):
        if not isinstance(entry, Mapping):
            continue
        mean, std = _stat((entry.get("global") or {}).get(metric))
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


def _table(header: Sequence[str], rows: Sequence[str], columns: Sequence[Sequence[tuple[float, float]]],
           floor: Sequence[bool] = ()) -> str:
    """A Markdown table: one row label per row, one column of (mean, std) per header entry
    after the first; the best mean of each column (all of them if tied) in bold, rows
    marked in `floor` (the majority-class baseline) excepted."""
    floor = list(floor) + [False] * (len(rows) - len(floor))
    best = []
    for column in columns:
        # compare the values as printed, so that two cells that read the same are both bold
        means = [round(100.0 * m, 1) for r, (m, _) in enumerate(column) if not math.isnan(m) and not floor[r]]
        best.append(max(means) if means else None)
    lines = ["| " + " | ".join(_escape(h) for h in header) + " |",
             "|" + "|".join([":---"] + [":---:"] * len(columns)) + "|"]
    for r, row in enumerate(rows):
        cells = [_escape(row)]
        for c, column in enumerate(columns):
            mean, std = column[r]
            cells.append(_cell(mean, std, best[c] is not None and not math.isnan(mean) and not floor[r]
                               and round(100.0 * mean, 1) == best[c]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_table(results: Mapping[str, Any]) -> str:
    """The main table (survey Table II style), on the federation-wide held-out set: a row
    per method (its label), a column per metric (ACC, BACC, SEN, SPE, AUC / Dice, PixAcc),
    cells "mean ± std" in percent, the best mean of each column in bold (the floor row
    never), "n/a" where undefined."""
    methods = ordered_methods(results)
    metrics = _metrics(results)
    columns = [[_stat((results["methods"][m].get("global") or {}).get(metric)) for m in methods]
               for metric in metrics]
    return _table(["Method"] + [_abbreviation(m) for m in metrics],
                  [_label(results, m) for m in methods], columns, [m == FLOOR for m in methods])


def _pair(unweighted: Any, weighted: Any) -> str:
    a, _ = _stat(unweighted)
    b, _ = _stat(weighted)
    return NA if math.isnan(a) and math.isnan(b) else f"{_percent(a)} / {_percent(b)}"


def _undefined(method: Mapping[str, Any], metrics: Sequence[str], sites: int) -> str:
    """Where a metric had no value: "AUC at up to 1 of 8 sites (hospital-h)" (the most in
    any repeat; the sites it happened at in any repeat)."""
    notes = []
    for metric in metrics:
        entry = (method.get("undefined") or {}).get(metric) or {}
        counts = [c for c in entry.get("per_repeat") or [] if isinstance(c, int)]
        if counts and max(counts) > 0:
            named = entry.get("sites") or []
            notes.append(f"{_abbreviation(metric)} at up to {max(counts)} of {sites} sites"
                         + (f" ({', '.join(named)})" if named and len(named) <= 4 else ""))
    return "; ".join(notes) or "none"


def site_means_table(results: Mapping[str, Any]) -> str:
    """Each site's own test split: per method and metric "unweighted / weighted" means over
    sites (weights: test-split sizes), and where a metric was undefined and left out."""
    methods = ordered_methods(results)
    metrics = _metrics(results)
    sites = len(_sites(results))
    lines = ["| Method | " + " | ".join(_abbreviation(m) for m in metrics) + " | undefined (left out of the means) |",
             "|:---|" + ":---:|" * len(metrics) + ":---|"]
    for name in methods:
        method = results["methods"][name]
        cells = [_pair((method.get("sites_mean") or {}).get(m), (method.get("sites_weighted_mean") or {}).get(m))
                 for m in metrics]
        lines.append(f"| {_escape(_label(results, name))} | " + " | ".join(cells) + f" | {_escape(_undefined(method, metrics, sites))} |")
    return "\n".join(lines) + "\n"


def cost_table(results: Mapping[str, Any]) -> str:
    """Stability (the largest round-to-round fall of any one model on the held-out set after
    round 5) and what each method cost: wall time, CPU time, peak memory."""
    lines = ["| Method | largest fall after round 5 (mean ± std, worst) | wall s | CPU s | peak RSS MiB (processes) |",
             "|:---|:---:|:---:|:---:|:---:|"]
    for name in ordered_methods(results):
        method = results["methods"][name]
        stability = method.get("stability") or {}
        drop, spread = _stat(stability.get("largest_drop"))
        worst = _number(stability.get("worst"))
        fall = NA if math.isnan(drop) else f"{_percent(drop)} ± {_percent(spread)} ({_percent(worst)})"
        cost = method.get("cost") or {}
        wall, cpu, peak = (_stat(cost.get(k))[0] for k in ("wall_seconds", "cpu_seconds", "peak_rss_mb"))
        processes = cost.get("processes")
        lines.append(f"| {_escape(_label(results, name))} | {fall} | {_fixed(wall)} | {_fixed(cpu)} | "
                     f"{_fixed(peak)}{f' ({processes})' if isinstance(processes, int) else ''} |")
    return "\n".join(lines) + "\n"


def _fixed(value: float) -> str:
    return NA if math.isnan(value) else f"{value:.0f}"


def site_table(results: Mapping[str, Any], metric: str | None = None) -> str:
    """The primary metric (or `metric`) on each site's own test split: a row per method, a
    column per site and a last column "Mean"; same cell format and bold as `markdown_table`."""
    metric = metric or _primary(results)
    methods = ordered_methods(results)
    columns = []
    for site in _sites(results):
        columns.append([_stat(((results["methods"][m].get("sites") or {}).get(site) or {}).get(metric))
                        for m in methods])
    columns.append([_stat((results["methods"][m].get("sites_mean") or {}).get(metric)) for m in methods])
    return _table(["Method"] + _sites(results) + ["Mean"], [_label(results, m) for m in methods], columns,
                  [m == FLOOR for m in methods])


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
    return sentence + (". Cross, Single and Mix are the non-federated references of the survey (train on one site and test on the "
                       "others, local only, pooled); the majority class is the floor (always predict the most frequent training class).")


def markdown_report(results: Mapping[str, Any]) -> str:
    """The whole `compare.md`: title, what was scored, the held-out table, the per-site
    means, the primary metric per site, and stability and cost."""
    scenario = results.get("scenario") or "scenario"
    repeats = results.get("repeats")
    primary = _primary(results)
    over = (f"over {repeats} repeated random split{'s' if repeats != 1 else ''}"
            if isinstance(repeats, int) else "over the repeated random splits")
    data = results.get("data") or [{}]
    held_out = data[0].get("held_out") or {}
    origin = data[0].get("held_out_origin") or "the federation-wide held-out set"
    parts = [
        f"# Comparison: {scenario}\n",
        f"{_server_sentence(ordered_methods(results))}\n",
        f"Values are mean ± std {over}, in percent; the best mean of each column is in bold; "
        f"{NA} where a metric is undefined. Every method's final model(s) are scored the same way: "
        "one-model methods (Mix, FedAvg, FedSGD, FedProx, the swarm's consensus) by that model; Single, "
        "Cross and the swarm by the mean over the sites' own final models.\n",
        f"## Held-out test set ({origin}; {held_out.get('samples', NA)} samples"
        + (f", classes {held_out['classes']}" if held_out.get("classes") else "") + ")\n",
        markdown_table(results),
        "## Each site's own test split (mean over sites: unweighted / weighted by test size)\n",
        site_means_table(results),
        f"## {_long_name(primary)} per site\n",
        site_table(results, primary),
        f"## Stability and cost ({_long_name(primary)} on the held-out set)\n",
        cost_table(results),
    ]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# CSV


def _raw(value: float) -> str:
    return "" if math.isnan(value) else repr(value)


def csv_text(results: Mapping[str, Any]) -> str:
    """One row per (method, scope, metric): method, label, site, metric, mean, std (raw
    values, not percent; an empty cell where undefined). The scopes are "global" (the
    held-out set), "sites_mean", "sites_weighted_mean", then each site's own test split;
    every metric of `results["metrics"]` gets a row, defined or not."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "label", "site", "metric", "mean", "std"])
    metrics = _metrics(results)
    for name in ordered_methods(results):
        method = results["methods"][name]
        scopes = [(scope, method.get(scope) or {}) for scope in ("global", "sites_mean", "sites_weighted_mean")]
        scopes += [(site, values or {}) for site, values in (method.get("sites") or {}).items()]
        for site, values in scopes:
            for metric in metrics:
                mean, std = _stat(values.get(metric))
                writer.writerow([name, _label(results, name), site, metric, _raw(mean), _raw(std)])
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Plots


def plot_rounds(results: Mapping[str, Any], path: Path, metric: str | None = None) -> Path:
    """The primary metric (or `metric`, in percent) against the round: a line per method whose
    history has more than one point, shaded ±std; a method with a one-point history, or with
    no history but an overall mean, is a horizontal dashed line at that value."""
    metric = metric or _primary(results)
    methods = ordered_methods(results)
    colour = colours(methods)
    with figure((9, 5)) as (fig, ax):
        flat: list[tuple[str, float, float]] = []
        rounds: list[float] = []
        for name in methods:
            method = results["methods"][name]
            points = _history(method, metric)
            if len(points) > 1:
                x = [p[0] for p in points]
                y = [100.0 * p[1] for p in points]
                s = [0.0 if math.isnan(p[2]) else 100.0 * p[2] for p in points]
                ax.plot(x, y, marker="o", markersize=3, linewidth=1.8, color=colour[name],
                        label=_label(results, name))
                ax.fill_between(x, [a - b for a, b in zip(y, s)], [a + b for a, b in zip(y, s)],
                                color=colour[name], alpha=0.15, linewidth=0)
                rounds += x
            elif points:
                flat.append((name, points[0][1], points[0][2]))
            else:
                mean, std = _stat((method.get("global") or {}).get(metric))
                if not math.isnan(mean):
                    flat.append((name, mean, std))
        for name, mean, std in flat:
            ax.axhline(100.0 * mean, linestyle="--", linewidth=1.5, color=colour[name],
                       label=f"{_label(results, name)} (final)")
            if not math.isnan(std) and std > 0:
                ax.axhspan(100.0 * (mean - std), 100.0 * (mean + std), color=colour[name], alpha=0.08, linewidth=0)
        if rounds:
            ax.set_xlim(min(rounds), max(rounds))
        else:
            ax.set_xlim(0, 1)
        integer_ticks(ax.xaxis)
        ax.set_xlabel("Round")
        ax.set_ylabel(f"{_long_name(metric)} (%)")
        ax.set_title(f"{results.get('scenario') or 'comparison'}: held-out {_long_name(metric)} per round "
                     "(mean ± std over repeats)")
        ax.grid(True, alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            # legend in the table's order, whether a method is a line or a flat reference
            rank = {_label(results, m): i for i, m in enumerate(methods)}
            pairs = sorted(zip(handles, labels), key=lambda hl: rank.get(hl[1].removesuffix(" (final)"), len(rank)))
            legend(ax, handles=[h for h, _ in pairs], labels=[lab for _, lab in pairs], loc="center left", bbox_to_anchor=(1.01, 0.5))
        else:
            ax.text(0.5, 0.5, "no values to plot", ha="center", va="center", transform=ax.transAxes)
        return save_png(fig, path)


def plot_sites(results: Mapping[str, Any], path: Path, metric: str | None = None) -> Path:
    """Grouped bars of the primary metric (or `metric`, in percent) on each site's own test
    split: a group per site and a last group "Mean", a bar per method with a ±std error bar;
    undefined values get no bar."""
    metric = metric or _primary(results)
    methods = ordered_methods(results)
    colour = colours(methods)
    groups = _sites(results) + ["Mean"]
    width = 0.8 / max(1, len(methods))
    with figure((max(6.0, 1.2 + 0.35 * len(groups) * max(1, len(methods))), 5)) as (fig, ax):
        for i, name in enumerate(methods):
            method = results["methods"][name]
            xs, ys, errs = [], [], []
            for g, group in enumerate(groups):
                entry = (method.get("sites_mean") or {}) if group == "Mean" else ((method.get("sites") or {}).get(group) or {})
                mean, std = _stat(entry.get(metric))
                if math.isnan(mean):
                    continue
                xs.append(g - 0.4 + width * (i + 0.5))
                ys.append(100.0 * mean)
                errs.append(0.0 if math.isnan(std) else 100.0 * std)
            ax.bar(xs, ys, width=width, yerr=errs, capsize=2, color=colour[name],
                   label=_label(results, name), error_kw={"linewidth": 1})
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, **({"rotation": 45, "ha": "right"} if len(groups) > 8 else {}))
        ax.axvline(len(groups) - 1.5, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("Site")
        ax.set_ylabel(f"{_long_name(metric)} (%)")
        ax.set_title(f"{results.get('scenario') or 'comparison'}: {_long_name(metric)} per site "
                     "(mean ± std over repeats)")
        ax.grid(True, axis="y", alpha=0.3)
        legend(ax, loc="center left", bbox_to_anchor=(1.01, 0.5))
        return save_png(fig, path)


# ---------------------------------------------------------------------------------------------
# Everything


def write_report(results: Mapping[str, Any], out: Path, progress: Callable[[str], None] = print) -> dict[str, Path]:
    """Write `compare.md`, `compare.csv`, `plots/<primary>_vs_round.png` and
    `plots/<primary>_per_site.png` under `out` (created if needed) and return their paths
    by name: "markdown", "csv", "rounds_plot", "sites_plot". Without matplotlib the plots
    are left out and `progress` gets one line saying so."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    primary = _primary(results)
    paths = {"markdown": out / "compare.md", "csv": out / "compare.csv"}
    write_atomic(paths["markdown"], markdown_report(results).encode("utf-8"))
    write_atomic(paths["csv"], csv_text(results).encode("utf-8"))
    try:
        paths["rounds_plot"] = plot_rounds(results, out / "plots" / f"{primary}_vs_round.png", primary)
        paths["sites_plot"] = plot_sites(results, out / "plots" / f"{primary}_per_site.png", primary)
    except PlotsUnavailable as missing:
        progress(str(missing))
    return paths
