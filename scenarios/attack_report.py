"""What an attack study reports: OUT/results.csv, OUT/study.md and OUT/plots/attack-study.png.

Per cell, from its summary.json (the Byzantine sites' own scores are left out: an attacker
reports whatever it likes):

  honest_mean, honest_min   final test accuracy (Dice for segmentation) over honest sites
  baseline_mean/min         the same defence and seed without any attack
  drop                      baseline_mean - honest_mean (positive: the attack hurt)
  byzantine_sites           how many sites attacked
  worst_share               the largest Byzantine fraction among the models an honest
                            site merges (itself and its neighbours)
  byzantine_majority_sites  honest sites whose neighbourhood is at least half Byzantine:
                            no robust rule can be expected to hold there
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from swarm.atomic import write_atomic

from .attackers import byzantine_share
from .plots import colours, panels, save_png
from .sweep_report import csv_text, read_summary

COLUMNS = (
    "cell", "attack", "defence", "share", "seed", "byzantine_sites", "honest_mean", "honest_min",
    "baseline_mean", "baseline_min", "drop", "worst_share", "byzantine_majority_sites", "wall_s", "ok",
)
NAN = math.nan


def cell_row(cell: Any, directory: Path) -> dict[str, Any]:
    summary = read_summary(directory)
    metric = summary.get("primary_metric", "accuracy")
    nodes = summary.get("nodes", [])
    honest = [n for n in nodes if not n.get("byzantine")]
    scores = [float(n["metrics"].get(metric, NAN)) for n in honest]
    attackers = {n["name"] for n in nodes if n.get("byzantine")}
    neighbours = summary.get("topology", {}).get("neighbours", {})
    shares = byzantine_share(attackers, neighbours) if attackers else {}
    return {
        "cell": cell.id,
        "attack": cell.attack,
        "defence": cell.defence,
        "share": cell.share,
        "seed": cell.seed,
        "byzantine_sites": len(attackers),
        "honest_mean": sum(scores) / len(scores) if scores else NAN,
        "honest_min": min(scores) if scores else NAN,
        "worst_share": max(shares.values(), default=0.0),
        "byzantine_majority_sites": sum(1 for share in shares.values() if share >= 0.5),
        "wall_s": summary.get("wall_seconds", NAN),
        "ok": bool(summary.get("ok")),
    }


def with_baselines(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    baselines = {(r["defence"], r["seed"]): r for r in rows if r["attack"] == "none"}
    out = []
    for row in rows:
        base = baselines.get((row["defence"], row["seed"]))
        mean, low = (base["honest_mean"], base["honest_min"]) if base else (NAN, NAN)
        out.append(dict(row) | {"baseline_mean": mean, "baseline_min": low, "drop": mean - row["honest_mean"]})
    return out


def _pct(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _averaged(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, float], dict[str, float]]:
    """(attack, defence, share) -> honest_mean and honest_min averaged over seeds."""
    groups: dict[tuple[str, str, float], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["attack"], row["defence"], row["share"]), []).append(row)
    return {
        key: {field: sum(r[field] for r in group) / len(group) for field in ("honest_mean", "honest_min", "byzantine_majority_sites")}
        for key, group in groups.items()
    }


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """One table per Byzantine share: attacks down, defences across, "mean / worst" honest
    accuracy (%), averaged over seeds; "(k)" marks k honest sites with a Byzantine majority."""
    averaged = _averaged(rows)
    defences = list(dict.fromkeys(r["defence"] for r in rows))
    attacks = [a for a in dict.fromkeys(r["attack"] for r in rows) if a != "none"]
    shares = sorted({r["share"] for r in rows if r["attack"] != "none"})
    lines = ["Honest sites' final test accuracy (%), mean / worst site; (k): k honest sites whose "
             "neighbourhood is at least half Byzantine.", ""]
    header = "| attack | " + " | ".join(defences) + " |"
    rule = "|---|" + "---|" * len(defences)
    baseline = "| no attack | " + " | ".join(
        f"{_pct(averaged[('none', d, 0.0)]['honest_mean'])} / {_pct(averaged[('none', d, 0.0)]['honest_min'])}" if ("none", d, 0.0) in averaged else "-"
        for d in defences) + " |"
    for share in shares:
        lines += [f"**{100 * share:.0f}% Byzantine sites**", "", header, rule, baseline]
        for attack in attacks:
            cells = []
            for defence in defences:
                value = averaged.get((attack, defence, share))
                if value is None:
                    cells.append("-")
                    continue
                majority = f" ({value['byzantine_majority_sites']:.0f})" if value["byzantine_majority_sites"] else ""
                cells.append(f"{_pct(value['honest_mean'])} / {_pct(value['honest_min'])}{majority}")
            lines.append(f"| {attack} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


class StudyReport:
    """The report object `scenarios.sweep.run_sweep` calls for an attack study."""

    def row(self, cell: Any, directory: Path) -> dict[str, Any]:
        return cell_row(cell, directory)

    def describe(self, row: Mapping[str, Any]) -> str:
        return f"honest accuracy mean {_pct(row['honest_mean'])}%, worst {_pct(row['honest_min'])}%" + ("" if row["ok"] else " (NOT ok: see the cell's summary.json)")

    def write(self, out: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
        full = with_baselines(rows)
        write_atomic(out / "study.md", (markdown(full) + "\n").encode())
        path = out / "results.csv"
        write_atomic(path, csv_text(full, COLUMNS).encode())
        return path

    def finish(self, out: Path, rows: Sequence[Mapping[str, Any]]) -> list[Path]:
        return [out / "study.md", plot(with_baselines(rows), out / "plots" / "attack-study.png")]


def plot(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """One panel per attack: honest mean accuracy (solid) and worst honest site (dotted)
    against the Byzantine share, one colour per defence; the no-attack level at share 0."""
    averaged = _averaged(rows)
    defences = list(dict.fromkeys(r["defence"] for r in rows))
    attacks = [a for a in dict.fromkeys(r["attack"] for r in rows) if a != "none"]
    shares = sorted({r["share"] for r in rows if r["attack"] != "none"})
    columns = min(4, max(1, len(attacks)))
    colour = colours(defences)
    with panels(len(attacks), columns, (3.6, 3.0)) as (fig, axes):
        for index, (ax, attack) in enumerate(zip(axes, attacks)):
            for defence in defences:
                xs = [0.0, *shares]
                base = averaged.get(("none", defence, 0.0), {"honest_mean": NAN, "honest_min": NAN})
                means = [base["honest_mean"], *(averaged.get((attack, defence, s), {}).get("honest_mean", NAN) for s in shares)]
                worst = [base["honest_min"], *(averaged.get((attack, defence, s), {}).get("honest_min", NAN) for s in shares)]
                ax.plot([100 * x for x in xs], means, marker="o", color=colour[defence], label=defence)
                ax.plot([100 * x for x in xs], worst, linestyle=":", color=colour[defence])
            ax.set_title(attack)
            ax.set_xlabel("Byzantine sites (%)")
            ax.grid(alpha=0.3)
            if index % columns == 0:
                ax.set_ylabel("honest test accuracy")
        if axes:
            axes[0].legend(fontsize="small", title="defence (dotted: worst site)", title_fontsize="small")
        fig.suptitle("Byzantine hospitals: honest sites' accuracy by attack, defence and attacker share")
        fig.tight_layout()
        return save_png(fig, path)
