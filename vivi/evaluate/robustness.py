"""Robustness to natural video perturbations: the ImageNet-Vid-Robust pm-k metric.

A classifier labels every frame of a sequence (all frames show the same object class).
An anchor frame counts as correct for pm-k only if it and every frame within k frames
of it (clipped to the sequence) are classified correctly (Shankar et al. 2019). Anchors
are every (2k+1)-th frame, starting at frame k, so their windows do not overlap; the last
``length mod (2k+1)`` frames of a sequence fall in no window and are not scored. A sequence
shorter than 2k+1 frames has one anchor in its middle, judged with the neighbours it has
(so with k above every sequence's length, pm-k asks for the whole sequence to be right).
k = 0 makes every frame an anchor and pm-0 equal to the anchor accuracy. Reported: accuracy
on anchors, pm-k accuracy, their difference, and Clopper-Pearson intervals for both.

The intervals treat every anchor as an independent trial. Anchors of one sequence show
the same object and are not independent, so the intervals are narrower than a
sequence-level resampling would give: read them as a lower bound on the uncertainty.

The classifier is a linear probe (logistic regression, C chosen on a held-out fifth of the
train shots, or of the train frames where their shots are unknown: :func:`probe_holdout`) on
the model's frozen features of a labelled train set. Sources:

- ``frames:DIR``: ``DIR/train/<class>/<any images>`` fit the probe;
  ``DIR/test/<class>/<video_id>/<frames>`` are the sequences (frames sorted by file name,
  numbers in names by value; frames in sub-folders of a video folder are read in path order).
  A test frame that is the same file as a train image (a link) is an error; copies are not
  detected, keeping train and test videos apart is the folder's author's job.
- ``world[:DIR]``: a ``vivi synth`` folder (default: rendered once into the cache). Shots
  whose objects all share one class are sequences labelled with it; shots of the first
  half of the videos train the probe, the second half's are evaluated.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import av
import numpy as np
from scipy.stats import beta
from tqdm import tqdm

from vivi.data.tasks import (
    IMAGE_EXTENSIONS,
    ArraySplit,
    FileSplit,
    ImageSplit,
    _checked_classes,
    _file_split,
    _scan_classes,
    default_cache_dir,
    stratified_holdout,
)
from vivi.atomic import write_json_atomic
from vivi.data.files import file_id, is_hidden, walk_files
from vivi.errors import UserError, listed, warn
from vivi.evaluate.encoders import Encoder
from vivi.evaluate.features import extract_features
from vivi.evaluate.linear import fit_linear_classifier
from vivi.evaluate.classifier import ImageClassifier

ALPHA = 0.05  # 95% intervals
WORLD_VIDEOS = 60  # the default built-in world: about 60 single-class shots per half
WORLD_SEED = 101  # distinct from the demo's and the tests' worlds
TRAIN_STRIDE = 2  # every other frame of a training shot (neighbouring frames add little)
SPEC_HELP = "robustness tasks: world, world:DIR (a vivi synth folder) or frames:DIR"


# ---- the metric


def anchors(length: int, k: int) -> list[int]:
    """Anchor frame indices of a sequence: every 2k+1 frames from k; the middle one if too short.

    Windows ``[a - k, a + k]`` tile the sequence from frame 0 without overlap; a tail shorter
    than a window (``length mod (2k+1)`` frames) gets no anchor. 11 frames: k=1 -> 1, 4, 7
    (frames 9, 10 unscored); k=2 -> 2, 7 (frame 10 unscored).
    """
    if length <= 0:
        return []
    if length < 2 * k + 1:
        return [length // 2]
    return list(range(k, length - k, 2 * k + 1))


def pm_k_outcomes(correct: Sequence[bool], k: int) -> tuple[list[bool], list[bool]]:
    """Per anchor of one sequence: (anchor frame correct, anchor and all frames within k correct)."""
    c = np.asarray(correct, dtype=bool)
    anchor_ok, pmk_ok = [], []
    for a in anchors(len(c), k):
        anchor_ok.append(bool(c[a]))
        pmk_ok.append(bool(c[max(0, a - k) : a + k + 1].all()))
    return anchor_ok, pmk_ok


def clopper_pearson(successes: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """Exact binomial (1 - alpha) interval of a proportion, as fractions in [0, 1]."""
    if n <= 0:
        return (math.nan, math.nan)
    lo = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, n - successes + 1))
    hi = 1.0 if successes == n else float(beta.ppf(1 - alpha / 2, successes + 1, n - successes))
    return lo, hi


def robustness_metrics(sequences: Sequence[tuple[np.ndarray, np.ndarray | int]], k: int) -> dict:
    """Anchor and pm-k accuracy (percent) with Clopper-Pearson intervals over (predictions, labels) sequences.

    ``n_sequences`` counts the sequences that gave an anchor: an empty one was counted though it
    contributed nothing to either accuracy.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    anchor_ok: list[bool] = []
    pmk_ok: list[bool] = []
    n_sequences = 0
    for predicted, labels in sequences:
        predicted = np.asarray(predicted)
        a, p = pm_k_outcomes(predicted == np.broadcast_to(labels, predicted.shape), k)
        anchor_ok += a
        pmk_ok += p
        n_sequences += bool(a)
    n = len(anchor_ok)
    if n == 0:
        raise ValueError("no anchors: every sequence is empty")
    n_anchor, n_pmk = sum(anchor_ok), sum(pmk_ok)
    return {
        "k": k,
        "n_sequences": n_sequences,
        "n_anchors": n,
        "anchor_accuracy": 100.0 * n_anchor / n,
        "pmk_accuracy": 100.0 * n_pmk / n,
        "difference": 100.0 * (n_anchor - n_pmk) / n,
        "anchor_ci": [100.0 * v for v in clopper_pearson(n_anchor, n)],
        "pmk_ci": [100.0 * v for v in clopper_pearson(n_pmk, n)],
    }


# ---- sources


@dataclass
class FrameSequence:
    name: str
    label: int
    frames: ImageSplit


@dataclass
class RobustnessTask:
    name: str
    classes: list[str]
    train: ImageSplit
    sequences: list[FrameSequence]
    source: str
    # the shot (or video folder) of each train frame, where known: the probe's C is then chosen on
    # whole held-out shots, not on frames whose neighbours it was fitted to (:func:`probe_holdout`)
    train_groups: np.ndarray | None = None


def load_robustness_task(spec: str, cache_dir: Path | None = None) -> RobustnessTask:
    kind, _, arg = spec.partition(":")
    if kind == "frames" and arg:
        return load_frame_folders(Path(arg).expanduser())
    if kind == "world":
        if arg:
            return load_world(Path(arg).expanduser())
        root = Path(cache_dir or default_cache_dir()) / "robustness-world"
        if not (root / "ground_truth.jsonl").exists():
            from vivi.data.synth import render_corpus

            render_corpus(root, videos=WORLD_VIDEOS, seed=WORLD_SEED, workers=None)
        return load_world(root)
    raise UserError(f"{spec}: unknown task spec ({SPEC_HELP})")


def load_frame_folders(root: Path) -> RobustnessTask:
    """``DIR/train/<class>/**`` (probe) and ``DIR/test/<class>/<video>/<frames>`` (sequences)."""
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise UserError(
                f"{root}: no {split}/ folder (layout: train/<class>/<images>, test/<class>/<video>/<frames>)"
            )
    train_files = _scan_classes(root / "train")
    if len(train_files) < 2:
        raise UserError(f"{root / 'train'}: need at least 2 class folders (train/<class>/<image>)")
    classes = sorted(train_files)
    _checked_classes(root / "test", classes)
    train_ids = _file_ids(p for files in train_files.values() for p in files)
    sequences, nested = [], []
    for label, cls in enumerate(classes):
        for video in sorted(p for p in (root / "test" / cls).iterdir() if p.is_dir() and not is_hidden(p.name)):
            frames = _video_frames(video)
            if not frames:
                raise UserError(f"{video}: no frames (expected image files, sorted by name)")
            shared = next((f for f in frames if file_id(f) in train_ids), None)
            if shared is not None:
                raise UserError(f"{shared}: the same file as a train/ image (a link); test frames must not train the probe")
            if len({f.parent for f in frames}) > 1:
                nested.append(video)
            split = FileSplit(frames, np.full(len(frames), label))
            sequences.append(FrameSequence(f"{cls}/{video.name}", label, split))
        loose = _frame_files(root / "test" / cls)
        if loose:
            raise UserError(f"{loose[0]}: frames must sit in a video folder (test/<class>/<video>/<frames>)")
    if nested:
        videos = f"{len(nested)} video folders hold" if len(nested) != 1 else "1 video folder holds"
        warn(f"{root / 'test'}: {videos} frames in several sub-folders, each read as one sequence in path order "
             f"(frames numbered by value): {listed([str(v.relative_to(root / 'test')) for v in nested])}")
    train = _file_split(train_files, classes)
    return RobustnessTask(root.resolve().name, classes, train, sequences, str(root), _folder_groups(root / "train", train))


def _folder_groups(train_dir: Path, train: FileSplit) -> np.ndarray | None:
    """Each train frame's folder below its class (``train/<class>/<video>/<frame>``), so frames of one
    video are held out together; a frame directly in its class folder is a group of its own. None
    when every frame is (nothing is known of their shots)."""
    def group(path: Path) -> str:
        try:
            rel = path.relative_to(train_dir)
        except ValueError:  # not below train/ as listed: its own group
            return str(path)
        return str(rel.parent) if len(rel.parts) > 2 else str(rel)

    groups = [group(p) for p in train.paths]
    if len(set(groups)) == len(groups):
        return None
    return np.array(groups)


def _file_ids(paths: Iterable[Path]) -> set[tuple[int, int]]:
    """The identities of files, so a test frame linked to a train image (symlink or hard link, as
    made when a train/ folder is assembled from the test videos) is caught: the probe would have
    been fitted on the very frames it is then scored on."""
    return {i for i in map(file_id, paths) if i is not None}


def _video_frames(video: Path) -> list[Path]:
    """The frames of a video folder at any depth, in path order (numbers by value): frames kept in
    ``<video>/frames/`` or ``<video>/<shot>/`` were left out without a word, while class folders
    are read at any depth. Hidden entries are skipped and linked folders followed alike."""
    frames = [p for p in walk_files(video) if p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(frames, key=lambda p: tuple(frame_order(Path(part)) for part in p.relative_to(video).parts))


def _frame_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, hidden ones left out: a folder copied from a Mac
    holds a ``._frame_0001.jpg`` AppleDouble file next to each frame, which is no image, and
    counting it as a frame used to drop every sequence as "unreadable"."""
    return [p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file()
            and p.suffix.lower() in IMAGE_EXTENSIONS]  # fmt: skip


def frame_order(path: Path) -> tuple[str | int, ...]:
    """Sort key of a frame file: its name with runs of digits compared as numbers, so unpadded
    ``frame_2.jpg`` comes before ``frame_10.jpg`` (plain name order put 10 next to 1, and pm-k
    would judge frames seconds apart as neighbours); zero-padded names sort as before."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", path.name)))


def _decode(path: Path) -> np.ndarray:
    """All frames of a video as uint8 ``[T, H, W, 3]``."""
    try:
        with av.open(str(path)) as container:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable video ({e})") from e


def load_world(root: Path) -> RobustnessTask:
    """Single-class shots of a ``vivi synth`` world: first half of the videos train, second half test."""
    from vivi.data.synth import CLASS_NAMES

    gt = root / "ground_truth.jsonl"
    try:
        rows = [json.loads(line) for line in gt.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise UserError(f"{gt}: not a vivi synth ground truth ({e})") from e
    rows.sort(key=lambda r: r["video"])
    n_train = len(rows) // 2
    if n_train == 0:
        raise UserError(f"{gt}: needs at least 2 videos (half train the probe, half are tested)")
    train_x, train_y, train_groups, sequences = [], [], [], []
    for i, row in enumerate(rows):
        shots = [(j, s) for j, s in enumerate(row["shots"]) if len({o["cls"] for o in s["objects"]}) == 1]
        if not shots:
            continue
        video = _decode(root / row["video"])
        _check_length(root / row["video"], len(video), row)
        for j, shot in shots:
            frames = video[shot["start_frame"] : shot["end_frame"] + 1]
            label = shot["objects"][0]["cls"]
            if i < n_train:
                train_x.append(frames[::TRAIN_STRIDE])
                train_y += [label] * len(train_x[-1])
                train_groups += [f"{row['video']}#shot{j}"] * len(train_x[-1])
            else:
                split = ArraySplit(frames, np.full(len(frames), label))
                sequences.append(FrameSequence(f"{row['video']}#shot{j}", label, split))
    if not train_y or not sequences:
        raise UserError(f"{root}: too few single-class shots to train and test (render more videos)")
    train = ArraySplit(np.concatenate(train_x), np.asarray(train_y))
    return RobustnessTask(f"world-{root.resolve().name}", list(CLASS_NAMES), train, sequences, str(root),
                          np.asarray(train_groups))  # fmt: skip


def _check_length(path: Path, decoded: int, row: dict) -> None:
    """A video that decodes to other than its ground truth's frame count (truncated copy,
    re-encoded at another rate) is an error: slicing shots out of it cut sequences short or
    left them empty without a word, and shifted frames would carry another shot's label."""
    expected = row.get("num_frames")
    last = max(s["end_frame"] for s in row["shots"]) + 1 if row["shots"] else 0
    if (expected is not None and decoded != expected) or decoded < last:
        want = expected if expected is not None else last
        raise UserError(f"{path}: decoded {decoded} frames, the ground truth expects {want} (truncated or re-encoded?)")


# ---- the protocol


def evaluate_robustness(
    enc: Encoder,
    spec: str,
    k: int = 4,
    device: str = "cpu",
    out_json: Path | None = None,
    model_name: str | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
    head: ImageClassifier | None = None,
) -> dict:
    """Fit the linear probe on the train frames, classify every sequence, score pm-k; write JSON.

    With ``head`` (a co-trained run's own classifier, :func:`head_classifier`) no probe is fitted:
    frames are classified by the head, its classes matched to the task's by name.

    The result has the suite format (one task entry, accuracy = pm-k accuracy) so that
    ``vivi report`` can read it, plus the anchor accuracy, the difference and the intervals.
    """
    task = load_robustness_task(spec, cache_dir)
    if head is not None:
        return _write(_head_result(task, head, k, progress), enc, model_name, out_json, k, "head")
    feats = extract_features(enc.model, task.train, enc.image_size, device=device, progress=progress,
                             desc=f"{task.name}/train")  # fmt: skip
    keep = task.train.readable()  # a broken file was read as a black image: not a training example
    feats, labels = feats[keep], task.train.labels[keep]
    groups = task.train_groups[keep] if task.train_groups is not None else None
    fit_idx, val_idx, val_from = probe_holdout(labels, groups)
    if len(val_idx) == 0 or len(np.unique(labels[fit_idx])) < 2:
        raise UserError(f"{task.source}: too few labelled train frames to fit and validate a probe")
    predict, c = fit_linear_classifier(feats[fit_idx], labels[fit_idx], feats[val_idx], labels[val_idx])

    def classify(seq: FrameSequence) -> np.ndarray:
        return predict(extract_features(enc.model, seq.frames, enc.image_size, device=device, progress=False))

    outcomes = _sequence_outcomes(task, classify, progress)
    metrics = robustness_metrics(outcomes, k)
    entry = {"task": task.name, "group": "robustness", "protocol": "robustness", "accuracy": metrics["pmk_accuracy"],
             **metrics, "C": c, "val_from": val_from, "n_train": len(labels), "num_classes": len(task.classes),
             "source": task.source,
             **_skipped(task)}  # fmt: skip
    return _write(entry, enc, model_name, out_json, k, "linear probe")


def probe_holdout(labels: np.ndarray, groups: np.ndarray | None, fraction: float = 0.2,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """(fit, val) indices for choosing the probe's C, and how val was made.

    With ``groups`` (each frame's shot or video), ``fraction`` of each class's groups is held out
    whole: frames of one shot are near-copies, so a val frame beside its fitted neighbours scored
    what the probe memorised and C drifted towards weak regularisation. A class with a single group
    gives frames, as without groups (:func:`stratified_holdout`)."""
    fit, val = stratified_holdout(labels, fraction, seed, groups)
    said = "frames held out" if groups is None else "shots held out whole"
    return fit, val, f"{fraction:.0%} of train {said} (seed {seed})"


def _sequence_outcomes(
    task: RobustnessTask, classify: Callable[[FrameSequence], np.ndarray], progress: bool
) -> list[tuple[np.ndarray, int]]:
    """``(predictions, label)`` per sequence; a sequence with a frame that does not decode is left
    out whole (dropping the frame would make its neighbours look adjacent), with a warning."""
    outcomes, dropped = [], []
    for seq in tqdm(task.sequences, desc=f"{task.name}/sequences", disable=not progress):
        predicted = classify(seq)
        if seq.frames.readable().all():
            outcomes.append((predicted, seq.label))
        else:
            dropped.append(seq.name)
    if dropped:
        warn(f"{task.source}: left out {len(dropped)} sequences with unreadable frames: {listed(dropped)}")
    if not outcomes:
        raise UserError(f"{task.source}: no test sequence whose frames all decode")
    return outcomes


def _skipped(task: RobustnessTask) -> dict:
    """``{"skipped_images": [...]}`` naming the files that did not decode, or ``{}``."""
    broken = {p: r for split in [task.train, *(s.frames for s in task.sequences)] for p, r in split.broken.items()}
    named = [f"{p} ({r})" for p, r in broken.items()]
    if named:
        warn(f"{task.source}: skipped {len(named)} unreadable images: {listed(named)}")
    return {"skipped_images": named} if named else {}


def _head_result(task: RobustnessTask, head: ImageClassifier, k: int, progress: bool) -> dict:
    """pm-k of a trained classification head; its class names must cover the task's."""
    missing = sorted(set(task.classes) - set(head.classes))
    if missing:
        raise UserError(f"{task.source}: classes the model's head does not know: {', '.join(missing[:5])} "
                        f"(head classes: {', '.join(head.classes[:10])})")  # fmt: skip
    to_task = np.array([task.classes.index(c) if c in task.classes else -1 for c in head.classes])

    def classify(seq: FrameSequence) -> np.ndarray:
        images = seq.frames.images(np.arange(len(seq.frames)), head.size)
        return to_task[head.probabilities(images).argmax(1)]

    metrics = robustness_metrics(_sequence_outcomes(task, classify, progress), k)
    return {"task": task.name, "group": "robustness", "protocol": "robustness", "accuracy": metrics["pmk_accuracy"],
            **metrics, "num_classes": len(task.classes), "source": task.source, **_skipped(task)}


def _write(entry: dict, enc: Encoder, model_name: str | None, out_json: Path | None, k: int, classifier: str) -> dict:
    entry = {**entry, "classifier": classifier}
    result = {"model": model_name or enc.name, "protocol": "robustness", "image_size": enc.image_size, "k": k,
              "tasks": [entry], "groups": {"robustness": entry["accuracy"]}, "mean": entry["accuracy"]}
    if enc.source:  # the run (a run folder's, or a checkpoint's): `vivi report` finds its training curves
        result["model_source"] = enc.source
    if enc.checkpoint:  # which step of it, as the other protocols' results say
        result["checkpoint"] = enc.checkpoint
    if out_json is not None:
        write_json_atomic(out_json, result)
    return result


def format_robustness(result: dict) -> str:
    """One line per task: anchor and pm-k accuracy with their 95% intervals, and the drop."""
    lines = []
    for e in result["tasks"]:
        a, p = e["anchor_ci"], e["pmk_ci"]
        lines.append(
            f"{result['model']} on {e['task']} (k={e['k']}, {e['n_anchors']} anchors in {e['n_sequences']} sequences): "
            f"anchor {e['anchor_accuracy']:.1f}% [{a[0]:.1f}, {a[1]:.1f}], pm-{e['k']} {e['pmk_accuracy']:.1f}% "
            f"[{p[0]:.1f}, {p[1]:.1f}], drop {e['difference']:.1f} points"
        )
    return "\n".join(lines)
