"""The VTAB-1k protocol: a fine-tune sweep whose one setting is chosen across the whole suite.

Per task, 800 train and 200 val examples. Phase 1 (sweep): every (learning rate, steps)
setting is fine-tuned on train800 and scored on val200. The setting with the best mean
val accuracy over all tasks of the suite wins (ties: the earlier setting in sweep order).
Phase 2 (final): that setting is fine-tuned on all 1000 examples and scored on test,
``repetitions`` times with seeds 0, 1, ...; a task's accuracy is the median.

Both phases are resumable: the state (sweep accuracies per task and setting, final
accuracies per task and repetition) is saved after every run through ``save``.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from vivi.data.tasks import FileSplit, ImageSplit, ImageTask, check_readable, skipped_text
from vivi.errors import UserError, warn
from vivi.evaluate.finetune import FinetuneSetting, finetune, predict, preload
from vivi.evaluate.metrics import accuracy, balanced_accuracy


@dataclass(frozen=True)
class Vtab1kScale:
    """Sweep sizes. ``paper`` is VTAB's lightweight sweep; ``tiny`` keeps its 2 x 2 shape and
    1:4 step ratio at a size where one tiny model does the 10 mini-VTAB tasks in minutes on a CPU."""

    lrs: tuple[float, ...]
    steps: tuple[int, ...]
    batch_size: int
    repetitions: int = 3
    n_train: int = 800
    n_val: int = 200

    def settings(self) -> list[FinetuneSetting]:
        """Sweep order: learning rates as given, then steps (the tie-break order)."""
        return [FinetuneSetting(lr, s) for lr in self.lrs for s in self.steps]


VTAB1K_SCALES: dict[str, Vtab1kScale] = {
    "tiny": Vtab1kScale(lrs=(0.1, 0.01), steps=(50, 200), batch_size=64),
    "paper": Vtab1kScale(lrs=(0.1, 0.01), steps=(2500, 10000), batch_size=512),
}


def vtab1k_scale(name: str) -> Vtab1kScale:
    if name not in VTAB1K_SCALES:
        raise UserError(f"--scale {name}: unknown scale (available: {', '.join(VTAB1K_SCALES)})")
    return VTAB1K_SCALES[name]


@dataclass(frozen=True)
class Trial:
    """One fine-tune run: ``sweep`` trains on train800 and scores val200, ``final`` trains on
    the 1000 and scores test."""

    task: ImageTask
    setting: FinetuneSetting
    phase: str
    seed: int


TrialFn = Callable[[Trial], "float | dict"]  # -> accuracy in percent, or {"accuracy", "balanced_accuracy"}


def check_sizes(task: ImageTask, scale: Vtab1kScale) -> None:
    """Refuse a task too small for the protocol, naming it, its source and the counts."""
    if len(task.train) < scale.n_train or len(task.val) < scale.n_val:
        where = f" ({task.source})" if task.source else ""
        raise UserError(
            f"{task.name}{where}: vtab1k needs at least {scale.n_train} train and {scale.n_val} val examples, "
            f"found {len(task.train)} train and {len(task.val)} val"
        )


def vtab1k_splits(task: ImageTask, scale: Vtab1kScale, strict: bool = True):
    """(train800, val200, test): the first n_train of train and the first n_val of val (of an image
    folder, drawn over its files: see :func:`_leading`; :meth:`FinetuneTrials.data` draws among the
    files that decode instead, :func:`draw_readable`, the same images when all do). Not ``strict``
    (one fine-tune, no sweep to compare across tasks): all of a smaller task, with a note from
    :meth:`FinetuneTrials.data` once the images are read (it counts those that decode)."""
    if strict:
        check_sizes(task, scale)
    return _leading(task.train, scale.n_train), _leading(task.val, scale.n_val), task.test


SAMPLE_SEED = 0  # the draw of an image folder's 800 / 200 (see _leading)


def _leading(split: ImageSplit, n: int) -> ImageSplit:
    """The first ``n`` examples of ``split``, as VTAB takes them from TFDS's shuffled splits, except
    for an image folder: its files are listed class by class, so its first 800 were the first
    classes only (a folder of 6 x 200 images left out the last class entirely, which stopped
    the command as if its images were unreadable, and a boundary class was cut short). There,
    ``n`` are drawn with a fixed seed, each class's first draw taken first so that every class
    is kept whenever ``n`` allows, and listed in folder order."""
    if len(split) <= n:
        return split
    if not isinstance(split, FileSplit):
        return split.subset(np.arange(n))
    return split.subset(spread_sample(split.labels, n, SAMPLE_SEED))


def spread_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` of ``labels`` drawn at random (``seed``), one of every class first."""
    order = np.random.default_rng(seed).permutation(len(labels))
    _, first = np.unique(labels[order], return_index=True)
    firsts = order[np.sort(first)]
    rest = order[~np.isin(order, firsts)]
    return np.sort(np.concatenate([firsts, rest])[:n])


@dataclass
class Drawn:
    """What :func:`draw_readable` took: decoded images, their labels (in split order), and the
    classes none of whose files decoded (every one was tried)."""

    images: torch.Tensor
    labels: np.ndarray
    lost: list[int]


def draw_readable(split: FileSplit, n: int, image_size: int) -> Drawn:
    """``n`` decodable images of an image folder's ``split``, drawn as :func:`spread_sample` draws
    (the same ``n`` when every file decodes), a file that does not decode replaced by the next of
    the seeded order, of its own class for a class's first image. Drawing among the files and
    dropping broken ones after shrank VTAB-1k's 1000 without a word (421 broken of 1200: 457 +
    122). Each file is decoded once; only as many as needed are read."""
    order = np.random.default_rng(SAMPLE_SEED).permutation(len(split))
    labels = split.labels[order]
    tried = np.zeros(len(split), dtype=bool)
    taken: dict[int, torch.Tensor] = {}

    def take(i: int) -> bool:
        tried[i] = True
        image = split.images([i], size=image_size)[0]  # a broken file: recorded in split.broken
        if split.paths[i] in split.broken:
            return False
        taken[i] = image
        return True

    _, first = np.unique(labels, return_index=True)
    for c in labels[np.sort(first)]:  # one image of every class first, while n allows
        if len(taken) >= n:
            break
        next((i for i in order[labels == c] if take(int(i))), None)
    for i in order:
        if len(taken) >= n:
            break
        if not tried[i]:
            take(int(i))
    chosen = sorted(taken)
    held = set(split.labels[chosen].tolist())
    lost = [int(c) for c in np.unique(split.labels) if c not in held and tried[split.labels == c].all()]
    images = torch.stack([taken[i] for i in chosen]) if chosen else torch.zeros(0, 3, image_size, image_size,
                                                                                 dtype=torch.uint8)  # fmt: skip
    return Drawn(images, split.labels[chosen], lost)


def _refuse_too_few_readable(task: ImageTask, scale: Vtab1kScale, n_train: int, n_val: int) -> None:
    """Refuse, in one line naming the folder, a task of which fewer than 800 train or 200 val images decode."""
    if n_train < scale.n_train or n_val < scale.n_val:
        raise UserError(
            f"{task.source or task.name}: vtab1k needs {scale.n_train} train and {scale.n_val} val images that "
            f"decode, only {n_train} of {len(task.train)} train and {n_val} of {len(task.val)} val files do; "
            f"{skipped_text(task)}"
        )


def _note_smaller(task: ImageTask, scale: Vtab1kScale, n_train: int, n_val: int) -> None:
    """Warn that a task smaller than VTAB-1k's train + val is used whole; the counts are of the
    images that decoded, the ones the fine-tune sees (broken files are named separately)."""
    if n_train < scale.n_train or n_val < scale.n_val:
        warn(f"{task.source or task.name}: fine-tuning on all {n_train} train + {n_val} val images, "
             f"fewer than VTAB-1k's {scale.n_train} + {scale.n_val}")  # fmt: skip


def select_setting(sweep: dict[str, dict[str, float]], settings: Sequence[FinetuneSetting]) -> FinetuneSetting:
    """The setting with the highest mean val accuracy over the tasks in ``sweep``; ties go to the earlier one."""
    if not sweep:
        raise ValueError("no sweep results to select from")
    means = [math.fsum(per_task[s.key] for per_task in sweep.values()) / len(sweep) for s in settings]
    return settings[int(np.argmax(means))]  # argmax keeps the first maximum


def run_vtab1k(
    tasks: Sequence[ImageTask],
    trial: TrialFn,
    scale: Vtab1kScale,
    state: dict | None = None,
    save: Callable[[dict], None] | None = None,
    progress: bool = False,
) -> tuple[list[dict], dict]:
    """Sweep, select across the suite, run the final repetitions; returns (task entries, state).

    ``state`` (``{"sweep": {task: {setting: val acc}}, "final": {task: [test acc per seed]},
    "final_balanced": {task: [test balanced acc per seed, None where not known]}, "chosen": setting,
    "seconds": {task: s}}``) holds runs done earlier; they are not run again (a state saved before
    balanced accuracies were kept resumes without them).
    Final runs are kept only for the setting they were run with (``chosen``): a resumed sweep that
    chose another setting (a scale's sweep changed) reported the old setting's test accuracies
    under the new lr / steps. Entries
    follow the suite's format: task, group, protocol, accuracy (the median), plus the
    per-repetition accuracies, the chosen setting and the sweep; ``balanced_accuracy`` is that of the
    run whose accuracy is the median (``balanced_accuracies`` per repetition) when ``trial`` returns it.
    """
    state = {"sweep": {}, "final": {}, "final_balanced": {}, "seconds": {}, **(state or {})}
    settings = scale.settings()
    for task in tasks:
        check_sizes(task, scale)

    def timed(task: ImageTask, t: Trial) -> dict:
        start = time.perf_counter()
        result = trial(t)
        state["seconds"][task.name] = round(state["seconds"].get(task.name, 0.0) + time.perf_counter() - start, 2)
        if not isinstance(result, dict):
            return {"accuracy": float(result), "balanced_accuracy": None}
        return {"accuracy": float(result["accuracy"]), "balanced_accuracy": result.get("balanced_accuracy")}

    for task in tasks:
        done = state["sweep"].setdefault(task.name, {})
        for s in settings:
            if s.key in done:
                continue
            done[s.key] = timed(task, Trial(task, s, "sweep", seed=0))["accuracy"]
            _say(progress, f"{task.name}: {s.key} val {done[s.key]:.1f}%")
            if save:
                save(state)
    chosen = select_setting({t.name: state["sweep"][t.name] for t in tasks}, settings)
    _say(progress, f"vtab1k: chose {chosen.key} (best mean val accuracy over {len(tasks)} tasks)")
    if state.get("chosen", chosen.key) != chosen.key:  # finals of another setting: not this one's test accuracy
        warn(f"vtab1k: the sweep now chooses {chosen.key}, not {state['chosen']}; its final runs are redone")
        state["final"], state["final_balanced"] = {}, {}
    state["chosen"] = chosen.key
    for task in tasks:
        runs = state["final"].setdefault(task.name, [])
        balanced = state["final_balanced"].setdefault(task.name, [])
        while len(runs) < scale.repetitions:
            result = timed(task, Trial(task, chosen, "final", seed=len(runs)))
            balanced[:] = balanced[: len(runs)] + [None] * (len(runs) - len(balanced))  # aligned with runs
            runs.append(result["accuracy"])
            balanced.append(result["balanced_accuracy"])
            _say(progress, f"{task.name}: {chosen.key} seed {len(runs) - 1} test {runs[-1]:.1f}%")
            if save:
                save(state)
    return [_entry(task, chosen, settings, state) for task in tasks], state


def _entry(task: ImageTask, chosen: FinetuneSetting, settings: list[FinetuneSetting], state: dict) -> dict:
    runs = state["final"][task.name]
    sweep = state["sweep"][task.name]
    return {
        "task": task.name,
        "group": task.group,
        "protocol": "vtab1k",
        "accuracy": float(statistics.median(runs)),
        **_median_run_balanced(runs, (state.get("final_balanced") or {}).get(task.name) or []),
        "accuracies": list(runs),
        "val_accuracy": sweep[chosen.key],
        "lr": chosen.lr,
        "steps": chosen.steps,
        "sweep": [{"lr": s.lr, "steps": s.steps, "val_accuracy": sweep[s.key]} for s in settings],
        "num_classes": len(task.classes),
        "seconds": state["seconds"].get(task.name, 0.0),
    }


def _median_run_balanced(runs: list[float], balanced: list) -> dict:
    """``{"balanced_accuracy": of the run whose accuracy is the median, "balanced_accuracies": per run}``
    (an even number of runs: the mean of the two middle runs'); {} when a run's is not known (a state
    saved before they were kept)."""
    if len(balanced) < len(runs) or any(b is None for b in balanced[: len(runs)]) or not runs:
        return {}
    balanced = [float(b) for b in balanced[: len(runs)]]
    order = sorted(range(len(runs)), key=lambda i: runs[i])  # stable: equal accuracies keep seed order
    middle = [order[len(runs) // 2]] if len(runs) % 2 else [order[len(runs) // 2 - 1], order[len(runs) // 2]]
    return {"balanced_accuracy": math.fsum(balanced[i] for i in middle) / len(middle), "balanced_accuracies": balanced}


def _say(progress: bool, message: str) -> None:
    if progress:
        tqdm.write(message)


@dataclass
class FinetuneTrials:
    """The real trial function: preloads a task's resized images once, then fine-tunes copies."""

    backbone: torch.nn.Module
    image_size: int
    scale: Vtab1kScale
    device: str | torch.device = "cpu"
    progress: bool = False
    strict: bool = True  # refuse tasks smaller than VTAB-1k's 800 + 200 (see vtab1k_splits)
    _cache: tuple[ImageTask, tuple] | None = field(default=None, repr=False)

    def data(self, task: ImageTask) -> tuple:
        """(train x, train y, val x, val y, test x, test y) of the VTAB-1k splits, for the last task asked.

        Cached by the task object itself, not its name: two tasks named alike (folders ``a/pets`` and
        ``b/pets``) were fine-tuned and tested on the first one's images. Only classes that train800
        holds and lose to unreadable files are an error: a class absent from the first 800 (sun397's
        397 classes, ~50 of them) is VTAB-1k's protocol, and refusing it stopped the suite."""
        if self._cache is None or self._cache[0] is not task:
            self._cache = None  # free the previous task's images first
            if isinstance(task.train, FileSplit) and isinstance(task.val, FileSplit):
                arrays, absent = self._drawn(task)
            else:
                arrays, absent = self._preloaded(task)
            kept_y = np.concatenate([arrays[1], absent])
            check_readable(task, kept_y, arrays[5], arrays[3] if self.strict else None)  # the sweep needs val
            if self.strict:
                _refuse_too_few_readable(task, self.scale, len(arrays[1]), len(arrays[3]))
            else:
                _note_smaller(task, self.scale, len(arrays[1]), len(arrays[3]))
            self._cache = (task, tuple(arrays))
        return self._cache[1]

    def _preloaded(self, task: ImageTask) -> tuple[list, np.ndarray]:
        """Arrays of the first 800 / 200 (VTAB records, mini-VTAB), and the classes train800 lacks."""
        splits = vtab1k_splits(task, self.scale, self.strict)
        arrays = []
        for split in splits:
            images = preload(split, self.image_size)
            keep = split.readable()  # unreadable files were preloaded as black images: drop them
            arrays += [images[torch.from_numpy(keep)], split.labels[keep]]
        # classes not in train800 at all are counted as present, so only those lost to broken files stop it
        return arrays, np.setdiff1d(np.arange(len(task.classes)), splits[0].labels)

    def _drawn(self, task: ImageTask) -> tuple[list, np.ndarray]:
        """An image folder's arrays, 800 / 200 drawn among the images that decode (:func:`draw_readable`),
        and the classes train800 lacks for want of room (not those all of whose files are broken)."""
        if self.strict:
            check_sizes(task, self.scale)
        train = draw_readable(task.train, self.scale.n_train, self.image_size)
        val = draw_readable(task.val, self.scale.n_val, self.image_size)
        test = preload(task.test, self.image_size)
        keep = task.test.readable()
        arrays = [train.images, train.labels, val.images, val.labels]
        arrays += [test[torch.from_numpy(keep)], task.test.labels[keep]]
        unvisited = set(range(len(task.classes))) - set(train.labels.tolist()) - set(train.lost)
        return arrays, np.array(sorted(unvisited), dtype=np.int64)

    def __call__(self, t: Trial) -> float:
        return self.evaluate(t)["accuracy"]

    def evaluate(self, t: Trial) -> dict:
        """One fine-tune: ``{"accuracy", "balanced_accuracy"}`` on val200 (sweep) or test (final), in percent."""
        train_x, train_y, val_x, val_y, test_x, test_y = self.data(t.task)
        if t.phase == "sweep":
            fit_x, fit_y, eval_x, eval_y = train_x, train_y, val_x, val_y
        elif t.phase == "final":
            fit_x, fit_y = torch.cat([train_x, val_x]), np.concatenate([train_y, val_y])
            eval_x, eval_y = test_x, test_y
        else:
            raise ValueError(f"unknown phase {t.phase!r}")
        desc = f"{t.task.name} {t.phase} {t.setting.key} seed {t.seed}" if self.progress else None
        model = finetune(
            self.backbone, fit_x, fit_y, len(t.task.classes), t.setting, self.scale.batch_size, t.seed, self.device,
            desc=desc,
        )
        predicted = predict(model, eval_x, self.device)
        return {"accuracy": accuracy(predicted, eval_y), "balanced_accuracy": balanced_accuracy(predicted, eval_y)}
