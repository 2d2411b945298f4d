"""Run one evaluation protocol over a list of tasks, resumably, and summarise per group.

A per-task protocol is a function ``(model, task, settings) -> metrics`` registered in
``PROTOCOLS``; metrics hold at least ``accuracy`` (percent). ``linear`` (logistic
regression) and ``knn`` (weighted kNN) share the feature extraction; ``finetune`` is one
VTAB fine-tune with a given setting. ``vtab1k`` chooses its setting across the whole
suite, so it runs as a suite (vivi.evaluate.vtab1k), resumable per run.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from vivi.data.tasks import ImageTask, check_readable, skipped_images, skipped_text
from vivi.atomic import file_lock, write_json_atomic
from vivi.errors import UserError, listed, warn
from vivi.evaluate.features import extract_features
from vivi.evaluate.finetune import FinetuneSetting
from vivi.evaluate.fingerprint import task_fingerprint, weights_fingerprint
from vivi.evaluate.metrics import accuracy, balanced_accuracy
from vivi.provenance import provenance
from vivi.evaluate.knn import knn_probe
from vivi.evaluate.corruptions import CORRUPTIONS, SEVERITIES, CorruptedSplit
from vivi.evaluate.linear import fit_linear_classifier, linear_probe
from vivi.evaluate.vtab1k import FinetuneTrials, Trial, run_vtab1k, vtab1k_scale

GROUP_ORDER = ("natural", "specialized", "structured")
NOT_COMPARED_ON_RESUME = ("model_source", "checkpoint")  # informative only: a moved run folder still resumes
# (a checkpoint's step is compared, by _check_same_checkpoint)
FINGERPRINTS = ("weights", "data")  # absent from files written before they existed: resumed unchecked


@dataclass(frozen=True)
class EvalSettings:
    """What every protocol needs besides the model and the task."""

    image_size: int
    batch_size: int
    device: str | torch.device
    progress: bool
    scale: str = "tiny"
    setting: FinetuneSetting | None = None  # the finetune protocol's (lr, steps)


def _split_features(model: torch.nn.Module, task: ImageTask, settings: EvalSettings) -> list:
    """``[train x, train y, val x, val y, test x, test y]``: frozen features and labels of each
    split (shared by the probes), without the images that turned out unreadable. An image folder's
    val held out of train/ is drawn again among the images that decoded (:meth:`HeldOut.redraw`),
    from the features just extracted: no image is decoded twice."""
    arrays, full = [], []
    for name in ("train", "val", "test"):
        split = getattr(task, name)
        feats = extract_features(
            model,
            split,
            settings.image_size,
            batch_size=settings.batch_size,
            device=settings.device,
            progress=settings.progress,
            desc=f"{task.name}/{name}",
        )
        keep = split.readable()
        arrays += [feats[keep], split.labels[keep]]
        full.append(feats)
    if task.held_out is not None:
        arrays[:4] = _redrawn(task, full[0], full[1])
    check_readable(task, arrays[1], arrays[5], arrays[3])
    return arrays


def _redrawn(task: ImageTask, train_x: np.ndarray, val_x: np.ndarray) -> list:
    """``[train x, train y, val x, val y]`` of the hold-out drawn again over the train/ files that
    decoded, from the features of the first draw's train and val (together: every file of train/)."""
    held = task.held_out
    pool_x = np.empty((len(held.pool), train_x.shape[1]), dtype=train_x.dtype)
    pool_x[held.train_idx], pool_x[held.val_idx] = train_x, val_x
    kept, val = held.redraw()
    labels = held.pool.labels
    return [pool_x[kept], labels[kept], pool_x[val], labels[val]]


def _linear(model: torch.nn.Module, task: ImageTask, settings: EvalSettings) -> dict:
    """Frozen features of each split, then the logistic-regression probe."""
    arrays = _split_features(model, task, settings)
    return {**linear_probe(*arrays), **_val_coverage(task, arrays[3]), **_test_coverage(task, arrays[5])}


def _knn(model: torch.nn.Module, task: ImageTask, settings: EvalSettings) -> dict:
    """Frozen features of each split, then weighted kNN on L2-normalised features."""
    arrays = _split_features(model, task, settings)
    return {**knn_probe(*arrays), **_val_coverage(task, arrays[3]), **_test_coverage(task, arrays[5])}


def _val_from(task: ImageTask) -> dict:
    """``{"val_from": how the split that chose the setting was made}`` ("val/", "held out of train/ (20%,
    seed 0)", "validation split", "train[800:1000]", ...); {} for a task built without saying."""
    return {"val_from": task.val_from} if task.val_from else {}


def _val_coverage(task: ImageTask, val_y: np.ndarray) -> dict:
    """``{"val_missing_classes": [names]}`` (and a warning) when classes have no image in val.

    The probe's setting is chosen on val. A class with one training image (or a 100:1 imbalance)
    is never held out of train/ into val, so val scored 100% for every C while the chosen C
    predicted the majority class on test (50%); the results gave no hint why. Empty when every
    class is in val."""
    missing = sorted(set(range(len(task.classes))) - set(int(y) for y in val_y))
    if not missing:
        return {}
    names = [task.classes[c] for c in missing]
    if task.held_out is not None:  # held out among the images that decode: only a class of one is never held out
        why = "a class with one readable training image is never held out of train/; add val/"
    else:
        why = "its images in val/ are unreadable: listed with the skipped images"
    warn(f"{task.source or task.name}: no validation image of class {listed(names)} ({why}): the probe's setting "
         "was chosen without it")  # fmt: skip
    return {"val_missing_classes": names}


def _test_coverage(task: ImageTask, test_y: np.ndarray, say: bool = True) -> dict:
    """``{"test_missing_classes": [names]}`` (and, with ``say``, a warning) when classes have no
    readable test image (every test/<class>/ file broken): the result said 100% on n_test 3, over
    the other class only, without a hint. Recorded, not refused: the measurement over the classes
    left is still a true one, the features (an hour on a large folder) are already extracted, and
    the entry names the classes it leaves out, as ``val_missing_classes`` does; a task with no
    readable test image at all is refused (:func:`check_readable`). {} when every class is in test."""
    missing = sorted(set(range(len(task.classes))) - set(int(y) for y in test_y))
    if not missing:
        return {}
    names = [task.classes[c] for c in missing]
    if say:
        _warn_test_missing(task, names)
    return {"test_missing_classes": names}


def _warn_test_missing(task: ImageTask, names: list[str]) -> None:
    warn(f"{task.source or task.name}: no readable test image of class {listed(names)} (listed with the skipped "
         "images): accuracy and balanced accuracy are over the other classes only")  # fmt: skip


def _finetune(model: torch.nn.Module, task: ImageTask, settings: EvalSettings) -> dict:
    """One fine-tune with a fixed setting on the VTAB-1k train800 + val200, scored on test (seed 0)."""
    scale = vtab1k_scale(settings.scale)
    setting = settings.setting or scale.settings()[0]
    trials = FinetuneTrials(model, settings.image_size, scale, settings.device, settings.progress, strict=False)
    scores = trials.evaluate(Trial(task, setting, "final", seed=0))
    _, train_y, _, val_y, _, test_y = trials.data(task)  # what was used: a small folder is used whole
    return {**scores, "lr": setting.lr, "steps": setting.steps, "n_train": len(train_y) + len(val_y),
            "n_test": len(test_y), **_test_coverage(task, test_y)}


def _corruptions(model: torch.nn.Module, task: ImageTask, settings: EvalSettings) -> dict:
    """The linear probe fitted on clean train/val features, tested on the clean test split and on
    each corruption at severities 1-5 (VITO's Figure 2); ``accuracy`` is the clean one."""
    train, train_y, val, val_y, test, y = _split_features(model, task, settings)
    predict, c = fit_linear_classifier(train, train_y, val, val_y)
    keep = task.test.readable()
    corrupted = {}
    for name in CORRUPTIONS:
        corrupted[name] = []
        for severity in SEVERITIES:
            feats = extract_features(
                model, CorruptedSplit(task.test, name, severity), settings.image_size,
                batch_size=settings.batch_size, device=settings.device, progress=False,
            )
            corrupted[name].append(round(accuracy(predict(feats[keep]), y), 4))
    by_severity = [round(sum(v[i] for v in corrupted.values()) / len(corrupted), 4) for i in range(len(SEVERITIES))]
    clean = predict(test)
    return {"accuracy": accuracy(clean, y), "balanced_accuracy": balanced_accuracy(clean, y), "C": c,
            "corrupted": corrupted, "severity_mean": by_severity, "n_test": len(y), **_test_coverage(task, y)}


Protocol = Callable[[torch.nn.Module, ImageTask, EvalSettings], dict]
PROTOCOLS: dict[str, Protocol] = {"linear": _linear, "knn": _knn, "finetune": _finetune, "corruptions": _corruptions}
SUITE_PROTOCOLS = ("vtab1k",)  # protocols that choose hyper-parameters across the suite
ALL_PROTOCOLS = (*PROTOCOLS, *SUITE_PROTOCOLS)


def evaluate_tasks(
    model: torch.nn.Module,
    tasks: Sequence[ImageTask],
    protocol: str = "linear",
    image_size: int = 64,
    device: str | torch.device = "cpu",
    out_json: Path | None = None,
    model_name: str = "model",
    batch_size: int = 256,
    progress: bool = True,
    scale: str = "tiny",
    setting: FinetuneSetting | None = None,
    model_source: str | None = None,
    checkpoint: dict | None = None,
) -> dict:
    """Evaluate ``model`` on every task; returns (and writes to ``out_json``) the results.

    ``{"model", "protocol", "image_size", "tasks": [{"task", "group", "protocol",
    "accuracy", "val_accuracy", ...}], "groups": {group: mean}, "mean"}``, accuracies in
    percent; ``mean`` averages tasks, not groups, as VTAB does. If ``out_json`` already
    holds results for the same model, protocol and image size, tasks found there are not
    run again; the file is rewritten atomically after each task, so an interrupted run
    resumes where it stopped. The file records a fingerprint of the weights and, per task, of
    its images: a file of other weights, or a task whose images changed, is refused by name.
    ``scale`` (tiny | paper) sizes the fine-tune protocols and ``setting`` fixes the (lr, steps)
    of ``finetune``; ``vtab1k`` also records its sweep
    and per-run state (under ``vtab1k``) and resumes run by run. ``checkpoint`` (``{"path", "step"}``)
    names the training checkpoint evaluated, if it was one: kept in the file, and results of
    another step (or of the run's final backbone) are never resumed into it.
    """
    if protocol not in ALL_PROTOCOLS:
        raise UserError(f"{protocol}: unknown protocol (available: {', '.join(ALL_PROTOCOLS)})")
    header = {"model": model_name, "protocol": protocol, "image_size": image_size,
              "weights": weights_fingerprint(model)}  # fmt: skip
    if model_source:
        header["model_source"] = model_source  # lets `vivi report` find the run's metrics.jsonl
    if checkpoint:
        header["checkpoint"] = {"path": str(checkpoint["path"]), "step": int(checkpoint["step"])}
    if protocol == "finetune":
        setting = setting or vtab1k_scale(scale).settings()[0]
        header.update(scale=scale, lr=setting.lr, steps=setting.steps)
    if protocol in SUITE_PROTOCOLS:
        header.update(scale=scale, suite=[t.name for t in tasks], data={t.name: task_fingerprint(t) for t in tasks})
        return _evaluate_vtab1k(model, tasks, header, image_size, device, out_json, progress)
    run = PROTOCOLS[protocol]
    settings = EvalSettings(image_size, batch_size, device, progress, scale, setting)
    entries = _previous_entries(out_json, header) if out_json is not None else []
    done = {e["task"] for e in entries}
    for task in tasks:
        data = task_fingerprint(task)
        if task.name in done:
            _check_same_images(out_json, task, data, entries)
            if progress:
                tqdm.write(f"{task.name}: done already in {out_json}, skipped")
            continue
        _check_new_images(out_json, task, data, entries)
        start = time.perf_counter()
        metrics = run(model, task, settings)
        skipped = skipped_images(task)
        if skipped:
            metrics["skipped_images"] = skipped
            warn(f"{task.source or task.name}: {skipped_text(task)} (listed in the results file)")
        entries.append(
            {
                "task": task.name,
                "group": task.group,
                "protocol": protocol,
                **metrics,
                **_val_from(task),
                "num_classes": len(task.classes),
                "data": data,
                "source": _absolute(task.source),  # which folder "data" is: a folder's task is its last part only
                "seconds": round(time.perf_counter() - start, 2),
                "provenance": provenance(),  # which code and libraries measured it (tasks may be added later)
            }
        )
        done.add(task.name)
        if progress:
            tqdm.write(f"{task.name}: {metrics['accuracy']:.1f}% ({protocol})")
        if out_json is not None:
            entries = _add_entry(out_json, header, entries[-1])
    return _results(header, entries)


def _add_entry(path: Path, header: dict, entry: dict) -> list[dict]:
    """Write ``entry`` into the results file ``path`` beside the entries it holds now; returns them all.

    Read again under the file's lock, not taken from this run's start: two evaluations of other
    tasks into one ``--out`` (run side by side to use a machine's cores or GPUs) each wrote back
    the file as it had read it, and the one that finished last silently dropped the other's tasks.
    """
    with file_lock(path):
        entries = [e for e in _previous_entries(path, header) if e["task"] != entry["task"]] + [entry]
        write_json_atomic(path, _results(header, entries))
    return entries


def _evaluate_vtab1k(
    model: torch.nn.Module,
    tasks: Sequence[ImageTask],
    header: dict,
    image_size: int,
    device: str | torch.device,
    out_json: Path | None,
    progress: bool,
) -> dict:
    """The suite-wide sweep; the results file also carries the run state under ``vtab1k``."""
    scale = vtab1k_scale(header["scale"])
    previous = _previous(out_json, header) if out_json is not None else {}
    # counts and skipped are absent from files written before they were kept
    state = {"sweep": {}, "final": {}, "seconds": {}, "counts": {}, "skipped": {}, **(previous.get("vtab1k") or {})}

    def save(current: dict) -> None:
        if out_json is not None:
            write_json_atomic(out_json, {**_results(header, previous.get("tasks", [])), "vtab1k": current})

    trials = FinetuneTrials(model, image_size, scale, device, progress)
    entries, state = run_vtab1k(tasks, _counted(trials, state), scale, state=state, save=save, progress=progress)
    for task, entry in zip(tasks, entries):
        entry.update(state["counts"].get(task.name, {}), **_val_from(task), source=_absolute(task.source),
                     provenance=provenance())
        if missing := entry.get("test_missing_classes"):
            _warn_test_missing(task, missing)
        if skipped := state["skipped"].get(task.name):
            entry["skipped_images"] = skipped
            images = f"{len(skipped)} unreadable image{'s' if len(skipped) != 1 else ''}"  # kept from a resumed run too
            warn(f"{task.source or task.name}: skipped {images}: {listed(skipped)} (listed in the results file)")
    results = {**_results(header, entries), "vtab1k": state}
    if out_json is not None:
        write_json_atomic(out_json, results)
    return results


def _counted(trials: FinetuneTrials, state: dict) -> Callable[[Trial], dict]:
    """``trials``, also keeping in ``state`` (saved with each run, so a resumed file still has
    them) each task's counts of decoded train800 / val200 / test images and the files that did
    not decode: vtab1k's results left a broken test image out of the denominator unnamed, where
    the other protocols list it under ``skipped_images``."""

    def trial(t: Trial) -> dict:
        scores = trials.evaluate(t)  # accuracy and balanced accuracy
        _, train_y, _, val_y, _, test_y = trials.data(t.task)  # cached: the images just used
        state["counts"][t.task.name] = {"n_train": len(train_y), "n_val": len(val_y), "n_test": len(test_y),
                                        **_test_coverage(t.task, test_y, say=False)}  # said once, with the entry
        if skipped := skipped_images(t.task):
            state["skipped"][t.task.name] = skipped
        return scores

    return trial


def summarize(entries: Sequence[dict]) -> tuple[dict[str, float], float | None]:
    """Per-group mean accuracy (VTAB groups first, others alphabetically) and the mean over tasks."""
    by_group: dict[str, list[float]] = {}
    for e in entries:
        by_group.setdefault(e["group"], []).append(e["accuracy"])
    order = [g for g in GROUP_ORDER if g in by_group] + sorted(set(by_group) - set(GROUP_ORDER))
    groups = {g: math.fsum(by_group[g]) / len(by_group[g]) for g in order}
    mean = math.fsum(e["accuracy"] for e in entries) / len(entries) if entries else None
    return groups, mean


def _results(header: dict, entries: list[dict]) -> dict:
    groups, mean = summarize(entries)
    return {**header, "tasks": entries, "groups": groups, "mean": mean}


def _previous_entries(path: Path, header: dict) -> list[dict]:
    """Task entries of an earlier run written to ``path``; refuses a file from another setup."""
    return list(_previous(path, header).get("tasks", []))


def _previous(path: Path, header: dict) -> dict:
    """The results of an earlier run written to ``path`` ({} if none); refuses a file from another setup."""
    if not path.exists():
        return {}
    try:
        previous = json.loads(path.read_text())
        previous["tasks"] = list(previous["tasks"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a vivi results file, cannot resume ({e})") from e
    _check_same_checkpoint(path, previous, header)
    for key, value in header.items():
        if key in NOT_COMPARED_ON_RESUME or previous.get(key) == value:
            continue
        if key in FINGERPRINTS and key not in previous:
            warn(f"{path}: written by an older vivi without a {key} fingerprint; its results are resumed unchecked")
        elif key == "weights":
            raise UserError(
                f"{path}: holds results of other weights (fingerprint {previous[key]}, this model's {value}): "
                "a run retrained in place, or another model of the same name; choose another output file"
            )
        elif key == "data":
            changed = sorted(t for t in value if previous[key].get(t) != value[t])
            raise UserError(f"{path}: the images of {', '.join(changed)} changed since these results were written; "
                            "choose another output file (or delete it to start over)")  # fmt: skip
        else:
            raise UserError(
                f"{path}: holds results for {key}={previous.get(key)!r}, not {value!r}; choose another output file"
            )
    return previous


def _checkpoint_step(results: dict) -> int | None:
    checkpoint = results.get("checkpoint")
    return checkpoint.get("step") if isinstance(checkpoint, dict) else None


def _check_same_checkpoint(path: Path, previous: dict, header: dict) -> None:
    """Refuse to resume results of a training checkpoint as those of another step or of the final
    backbone (either way round; renamed with --name, the last step's weights are the final ones).
    Its path is not compared: a moved run folder still resumes."""

    def what(results: dict) -> str:
        step = _checkpoint_step(results)
        kind = f"checkpoint of step {step}" if "checkpoint" in results else "no training checkpoint"
        return f"{results.get('model')} ({kind})"

    if ("checkpoint" in previous) != ("checkpoint" in header) or _checkpoint_step(previous) != _checkpoint_step(header):
        raise UserError(f"{path}: holds results of {what(previous)}, not of {what(header)}; choose another output file")


def _check_new_images(path: Path | None, task: ImageTask, data: str, entries: list[dict]) -> None:
    """Refuse a task whose images and labels are already in the file under another name (a
    renamed folder): the suite's mean would count them twice."""
    twin = next((e["task"] for e in entries if e.get("data") == data), None)
    if twin is not None:
        raise UserError(f"{path}: {task.name} ({task.source or task.name}) holds the same images and labels as "
                        f"{twin}, already measured in this file (a renamed folder?); choose another output file")


def _absolute(source: str) -> str:
    """``source`` as an absolute path (as given, a relative one names nothing once read elsewhere)."""
    return str(Path(source).absolute()) if source else source


def _check_same_images(path: Path | None, task: ImageTask, data: str, entries: list[dict]) -> None:
    """Refuse to reuse a task's result when its images are not the ones measured then."""
    entry = next(e for e in entries if e["task"] == task.name)
    previous = entry.get("data")
    if previous is not None and previous != data:
        where = task.source or task.name
        other = entry.get("source")
        if other and task.source and other != _absolute(task.source):  # /a/pets and /b/pets are both "pets"
            raise UserError(f"{path}: holds {task.name} measured on other images ({other}), not those of {where}: "
                            "another folder of the same name, or the folder changed; choose another output file")
        raise UserError(f"{path}: {task.name}'s images ({where}) changed since this file was written (files added, "
                        "removed, renamed or resized); choose another output file (or delete it to start over)")
