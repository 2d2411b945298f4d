"""VideoNet-style curation (VITO): choose videos so the class histogram of the selection matches a
target distribution (uniform by default), by scoring each video's sampled frames with an image
classifier.

A video's class distribution is the mean of its frames' class probabilities; its label is the
most probable class, its confidence that probability. The largest selection whose histogram
equals the target is ``N = min_c count_c / target_c`` videos; each class contributes its
``round(N * target_c)`` most confident videos. Weights (target share / observed share of the
video's class) are reported too, for users who prefer weighting to dropping.

A target that cannot be met still gives a selection, the closest one, with a warning: a class
the target asks for but no video is classified as is left out of the target (the others keep
their ratios), since the scoring is the costly part and an error would throw it all away; a
class whose share rounds to no video is named. Only a target none of whose classes has a video
is an error, naming the classes the videos do have. Videos that cannot be read (frames missing
from their shard, a shard cut short) are left out with one warning each kind.
"""

from __future__ import annotations

import json
import math
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from tqdm import tqdm

from vivi.data.frames import load_frame
from vivi.data.remote import open_file, read_failed, reason
from vivi.data.shards import read_index
from vivi.errors import UserError, listed, warn

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
    """(selected indices, per-video weights): the largest selection whose histogram is ``target``,
    or where that cannot be met the closest one, with a warning saying how it differs."""
    names = list(classes) if classes is not None else [str(c) for c in range(len(target))]
    counts = np.bincount(labels, minlength=len(target))
    target = _reachable_target(counts, target, names)
    wanted = target > 0
    total = min(counts[c] / target[c] for c in np.flatnonzero(wanted))
    selected = []
    for c in np.flatnonzero(wanted):
        members = np.flatnonzero(labels == c)
        keep = min(len(members), int(round(total * target[c])))
        selected.extend(members[np.argsort(-confidence[members], kind="stable")[:keep]])
    rounded = [names[c] for c in np.flatnonzero(wanted) if int(round(total * target[c])) == 0]
    if rounded:
        warn(f"--target: the share of {listed(rounded)} rounds to no video in the largest selection that keeps "
             f"the target's ratios ({len(selected)} videos); none of them kept")
    observed = counts / counts.sum()
    weights = np.where(observed[labels] > 0, target[labels] / np.maximum(observed[labels], 1e-12), 0.0)
    return np.sort(np.asarray(selected, dtype=np.int64)), weights


def _reachable_target(counts: np.ndarray, target: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """``target`` over the classes that have videos, renormalised, with a warning when that drops a
    class: keeping the others' ratios is the closest selection, and the scoring is not lost."""
    wanted = target > 0
    missing = np.flatnonzero(wanted & (counts == 0))
    if not len(missing):
        return target
    asked = [f"{names[c]} ({target[c]:.0%})" for c in missing]
    if len(missing) == wanted.sum():
        found = [f"{names[c]} ({counts[c]})" for c in np.argsort(-counts, kind="stable") if counts[c]]
        raise UserError(f"--target: no video is classified as any class it asks for ({listed(asked)}); the videos "
                        f"are classified as {listed(found)}: give --target a JSON of weights for those")  # fmt: skip
    warn(f"--target cannot be met: no video is classified as {listed(asked)}; kept the closest selection, the "
         f"target over the other {int(wanted.sum()) - len(missing)} classes in the same ratios")  # fmt: skip
    reachable = np.where(counts > 0, target, 0.0)
    return reachable / reachable.sum()


def video_frames(shard: str, keys: set[str], per_video: int, size: int) -> tuple[dict[str, torch.Tensor], str | None]:
    """Up to ``per_video`` evenly spaced sampled frames of each video ``keys`` in a shard, and why the
    shard ended early (None when it is whole)."""
    members, cut = _shard_frames(shard, keys)
    out = {}
    for key, frames in members.items():
        frames.sort()
        pick = np.linspace(0, len(frames) - 1, min(per_video, len(frames))).round().astype(int)
        out[key] = torch.stack([load_frame(frames[i][1], size) for i in pick])
    return out, cut


def _shard_frames(shard: str, keys: set[str]) -> tuple[dict[str, list[tuple[str, bytes]]], str | None]:
    """The JPEG members of videos ``keys``, and the reason a shard was cut short (None when whole). A
    cut shard's videos before the cut are kept; the one the cut fell in may lack frames and is not."""
    members: dict[str, list[tuple[str, bytes]]] = {}
    last, cut = None, None
    try:
        with open_file(shard) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for m in tar:
                key, _, suffix = m.name.partition(".")
                last = key
                if key in keys and suffix.endswith(".jpg"):
                    members.setdefault(key, []).append((suffix, tar.extractfile(m).read()))
            if not _ends_whole(f, tar.offset):  # tarfile ends quietly at a header cut short
                cut = "cut short: it ends without the end-of-archive blocks"
    except Exception as e:
        if isinstance(e, UserError) or not read_failed(shard, e):
            raise
        cut = reason(e)
    if cut and last is not None:
        members.pop(last, None)
    return members, cut


def _ends_whole(f: BinaryIO, offset: int) -> bool:
    """Whether the tar read to ``offset`` ends there with a zero block, as a complete archive does."""
    f.seek(offset)
    block = f.read(tarfile.BLOCKSIZE)
    return len(block) == tarfile.BLOCKSIZE and not block.strip(b"\0")


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
    lost: list[tuple[dict, str | None]] = []  # (record, why its shard ended early) of videos with no frames read
    with tqdm(total=len(records), desc="curate", unit="video", disable=not progress) as bar:
        for shard, recs in sorted(by_shard.items()):
            frames, cut = video_frames(shard, {r["key"] for r in recs}, per_video, size)
            for r in recs:
                if r["key"] in frames:
                    sources.append(r["source"])
                    locations.append(r.get("location") or _located(r["source"]))
                    probs.append(classify(frames[r["key"]]).mean(axis=0))
                else:
                    lost.append((r, cut))
                bar.update(1)
    _warn_lost(lost)
    if not probs:
        folders = ", ".join(map(str, outs))
        raise UserError(f"{folders}: none of the {len(records)} ok videos has frames that could be read")
    p = np.stack(probs)
    labels, confidence = p.argmax(1), p.max(1)
    selected, weights = match_distribution(labels, confidence, goal, classes)
    return Curation(classes, sources, labels, confidence, selected, weights, goal, locations)


def _warn_lost(lost: list[tuple[dict, str | None]]) -> None:
    """One warning per kind of loss, naming the first video and its shard: videos the index calls ok
    whose frames are not in their shard, and videos of shards cut short (a copy that stopped early)."""
    missing = [r for r, cut in lost if cut is None]
    if missing:
        first = missing[0]
        warn(f"{first['shard']}: holds no frames of {first['source']}, an ok video of its index"
             f"{f' (and of {len(missing) - 1} more)' if len(missing) > 1 else ''}; left out")
    unread = [(r, cut) for r, cut in lost if cut is not None]
    if unread:
        (first, cut), shards = unread[0], len({r["shard"] for r, _ in unread})
        more = f" in {shards} shards" if shards > 1 else ""
        warn(f"{first['shard']}: unreadable ({cut}); left out {len(unread)} video(s){more} whose frames it "
             f"did not give whole, the first {first['source']}")  # fmt: skip


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
    kept: list[str] = []
    broken: list[str] = []  # a path with a line break would read back as two
    for i in result.selected:
        (broken if "\n" in listed[i] or "\r" in listed[i] else kept).append(listed[i])
    if broken:
        warn(f"{out}: left out {len(broken)} selected video(s) whose path holds a line break, e.g. "
             f"{broken[0]!r}: a list holds one path per line (they are in {out.name}.json)")  # fmt: skip
    # a name that is not UTF-8 is written as its own bytes, which `vivi ingest` reads back the same
    out.write_bytes("".join(f"{line}\n" for line in kept).encode("utf-8", "surrogateescape"))
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
