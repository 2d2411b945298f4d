"""VideoNet-style curation (VITO): choose videos so the class histogram of the selection matches a
target distribution (uniform by default), by scoring each video's sampled frames with an image
classifier.

A video's class distribution is the mean of its frames' class probabilities; its label is the
most probable class, its confidence that probability. The largest selection whose histogram
equals the target is ``N = min_c count_c / target_c`` videos; each class contributes its
``round(N * target_c)`` most confident videos. Weights (target share / observed share of the
video's class) are reported too, for users who prefer weighting to dropping.
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vivi.data.frames import load_frame
from vivi.data.shards import read_index
from vivi.errors import UserError

Classify = Callable[[torch.Tensor], np.ndarray]  # uint8 [N, 3, S, S] -> probabilities [N, C]


@dataclass
class Curation:
    classes: list[str]
    sources: list[str]  # every scored video
    labels: np.ndarray  # [n] most probable class per video
    confidence: np.ndarray  # [n]
    selected: np.ndarray  # indices into sources
    weights: np.ndarray  # [n] target share / observed share of each video's class (0 where the target is 0)
    target: np.ndarray  # [C] the distribution aimed at
    locations: list[str] = field(default_factory=list)  # absolute paths (or URLs) of ``sources``, for the list

    def histogram(self, indices: np.ndarray | None = None) -> np.ndarray:
        labels = self.labels if indices is None else self.labels[indices]
        return np.bincount(labels, minlength=len(self.classes))


def parse_target(spec: str, classes: Sequence[str]) -> np.ndarray:
    """``uniform``, or a JSON file ``{"class": weight, ...}`` (unnamed classes get 0), normalised."""
    if spec == "uniform":
        return np.full(len(classes), 1 / len(classes))
    path = Path(spec)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{spec}: expected 'uniform' or a JSON file of class -> weight ({e})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a JSON object of class -> weight, e.g. {{\"dog\": 2, \"cat\": 1}}")
    unknown = sorted(set(raw) - set(classes))
    if unknown:
        raise UserError(f"{path}: classes the classifier does not know: {', '.join(unknown[:5])} (known: {', '.join(classes[:10])}...)")
    bad = [c for c, w in raw.items() if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w)]
    if bad:
        raise UserError(f"{path}: the weight of {bad[0]} is {raw[bad[0]]!r}; expected a finite number >= 0")
    target = np.array([float(raw.get(c, 0.0)) for c in classes])
    if (target < 0).any() or target.sum() <= 0:
        raise UserError(f"{path}: weights must be >= 0 with a positive sum")
    return target / target.sum()


def match_distribution(
    labels: np.ndarray, confidence: np.ndarray, target: np.ndarray, classes: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(selected indices, per-video weights): the largest selection whose histogram is ``target``."""
    counts = np.bincount(labels, minlength=len(target))
    wanted = target > 0
    if not (counts[wanted] > 0).all():
        missing = np.flatnonzero(wanted & (counts == 0))
        named = ", ".join(classes[c] for c in missing) if classes is not None else str(missing.tolist())
        raise UserError(
            f"no video is classified as class(es) {named}, which the target asks for "
            "(give --target a JSON of class weights without them)"
        )
    total = min(counts[c] / target[c] for c in np.flatnonzero(wanted))
    selected = []
    for c in np.flatnonzero(wanted):
        members = np.flatnonzero(labels == c)
        keep = min(len(members), int(round(total * target[c])))
        selected.extend(members[np.argsort(-confidence[members], kind="stable")[:keep]])
    observed = counts / counts.sum()
    weights = np.where(observed[labels] > 0, target[labels] / np.maximum(observed[labels], 1e-12), 0.0)
    return np.sort(np.asarray(selected, dtype=np.int64)), weights


def video_frames(shard: Path, keys: set[str], per_video: int, size: int) -> dict[str, torch.Tensor]:
    """Up to ``per_video`` evenly spaced sampled frames of each video ``keys`` in a shard."""
    members: dict[str, list[tuple[str, bytes]]] = {}
    with tarfile.open(shard) as tar:
        for m in tar:
            key, _, suffix = m.name.partition(".")
            if key in keys and suffix.endswith(".jpg"):
                members.setdefault(key, []).append((suffix, tar.extractfile(m).read()))
    out = {}
    for key, frames in members.items():
        frames.sort()
        pick = np.linspace(0, len(frames) - 1, min(per_video, len(frames))).round().astype(int)
        out[key] = torch.stack([load_frame(frames[i][1], size) for i in pick])
    return out


def curate(
    outs: Sequence[Path], classify: Classify, classes: list[str], size: int, target: str = "uniform",
    per_video: int = 8, progress: bool = True,
) -> Curation:
    """Score the ok videos of ingest folders ``outs`` and choose the matching selection."""
    goal = parse_target(target, classes)  # before the scoring: a bad target file used to cost all of it
    records = [r for r in read_index(outs) if r.get("status") == "ok" and r.get("shard")]
    if not records:
        raise UserError(f"{', '.join(map(str, outs))}: no ingested videos with status ok")
    by_shard: dict[str, list[dict]] = {}
    for r in records:
        by_shard.setdefault(r["shard"], []).append(r)
    sources, locations, probs = [], [], []
    with tqdm(total=len(records), desc="curate", unit="video", disable=not progress) as bar:
        for shard, recs in sorted(by_shard.items()):
            frames = video_frames(Path(shard), {r["key"] for r in recs}, per_video, size)
            for r in recs:
                if r["key"] in frames:
                    sources.append(r["source"])
                    locations.append(r.get("location") or _located(r["source"]))
                    probs.append(classify(frames[r["key"]]).mean(axis=0))
                bar.update(1)
    p = np.stack(probs)
    labels, confidence = p.argmax(1), p.max(1)
    selected, weights = match_distribution(labels, confidence, goal, classes)
    return Curation(classes, sources, labels, confidence, selected, weights, goal, locations)


def _located(source: str) -> str:
    """For an index written before records kept ``location``: a relative source made absolute
    when it exists from here (curation run where ingest ran), else as it was given."""
    if "://" in source or Path(source).is_absolute() or not Path(source).exists():
        return source
    return str(Path(source).resolve())


def write_curation(result: Curation, out: Path) -> tuple[Path, Path]:
    """``out``: the selected sources, one per line (an input of ``vivi ingest``); ``out.json``: the
    histograms before and after, and every video's label, confidence and weight."""
    out.parent.mkdir(parents=True, exist_ok=True)
    listed = result.locations or result.sources  # absolute: the list works wherever it is read from
    out.write_text("".join(listed[i] + "\n" for i in result.selected))
    chosen = set(result.selected.tolist())
    report = {
        "classes": result.classes,
        "target": result.target.round(6).tolist(),
        "before": result.histogram().tolist(),
        "after": result.histogram(result.selected).tolist(),
        "videos": [
            {"source": s, "label": result.classes[int(c)], "confidence": round(float(q), 4), "weight": round(float(w), 4),
             "selected": i in chosen}
            for i, (s, c, q, w) in enumerate(zip(result.sources, result.labels, result.confidence, result.weights))
        ],
    }
    details = out.with_name(out.name + ".json")
    details.write_text(json.dumps(report, indent=1) + "\n")
    return out, details


def format_histograms(result: Curation) -> str:
    before, after = result.histogram(), result.histogram(result.selected)
    width = max(len(c) for c in result.classes)
    lines = [f"{'class':<{width}}  before  after  target"]
    for c, b, a, t in zip(result.classes, before, after, result.target):
        lines.append(f"{c:<{width}}  {b:6d}  {a:5d}  {t:6.3f}")
    lines.append(f"{'total':<{width}}  {before.sum():6d}  {after.sum():5d}")
    return "\n".join(lines)
