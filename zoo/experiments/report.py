"""A table's results from its finished runs: means and spread over seeds, relative improvements,
paired t-test stars, as `TABLE.json` and `TABLE.md` (and `TABLE.png` for a sweep)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossan.zoo.core.atomic import atomic_write
from crossan.zoo.experiments.definition import Sweep, TableDefinition
from crossan.zoo.experiments.runner import TableRuns
from crossan.zoo.training.checkpoint import read_json, write_json
from crossan.zoo.training.metrics import METRIC_NAMES, per_user_metric

__all__ = ["SIGNIFICANCE_LEVEL", "summarise", "write_report", "table_markdown", "per_user_values"]

SIGNIFICANCE_LEVEL = 0.05


def per_user_values(rank_lists: list[list[int | None]], metric: str) -> np.ndarray:
    """A metric per user averaged over seeds, from each seed's per-user ranks (`None` = miss)."""
    # float64: in float32 scipy's p-value underflows to 0 below about 1e-45.
    values = [
        per_user_metric(torch.tensor([math.inf if r is None else float(r) for r in ranks]), metric).double().numpy()
        for ranks in rank_lists
    ]
    return np.mean(values, axis=0)


def summarise(
    definition: TableDefinition, metrics: dict[str, list[dict[str, Any]]], ranks: dict[str, list[list[int | None]]]
) -> dict[str, Any]:
    """The table's numbers from each row's per-seed `metrics.json` contents and per-seed test ranks.

    Per row and metric: mean and standard deviation over seeds (sample, 0 for one seed) of the
    test metric; for rows with a comparison row, the relative improvement of the means in
    percent and the two-sided paired t-test over users (the per-user metric averaged over
    seeds first), with `significant` for p < 0.05 (the paper's star).
    """
    from scipy.stats import ttest_rel

    per_user: dict[tuple[str, str], np.ndarray] = {}

    def values_of(name: str, metric: str) -> np.ndarray:
        if (name, metric) not in per_user:
            per_user[name, metric] = per_user_values(ranks[name], metric)
        return per_user[name, metric]

    rows = []
    for run in definition.runs:
        per_seed = [m["test"] for m in metrics[run.name]]
        row: dict[str, Any] = {
            "name": run.name,
            "preset": run.preset,
            "options": run.options,
            "value": run.value,
            "seeds": len(per_seed),
            "best_epochs": [m["best_epoch"] for m in metrics[run.name]],
            "mean": {},
            "std": {},
        }
        for metric in METRIC_NAMES:
            values = np.array([s[metric] for s in per_seed])
            row["mean"][metric] = float(values.mean())
            row["std"][metric] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        other = definition.comparison(run)
        if other is not None:
            row["compared_with"] = other
            row["improvement_percent"], row["p_value"], row["significant"] = {}, {}, {}
            for metric in METRIC_NAMES:
                base = float(np.mean([s["test"][metric] for s in metrics[other]]))
                row["improvement_percent"][metric] = 100.0 * (row["mean"][metric] - base) / base if base else math.nan
                p_value = float(ttest_rel(values_of(run.name, metric), values_of(other, metric)).pvalue)
                row["p_value"][metric] = p_value
                row["significant"][metric] = bool(p_value < SIGNIFICANCE_LEVEL)
        rows.append(row)
    return {
        "table": definition.name,
        "title": definition.title,
        "baseline": definition.baseline,
        "split": "test",
        "significance_level": SIGNIFICANCE_LEVEL,
        "metrics": list(METRIC_NAMES),
        "rows": rows,
    }


def table_markdown(summary: dict[str, Any], seeds: tuple[int, ...]) -> str:
    """`TABLE.md`: one row per run (mean ± std over seeds, * for p < 0.05 against its comparison
    row), then one relative-improvement row per compared run."""
    metrics = summary["metrics"]
    lines = [
        f"# {summary['title']}",
        "",
        f"Test split, mean ± standard deviation over seeds {', '.join(map(str, seeds))}; * p < "
        f"{summary['significance_level']} in a two-sided paired t-test over users against the row named in "
        "the improvement rows.",
        "",
        "| run | " + " | ".join(metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for row in summary["rows"]:
        cells = []
        for metric in metrics:
            star = "*" if row.get("significant", {}).get(metric) else ""
            cells.append(f"{row['mean'][metric]:.4f} ± {row['std'][metric]:.4f}{star}")
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    compared = [row for row in summary["rows"] if "compared_with" in row]
    if compared:
        lines += ["", "| improvement | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
        for row in compared:
            cells = [f"{row['improvement_percent'][m]:+.2f}% ({_p_text(row['p_value'][m])})" for m in metrics]
            lines.append(f"| {row['name']} vs {row['compared_with']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _p_text(p_value: float) -> str:
    """`p = 0.031`; a p-value below the smallest double prints as a bound, not as 0."""
    return "p < 1e-300" if p_value == 0 else f"p = {p_value:.2g}"


def write_report(table: TableRuns) -> dict[str, Any]:
    """Read the table's finished runs and write `TABLE.json`, `TABLE.md` (and `TABLE.png` for a
    sweep) in the table's folder; returns the summary."""
    definition = table.definition
    metrics = {
        run.name: [read_json(table.directory(run, seed) / "metrics.json") for seed in table.seeds]
        for run in definition.runs
    }
    ranks = {
        run.name: [read_json(table.directory(run, seed) / "per_user_test.json")["ranks"] for seed in table.seeds]
        for run in definition.runs
    }
    summary = {**summarise(definition, metrics, ranks), "seeds": list(table.seeds)}
    folder = table.folder
    if definition.sweep is not None:
        summary["plot"] = str(
            draw_sweep(summary, definition.sweep, definition.title, folder / f"{definition.name}.png")
        )
    write_json(folder / f"{definition.name}.json", summary)
    markdown = table_markdown(summary, table.seeds)
    atomic_write(folder / f"{definition.name}.md", lambda tmp: Path(tmp).write_text(markdown))
    return summary


def draw_sweep(summary: dict[str, Any], sweep: Sweep, title: str, path: Path) -> Path:
    """Test HR@10 and NDCG@10 (mean, with the spread over seeds) against the swept setting."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = sorted(summary["rows"], key=lambda r: r["value"])
    figure = Figure(figsize=(6, 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    values = [r["value"] for r in rows]
    for metric in ("HR@10", "NDCG@10"):
        axes.errorbar(
            values,
            [r["mean"][metric] for r in rows],
            yerr=[r["std"][metric] for r in rows],
            marker="o",
            capsize=3,
            label=metric,
        )
    if sweep.log_scale:
        axes.set_xscale("log")
    axes.set_xlabel(sweep.parameter)
    axes.set_ylabel(f"test metric (mean over {len(summary['seeds'])} seeds)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    return path
