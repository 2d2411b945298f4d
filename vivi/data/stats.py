"""`vivi ingest-stats`: one or several ingest outputs read as one dataset, summarised and plotted.

Typical use after a SLURM array wrote ``OUT/part-0 ... OUT/part-N``: check that the parts
together hold what you expect (counts, hours, why videos were skipped or failed) and look at
the distributions of shots per video and shot length before pretraining on them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vivi.data.ingest import IngestSummary
from vivi.data.remote import is_url
from vivi.data.shards import INDEX_NAME, read_index
from vivi.errors import UserError

STATUSES = ("ok", "skipped", "error")
TOP_REASONS = 5
PLOT_NAMES = ("shots_per_video.png", "shot_seconds.png")
# A measured quantity standing alone ("lasts 0.50 s"): a decimal, not a count or setting
# ("0 bytes", "min_shots=3"), nor a number inside a name or path ("clip3.5.mp4", "/data/1.5/a.mp4")
_MEASURE = re.compile(r"(?<![\w./-])\d+\.\d+(?![\w./])")


def reason_kind(reason: str) -> str:
    """A reason with its measured decimals as ``#``: a million short clips are one kind of skip
    ("the video lasts # s; ..."), not a million reasons that differ in their durations."""
    return _MEASURE.sub("#", reason)


@dataclass
class DatasetStats:
    """What the index records of a dataset say, in numbers."""

    folders: int = 0
    summary: IngestSummary = field(default_factory=IngestSummary)
    duplicates: int = 0  # records whose key was already seen in an earlier folder (counted once)
    reasons: dict[str, Counter[str]] = field(default_factory=dict)  # status -> reason kind -> count
    shots_per_video: list[int] = field(default_factory=list)  # of ok videos
    shot_seconds: list[float] = field(default_factory=list)  # of the shots of ok videos


def load_records(outs: Sequence[str | Path]) -> list[dict]:
    """The index records of the ingest folders OUTS (local or URLs), checked to exist first
    (one-line errors; ``read_index`` names a URL without an index)."""
    if not outs:
        raise UserError("no ingest folder given")
    for out in (Path(o) for o in outs if not is_url(o)):
        if not out.is_dir():
            raise UserError(f"{out}: no such folder")
        if not (out / INDEX_NAME).is_file():
            raise UserError(f"{out}: no {INDEX_NAME} (not an ingest output; run `vivi ingest` into it first)")
    return read_index(outs)


def compute_stats(records: Iterable[dict], folders: int = 1) -> DatasetStats:
    """Counts over the records, each video key once (the first record of a key wins)."""
    stats = DatasetStats(folders=folders, reasons={s: Counter() for s in STATUSES})
    seen: set[str] = set()
    for record in records:
        if record["key"] in seen:
            stats.duplicates += 1
            continue
        seen.add(record["key"])
        stats.summary.add_record(record)
        status = record["status"]
        stats.reasons.setdefault(status, Counter())[reason_kind(record.get("error") or "-")] += 1
        if status == "ok":
            shots = record.get("shots") or []
            stats.shots_per_video.append(len(shots))
            stats.shot_seconds += [round(s["end_s"] - s["start_s"], 6) for s in shots]
    return stats


def format_stats(stats: DatasetStats, top: int = TOP_REASONS) -> str:
    """A few lines: the totals (IngestSummary's wording), per status its count and top reasons."""
    s = stats.summary
    lines = [f"{stats.folders} ingest folder{'s' if stats.folders != 1 else ''}: {s.counts()}."]
    if stats.duplicates:
        lines.append(f"{stats.duplicates} duplicate records (same video in several folders) counted once.")
    if stats.shots_per_video:
        n = len(stats.shots_per_video)
        mean_len = sum(stats.shot_seconds) / len(stats.shot_seconds) if stats.shot_seconds else 0.0
        lines.append(
            f"ok videos: {s.shots / n:.2f} shots per video (min {min(stats.shots_per_video)}, "
            f"max {max(stats.shots_per_video)}); mean shot length {mean_len:.2f} s"
        )
    for status in STATUSES:
        reasons = stats.reasons.get(status, Counter())
        lines.append(f"  {status:<8} {sum(reasons.values())}")
        if status == "ok":
            if s.videos_short:  # kept, but their files declare more: cut short, most likely
                lines.append(f"    {s.videos_short:>6}  end well before the length their files declare "
                             "(cut short? index field declared_s)")  # fmt: skip
            continue
        shown = len(reasons) if len(reasons) <= top + 1 else top  # a lone reason fits where "(1 other)" would
        for reason, count in reasons.most_common(shown):
            lines.append(f"    {count:>6}  {reason}")
        if hidden := len(reasons) - shown:
            lines.append(f"    ({hidden} other reason{'s' if hidden != 1 else ''})")
    return "\n".join(lines)


def write_histograms(stats: DatasetStats, out_dir: Path) -> list[Path]:
    """PNG histograms of shots per ok video and of shot length (s); returns their paths."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir.mkdir(parents=True, exist_ok=True)
    shots_max = max(stats.shots_per_video, default=1)
    plots = [
        (stats.shots_per_video, "shots per video", [b - 0.5 for b in range(1, shots_max + 2)]),
        (stats.shot_seconds, "shot length (s)", 30),
    ]
    paths = []
    for name, (values, xlabel, bins) in zip(PLOT_NAMES, plots, strict=True):
        fig = Figure(figsize=(5, 3.2), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        if values:
            ax.hist(values, bins=bins, color="tab:blue", edgecolor="white")
        else:
            ax.text(0.5, 0.5, "no ok videos", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("ok videos" if name == PLOT_NAMES[0] else "shots")
        ax.set_title(f"{xlabel}: {len(values)} values")
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path)
        paths.append(path)
    return paths


def ingest_stats(outs: Sequence[str | Path], out_dir: Path | None = None) -> tuple[DatasetStats, list[Path]]:
    """Read OUTS as one dataset; write the histograms to OUT_DIR (default: the first OUT)."""
    if out_dir is None and outs and is_url(outs[0]):
        raise UserError(f"{outs[0]} is a URL: give -o DIR for the histograms")
    stats = compute_stats(load_records(outs), folders=len(outs))
    return stats, write_histograms(stats, Path(out_dir) if out_dir is not None else Path(outs[0]))
