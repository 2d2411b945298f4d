"""Compare evaluation results of several models: the Table 4 layout, accuracy bars, per-task
difference bars between two models (the paper's Figures 4-9) and training curves of runs."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from vivi.errors import UserError, first_line, warn
from vivi.evaluate.suite import GROUP_ORDER, summarize
from vivi.train.run_folder import metrics_lines

MISSING = "-"
RESULTS_FILE = "results_file"  # the file a row was read from, added by load_results


def load_results(paths: Sequence[Path]) -> list[dict]:
    """Read the JSON files written by ``evaluate_tasks``, refusing anything else."""
    results = []
    for path in map(Path, paths):
        if path.is_dir():
            raise UserError(f"{path}: is a folder; pass the results files in it, e.g. {path / '*.json'}")
        data = _read_json(path)
        if not isinstance(data, dict) or "tasks" not in data:
            kinds = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false"}
            got = "an object without 'tasks'" if isinstance(data, dict) else kinds.get(type(data), "null")
            raise UserError(f"{path}: not a vivi results file (expected an object with a 'tasks' list, got {got})")
        tasks = data["tasks"]
        ok = isinstance(tasks, list) and all(isinstance(t, dict) and {"task", "group", "accuracy"} <= t.keys()
                                             for t in tasks)  # fmt: skip
        if not ok:
            raise UserError(f"{path}: not a vivi results file (tasks need task, group and accuracy)")
        if bad := _bad_field(data):
            raise UserError(f"{path}: not a vivi results file ({bad})")
        data.setdefault("model", path.stem)
        data[RESULTS_FILE] = str(path)  # tells apart rows the table would otherwise label alike
        results.append(data)
    return merge_results(results)


def _read_json(path: Path) -> object:
    """A results file's JSON, or a one-line reason in words: missing, empty, cut short, not JSON
    (the bare ``('tasks')`` of a KeyError or a TypeError about list indices said nothing)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such results file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable results file ({e.strerror if isinstance(e, OSError) else e})") from None
    if not text.strip():
        raise UserError(f"{path}: is empty, not a vivi results file (an evaluation stopped before its first task?)")
    try:
        return json.loads(text)
    except RecursionError:  # "[[[[..." 100k deep: a RuntimeError from the parser, not a ValueError
        raise UserError(f"{path}: not a vivi results file (JSON nested too deeply to read)") from None
    except ValueError as e:
        raise UserError(f"{path}: not a vivi results file (not valid JSON: {e}; cut short?)") from None


_NUMBER = "a number"
# Fields the report reads, with the type it needs: a hand-edited file with a list for a name
# would otherwise end in "unhashable type" deep in the table code.
_RESULT_FIELDS = {"model": str, "protocol": str, "image_size": int, "model_source": str}
_TASK_FIELDS = {"task": str, "group": str, "accuracy": _NUMBER, "severity_mean": list}


def _bad_field(data: dict) -> str | None:
    """``field tasks[2].group is [1], expected a string`` for the first field of the wrong type, else None."""
    checks = [(k, data[k], want) for k, want in _RESULT_FIELDS.items() if k in data]
    for i, task in enumerate(data["tasks"]):
        checks += [(f"tasks[{i}].{k}", task[k], want) for k, want in _TASK_FIELDS.items() if k in task]
        if isinstance(task.get("severity_mean"), list):
            checks += [(f"tasks[{i}].severity_mean[{j}]", v, _NUMBER) for j, v in enumerate(task["severity_mean"])]
    for name, value, want in checks:
        if not _has_type(value, want):
            words = {str: "a string", int: "an integer", list: "a list", _NUMBER: _NUMBER}[want]
            return f"field {name} is {json.dumps(value)}, expected {words}"
    return None


def _has_type(value: object, want: type | str) -> bool:
    """``isinstance``, except that true/false is not a number (JSON keeps them apart, Python does not)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) if want == _NUMBER else isinstance(value, want)


# Joined into one row only when all agree: two models of one name (two weights files of one timm
# architecture, say) were merged into one row, each one's tasks passing for the other's.
_SAME_EVALUATION = ("model", "protocol", "image_size", "model_source", "weights")


def merge_results(results: Sequence[dict]) -> list[dict]:
    """One row per evaluation: results of the same model, protocol and image size written to
    several files (e.g. mini-vtab and an image folder, evaluated separately) are joined when
    their tasks do not overlap; overlapping ones (repeats) stay separate rows."""
    merged: list[dict] = []
    for result in results:
        key = _evaluation_key(result)
        names = {t["task"] for t in result["tasks"]}
        for row in merged:
            if _evaluation_key(row) == key and not (
                names & {t["task"] for t in row["tasks"]}
            ):
                row["tasks"] = row["tasks"] + result["tasks"]
                row["groups"], row["mean"] = summarize(row["tasks"])
                if RESULTS_FILE in result:
                    row[RESULTS_FILE] = f"{row.get(RESULTS_FILE)}+{Path(result[RESULTS_FILE]).name}"
                break
        else:
            merged.append(dict(result))
    return merged


def _evaluation_key(result: dict) -> list:
    """What must agree for two results to be one row: :data:`_SAME_EVALUATION`, and the training
    step of an evaluated checkpoint (the last step's weights are the final backbone's)."""
    checkpoint = result.get("checkpoint")
    step = checkpoint.get("step") if isinstance(checkpoint, dict) else None
    return [result.get(k) for k in _SAME_EVALUATION] + [step]


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
    """Row names: the model, plus the protocol when the results mix protocols; rows still named
    alike (one model's repeats, two weights files of one architecture) get their results file,
    then a number: otherwise a reader, and --diff, could not tell them apart."""
    mixed = len({r.get("protocol") for r in results}) > 1
    labels = [f"{r['model']} ({r.get('protocol')})" if mixed else str(r["model"]) for r in results]
    for same in _alike(labels):
        files = _short_paths([str(results[i].get(RESULTS_FILE) or results[i].get("weights") or "") for i in same])
        for i, f in zip(same, files):
            labels[i] += f" [{f}]" if f else ""
    for same in _alike(labels):
        for n, i in enumerate(same, 1):
            labels[i] += f" #{n}"
    return labels


def _alike(labels: Sequence[str]) -> list[list[int]]:
    """Indices of each label that more than one row has."""
    where: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        where.setdefault(label, []).append(i)
    return [same for same in where.values() if len(same) > 1]


def _short_paths(paths: Sequence[str]) -> list[str]:
    """Each path's last parts, as few as tell them apart (``a/results.json``, ``b/results.json``)."""
    parts = [p.replace("\\", "/").split("/") for p in paths]
    for n in range(1, max(map(len, parts), default=1) + 1):
        tails = ["/".join(p[-n:]) for p in parts]
        if len(set(tails)) == len(tails):
            return tails
    return ["/".join(p) for p in parts]


def _row_values(result: dict, columns: list[tuple[str, list[str]]]) -> list[float | None]:
    """Per-task accuracies, then group means, then the mean; None where a value is missing (not
    evaluated), kept apart from an accuracy that is NaN (evaluated, and it went wrong)."""
    acc = {t["task"]: t["accuracy"] for t in result["tasks"]}
    groups, mean = summarize(result["tasks"])
    tasks = [acc.get(name) for _, names in columns for name in names]
    means = [groups.get(g) for g, _ in columns]
    return tasks + means + [mean]


def _header(columns: list[tuple[str, list[str]]]) -> list[str]:
    return [n for _, names in columns for n in names] + [f"{g} mean" for g, _ in columns] + ["mean"]


def results_table(results: Sequence[dict]) -> str:
    """Fixed-width markdown table: one row per model, accuracies (%) with one decimal.

    Columns are the tasks grouped natural | specialized | structured (a caption line names
    each group's tasks), then the per-group means and the mean over tasks.
    """
    columns = _columns(results)
    header = ["model", *_header(columns)]
    # a "|" in a model name would split its cell: escaped, as markdown tables need
    rows = [[label.replace("|", "\\|"), *_cells(r, columns)] for label, r in zip(_labels(results), results)]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "| " + " | ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:]))]) + " |"

    rule = "|" + "|".join([":" + "-" * (widths[0] + 1), *("-" * (w + 1) + ":" for w in widths[1:])]) + "|"
    protocols = ", ".join(sorted({str(r.get("protocol")) for r in results}))
    caption = f"Accuracy (%), protocol {protocols}. " + "; ".join(f"{g}: {', '.join(n)}" for g, n in columns) + "."
    if any(cell.endswith(PARTIAL) for row in rows for cell in row[1:]):
        caption += f" {PARTIAL} a mean over only the tasks that row has ({MISSING}: not evaluated), not comparable."
    if any(cell == NOT_A_NUMBER for row in rows for cell in row[1:]):
        caption += f" {NOT_A_NUMBER}: evaluated, but the accuracy is not a number (a diverged model?)."
    return "\n".join([caption, "", line(header), rule, *(line(row) for row in rows)]) + "\n"


PARTIAL = "*"
NOT_A_NUMBER = "nan"


def _cells(result: dict, columns: list[tuple[str, list[str]]]) -> list[str]:
    """A row's table cells; a group mean or the mean over fewer tasks than the columns is marked
    (a partial evaluation's mean would otherwise read as comparable with the others)."""
    values = _row_values(result, columns)
    n_tasks = sum(len(names) for _, names in columns)
    missing = [v is None for v in values[:n_tasks]]
    partial, start = [], 0
    for _, names in columns:
        partial.append(any(missing[start : start + len(names)]))
        start += len(names)
    partial.append(any(missing))
    marks = [False] * n_tasks + partial
    return [_cell(v, m) for v, m in zip(values, marks)]


def _cell(value: float | None, partial: bool) -> str:
    """``-`` for a task not evaluated, ``nan`` for one evaluated to NaN (read as "not run" before)."""
    if value is None:
        return MISSING
    return NOT_A_NUMBER if math.isnan(value) else f"{value:.1f}{PARTIAL if partial else ''}"


def bar_plot(results: Sequence[dict], path: Path) -> Path:
    """PNG of per-task accuracy bars (one colour per model), then group means and the mean."""
    columns = _columns(results)
    names = _header(columns)
    values = np.array([[math.nan if v is None else v for v in _row_values(r, columns)] for r in results], dtype=float)
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
    return _save(fig, path)


def task_differences(results: Sequence[dict], base: int, other: int) -> list[tuple[str, str, float]]:
    """(name, group, other - base accuracy) per shared task in table order, then per group mean, then
    ``("mean", "", ...)`` over the shared tasks."""
    labels = _labels(results)
    a, b = ({t["task"]: t["accuracy"] for t in results[i]["tasks"]} for i in (base, other))
    columns = [(g, [n for n in names if n in a and n in b]) for g, names in _columns([results[base], results[other]])]
    columns = [(g, names) for g, names in columns if names]
    if not columns:
        raise UserError(f"{labels[base]} and {labels[other]} share no task to compare")
    rows = [(n, g, b[n] - a[n]) for g, names in columns for n in names]
    rows += [(f"{g} mean", g, float(np.mean([b[n] - a[n] for n in names]))) for g, names in columns]
    return rows + [("mean", "", float(np.mean([d for _, _, d in rows[: -len(columns)]])))]


def _shared_tasks(a: dict, b: dict) -> set[str]:
    return {t["task"] for t in a["tasks"]} & {t["task"] for t in b["tasks"]}


def difference_plot(results: Sequence[dict], base: int, other: int, path: Path) -> Path:
    """PNG of per-task accuracy differences ``other - base`` coloured by group, then the group
    means and the mean (the layout of the paper's Figures 4-9); shared tasks only."""
    labels = _labels(results)
    rows = task_differences(results, base, other)
    groups = list(dict.fromkeys(g for _, g, _ in rows if g))
    palette = {g: f"C{i}" for i, g in enumerate(groups)}
    names = [n for n, _, _ in rows]
    diffs = [d for _, _, d in rows]
    colours = [palette.get(g, "black") for _, g, _ in rows]
    n_means = len(groups) + 1
    fig = Figure(figsize=(min(30.0, 3.0 + 0.45 * len(names)), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(names))
    bars = ax.bar(x, diffs, color=colours)
    for rect, d in zip(bars, diffs):
        ax.annotate(f"{d:+.1f}", (rect.get_x() + rect.get_width() / 2, d), ha="center",
                    va="bottom" if d >= 0 else "top", fontsize=7)  # fmt: skip
    ax.axhline(0, color="black", linewidth=0.8)
    ax.axvline(len(names) - n_means - 0.5, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylabel("accuracy difference (points)")
    ax.set_title(f"{labels[other]} minus {labels[base]}, per task")
    ax.grid(axis="y", alpha=0.3)
    handles = [Patch(color=palette[g], label=g) for g in groups]
    ax.legend(handles=handles, title="group", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def load_metrics(run: Path) -> list[dict]:
    """Rows of ``RUN/metrics.jsonl`` (what the training loop logs every log_every steps)."""
    path = Path(run) / "metrics.jsonl" if Path(run).is_dir() else Path(run)
    try:
        lines, torn = metrics_lines(path)
        rows = [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: JSON nested too deeply
        raise UserError(f"{path}: not a run's metrics.jsonl ({first_line(e)})") from None
    if torn:  # the row being written when the run died: the curves end one row earlier
        warn(f"{path}: its last line was cut short (the run stopped while writing it); left out")
    if not rows or not all(isinstance(r, dict) and "step" in r for r in rows):
        raise UserError(f"{path}: no metrics rows with a step")
    return rows


def _run_of(source: object) -> Path | None:
    """The run folder a result's model came from, where its metrics.jsonl is: the run itself, its
    ``backbone.safetensors`` or one of its ``checkpoints/step_N.pt``; None for anything else."""
    if not isinstance(source, str) or not source:
        return None
    path = Path(source)
    return next((p for p in (path, path.parent, path.parent.parent) if (p / "metrics.jsonl").is_file()), None)


def curves_plot(runs: Sequence[Path], path: Path) -> Path:
    """PNG with one panel per logged quantity (losses, learning rate, throughput) against step, one line per run."""
    series = {Path(r).name if Path(r).is_dir() else Path(r).parent.name: load_metrics(r) for r in runs}
    keys = sorted({k for rows in series.values() for r in rows for k in r if k != "step"},
                  key=lambda k: (k != "loss", not k.startswith("loss"), k))  # fmt: skip
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4.5 * cols + 1.5, 3.2 * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for name, rows in series.items():
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if pts:  # a run shorter than log_every has one row: a line alone would draw nothing
                ax.plot(*zip(*pts), label=name, marker="o" if len(pts) == 1 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("training curves (metrics.jsonl)")
    fig.tight_layout()
    return _save(fig, path)


def severity_plot(results: Sequence[dict], path: Path) -> Path:
    """Suite-mean accuracy against corruption severity (0 = clean), one line per model (VITO Fig. 2)."""
    fig = Figure(figsize=(5.5, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for label, result in zip(_labels(results), results):
        tasks = [t for t in result["tasks"] if "severity_mean" in t]
        if not tasks:
            continue
        clean = sum(t["accuracy"] for t in tasks) / len(tasks)
        levels = [sum(t["severity_mean"][i] for t in tasks) / len(tasks) for i in range(len(tasks[0]["severity_mean"]))]
        ax.plot(range(len(levels) + 1), [clean, *levels], marker="o", label=label)
    ax.set_xlabel("corruption severity (0 = clean; mean over noise, blur, contrast, JPEG)")
    ax.set_ylabel("mean accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    """Write a plot. A model name in a script the font lacks (CJK, say) is drawn as boxes; matplotlib
    would also print one warning per missing character, dozens of lines for one report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "model"


def _unique(stem: str, used: set[str]) -> str:
    """``stem``, or ``stem-2``, ``stem-3``...: labels that slug alike (repeats of one model, names
    with no ASCII letters) wrote one difference plot over another, and report.md showed it twice."""
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}-{n}"
    used.add(name)
    return name


def find_pair(results: Sequence[dict], names: Sequence[str]) -> tuple[int, int]:
    """Indices of the two models named (by table label or model name) in ``--diff A B``."""
    labels = _labels(results)
    found = []
    for name in names:
        hits = [i for i, label in enumerate(labels) if label == name]
        hits = hits or [i for i, r in enumerate(results) if name == str(r["model"])]
        if not hits:
            raise UserError(f"--diff {name}: no such model (available: {', '.join(labels)})")
        if len(hits) > 1:  # the first was taken without a word, perhaps the other run's results
            raise UserError(f"--diff {name}: names {len(hits)} rows; give one of their labels: "
                            + ", ".join(repr(labels[i]) for i in hits))  # fmt: skip
        found.append(hits[0])
    return found[0], found[1]


def write_report(
    results: Sequence[dict],
    out_dir: Path,
    pairs: Sequence[tuple[int, int]] | None = None,
    runs: Sequence[Path] = (),
) -> tuple[Path, Path]:
    """``out_dir/report.md`` with the table and every plot, and the PNGs beside it.

    ``pairs`` (base, other) get difference plots; by default every model against the first.
    ``runs`` (run folders with metrics.jsonl) get training curves; by default the runs that
    the results name as ``model_source`` when those folders hold a metrics.jsonl.
    Returns (report.md, accuracy.png).
    """
    out_dir = Path(out_dir)
    png = bar_plot(results, out_dir / "accuracy.png")
    labels = _labels(results)
    parts = ["# vivi evaluation report", "", results_table(results), f"![accuracy per task]({png.name})", ""]
    if pairs is None:  # every model against the first, where they share a task
        pairs = [(0, i) for i in range(1, len(results))]
        alone = [i for _, i in pairs if not _shared_tasks(results[0], results[i])]
        if alone:
            parts += [f"No difference plot for {', '.join(labels[i] for i in alone)}: no task in common with "
                      f"{labels[0]}.", ""]  # fmt: skip
        pairs = [(b, o) for b, o in pairs if o not in alone]
    used: set[str] = set()
    for base, other in pairs:
        name = _unique(f"diff-{_slug(labels[other])}-vs-{_slug(labels[base])}", used) + ".png"
        diff = difference_plot(results, base, other, out_dir / name)
        parts += [f"## {labels[other]} minus {labels[base]}", "",
                  f"Accuracy of {labels[other]} minus {labels[base]} in points, per task shared by both "
                  f"(above zero: {labels[other]} is better).", "",
                  f"![difference]({diff.name})", ""]  # fmt: skip
    if any("severity_mean" in t for r in results for t in r["tasks"]):
        sev = severity_plot(results, out_dir / "severity.png")
        parts += ["## Robustness to corruptions", "",
                  "Linear probe fitted on clean images, tested on ImageNet-C corruptions at severities 1-5.", "",
                  f"![accuracy per severity]({sev.name})", ""]  # fmt: skip
    if not runs:
        runs = [run for r in results if (run := _run_of(r.get("model_source"))) is not None]
    runs = list(dict.fromkeys(runs))  # one run's linear, knn and vtab1k results: its curves once
    if runs:
        curves = curves_plot(runs, out_dir / "curves.png")
        listed = ", ".join(str(r) for r in runs)
        parts += ["## Training curves", "", f"Runs: {listed}.", "", f"![curves]({curves.name})", ""]
    md = out_dir / "report.md"
    md.write_text("\n".join(parts), encoding="utf-8")  # model names may be any text
    return md, png
