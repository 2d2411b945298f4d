"""Compare evaluation results of several models: a markdown table and a bar plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vivi.errors import UserError
from vivi.evaluate.suite import GROUP_ORDER, summarize

MISSING = "-"


def load_results(paths: Sequence[Path]) -> list[dict]:
    """Read the JSON files written by ``evaluate_tasks``, refusing anything else."""
    results = []
    for path in map(Path, paths):
        try:
            data = json.loads(path.read_text())
            ok = isinstance(data, dict) and all({"task", "group", "accuracy"} <= set(t) for t in data["tasks"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path}: not a vivi results file ({e})") from e
        if not ok:
            raise UserError(f"{path}: not a vivi results file (tasks need task, group and accuracy)")
        data.setdefault("model", path.stem)
        results.append(data)
    return results


def _columns(results: Sequence[dict]) -> list[tuple[str, list[str]]]:
    """(group, tasks) in VTAB group order, tasks in order of first appearance."""
    tasks: dict[str, list[str]] = {}
    for r in results:
        for t in r["tasks"]:
            names = tasks.setdefault(t["group"], [])
            if t["task"] not in names:
                names.append(t["task"])
    order = [g for g in GROUP_ORDER if g in tasks] + sorted(set(tasks) - set(GROUP_ORDER))
    return [(g, tasks[g]) for g in order]


def _labels(results: Sequence[dict]) -> list[str]:
    """Row names: the model, plus the protocol when the results mix protocols."""
    mixed = len({r.get("protocol") for r in results}) > 1
    return [f"{r['model']} ({r.get('protocol')})" if mixed else str(r["model"]) for r in results]


def _row_values(result: dict, columns: list[tuple[str, list[str]]]) -> list[float]:
    """Per-task accuracies, then group means, then the mean; NaN where a value is missing."""
    acc = {t["task"]: t["accuracy"] for t in result["tasks"]}
    groups, mean = summarize(result["tasks"])
    tasks = [acc.get(name, math.nan) for _, names in columns for name in names]
    means = [groups.get(g, math.nan) for g, _ in columns]
    return tasks + means + [math.nan if mean is None else mean]


def _header(columns: list[tuple[str, list[str]]]) -> list[str]:
    return [n for _, names in columns for n in names] + [f"{g} mean" for g, _ in columns] + ["mean"]


def results_table(results: Sequence[dict]) -> str:
    """Fixed-width markdown table: one row per model, accuracies (%) with one decimal.

    Columns are the tasks grouped natural | specialized | structured (a caption line names
    each group's tasks), then the per-group means and the mean over tasks.
    """
    columns = _columns(results)
    header = ["model", *_header(columns)]
    rows = [
        [label, *(MISSING if math.isnan(v) else f"{v:.1f}" for v in _row_values(r, columns))]
        for label, r in zip(_labels(results), results)
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "| " + " | ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:]))]) + " |"

    rule = "|" + "|".join([":" + "-" * (widths[0] + 1), *("-" * (w + 1) + ":" for w in widths[1:])]) + "|"
    protocols = ", ".join(sorted({str(r.get("protocol")) for r in results}))
    caption = f"Accuracy (%), protocol {protocols}. " + "; ".join(f"{g}: {', '.join(n)}" for g, n in columns) + "."
    return "\n".join([caption, "", line(header), rule, *(line(row) for row in rows)]) + "\n"


def bar_plot(results: Sequence[dict], path: Path) -> Path:
    """PNG of per-task accuracy bars (one colour per model), then group means and the mean."""
    columns = _columns(results)
    names = _header(columns)
    values = np.array([_row_values(r, columns) for r in results], dtype=float)
    n_models, n_cols = values.shape
    width = 0.8 / n_models
    fig = Figure(figsize=(min(40.0, 3.0 + n_cols * (0.35 + 0.15 * n_models)), 5.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(n_cols)
    for i, (label, row) in enumerate(zip(_labels(results), values)):
        ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(row), width, label=label)
    # Separate the groups' tasks, and the summary block, with dashed lines and name each group.
    start = 0
    for group, tasks in columns:
        ax.text(start + (len(tasks) - 1) / 2, 103, group, ha="center", va="bottom", fontsize=9)
        start += len(tasks)
        ax.axvline(start - 0.5, color="grey", linestyle="--", linewidth=0.8)
    ax.text(start + len(columns) / 2, 103, "means", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_xlim(-0.6, n_cols - 0.4)
    ax.set_ylim(0, 110)
    ax.set_ylabel("test accuracy (%)")
    ax.set_xlabel("task")
    protocols = ", ".join(sorted({str(r.get("protocol")) for r in results}))
    ax.set_title(f"Transfer accuracy per task (protocol: {protocols})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="model", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def write_report(results: Sequence[dict], out_dir: Path) -> tuple[Path, Path]:
    """``out_dir/report.md`` (the table, linking the plot) and ``out_dir/accuracy.png``."""
    out_dir = Path(out_dir)
    png = bar_plot(results, out_dir / "accuracy.png")
    md = out_dir / "report.md"
    md.write_text(f"# vivi evaluation report\n\n{results_table(results)}\n![accuracy per task]({png.name})\n")
    return md, png
