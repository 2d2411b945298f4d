"""Balanced accuracy (mean per-class recall) and ``val_from`` in every task entry: an imbalanced
image folder's probe that predicts the majority class no longer hides behind its accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import balanced_accuracy_score

from vivi.data.tasks import ArraySplit, load_tasks
from vivi.data.vtab import VTAB_TASKS, _task
from vivi.evaluate import suite
from vivi.evaluate.metrics import accuracy, balanced_accuracy
from vivi.evaluate.vtab1k import Vtab1kScale, run_vtab1k

RED, GREEN = (250, 0, 0), (0, 250, 0)


def _folder(root: Path, splits: dict[str, dict[str, list[tuple[int, int, int]]]]) -> Path:
    """``root/<split>/<class>/<i>.png``, one flat 6x6 image per colour listed."""
    for split, classes in splits.items():
        for name, colours in classes.items():
            (root / split / name).mkdir(parents=True)
            for i, colour in enumerate(colours):
                Image.new("RGB", (6, 6), colour).save(root / split / name / f"{i}.png")
    return root


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())


@pytest.mark.filterwarnings("ignore::UserWarning")  # sklearn on classes absent from y_true
def test_balanced_accuracy_matches_sklearn_on_random_cases():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n, k = int(rng.integers(1, 60)), int(rng.integers(1, 7))
        labels = rng.integers(0, k, n)
        predicted = rng.integers(0, k + 1, n)  # k: a class that never occurs in the labels
        if trial % 3 == 0:
            predicted[predicted == 0] = 1  # class 0 never predicted
        if trial % 4 == 0 and k > 1:
            labels[labels == k - 1] = 0  # class k-1 absent from the test labels, maybe still predicted
        expected = 100 * balanced_accuracy_score(labels, predicted)
        assert balanced_accuracy(predicted, labels) == pytest.approx(expected, abs=1e-9)


def test_balanced_accuracy_of_a_majority_predictor_and_edge_cases():
    labels = np.array([0] * 18 + [1] * 2)
    majority = np.zeros(20, dtype=int)
    assert accuracy(majority, labels) == 90.0
    assert balanced_accuracy(majority, labels) == 50.0
    assert balanced_accuracy(labels, labels) == 100.0
    assert balanced_accuracy([2, 2, 1], [1, 1, 1]) == pytest.approx(100 / 3)  # only class 1 counts
    assert balanced_accuracy([0, 1, 0], [0, 1, 1]) == 75.0  # rounded once: exactly (100 + 50) / 2
    assert np.isnan(balanced_accuracy([], []))
    # string labels work as integer ones do
    assert balanced_accuracy(np.array(["a", "a", "b"]), np.array(["a", "b", "b"])) == 75.0


def test_linear_probe_on_an_imbalanced_folder_records_balanced_accuracy_and_val_from(tmp_path):
    """18 red 'a' and 6 green 'b' to train on; test: 9 red 'a', one green 'b' and one red 'b' (a
    mislabelled look-alike). The probe gets 10 of 11 (90.9%), but only half of class b (75% balanced)."""
    root = _folder(tmp_path / "clinic", {
        "train": {"a": [RED] * 18, "b": [GREEN] * 6},
        "test": {"a": [RED] * 9, "b": [GREEN, RED]},
    })  # fmt: skip
    (task,) = load_tasks(f"imagefolder:{root}")
    assert task.val_from == "held out of train/ (20%, seed 0)"
    out = tmp_path / "r.json"
    result = suite.evaluate_tasks(_tiny_model(), [task], "linear", image_size=8, out_json=out, progress=False)
    (entry,) = result["tasks"]
    assert entry["accuracy"] == pytest.approx(100 * 10 / 11)
    assert entry["balanced_accuracy"] == 75.0
    assert entry["val_from"] == "held out of train/ (20%, seed 0)"
    assert result["mean"] == entry["accuracy"]  # accuracy stays the headline
    assert json.loads(out.read_text())["tasks"][0]["balanced_accuracy"] == 75.0

    knn = suite.evaluate_tasks(_tiny_model(), [task], "knn", image_size=8, progress=False)["tasks"][0]
    assert (knn["balanced_accuracy"], knn["val_from"]) == (75.0, "held out of train/ (20%, seed 0)")


def test_val_from_of_a_folder_with_val_and_of_vtab_and_mini_vtab(tmp_path):
    two = {"a": [RED] * 2, "b": [GREEN] * 2}
    (task,) = load_tasks(f"imagefolder:{_folder(tmp_path / 'd', {'train': two, 'val': two, 'test': two})}")
    assert task.val_from == "val/"
    entry = suite.evaluate_tasks(_tiny_model(), [task], "knn", image_size=8, progress=False)["tasks"][0]
    assert entry["val_from"] == "val/" and entry["balanced_accuracy"] == 100.0

    spec = next(iter(VTAB_TASKS.values()))

    def split(n: int) -> ArraySplit:
        return ArraySplit(np.zeros((n, 1, 1, 3), np.uint8), np.arange(n) % 2)

    assert _task(spec, split(1200), None, split(4), [], tmp_path).val_from == "train[800:1000]"
    assert _task(spec, split(50), None, split(4), [], tmp_path).val_from == "train[40:50]"
    assert _task(spec, split(50), split(6), split(4), [], tmp_path).val_from == "validation split"

    from vivi.data import tasks

    np.savez(tmp_path / "t.npz", **{f"{p}_{s}": (np.zeros((2, 2, 2, 3), np.uint8) if p == "x" else np.array([0, 1]))
                                    for p in "xy" for s in tasks.SPLITS})  # fmt: skip
    mini = tasks._load_npz_task(tmp_path, {"name": "t", "group": "natural", "classes": 2})
    assert mini.val_from == "val split (rendered apart from train)"


def test_resuming_a_results_file_written_before_the_new_keys(tmp_path, monkeypatch):
    """An entry without balanced_accuracy / val_from is kept as it is: neither refused nor run again."""
    two = {"a": [RED] * 3, "b": [GREEN] * 3}
    root = _folder(tmp_path / "d", {"train": two, "test": two})
    out = tmp_path / "r.json"
    suite.evaluate_tasks(_tiny_model(), load_tasks(f"imagefolder:{root}"), "linear", image_size=8, out_json=out,
                         progress=False)  # fmt: skip
    old = json.loads(out.read_text())
    for entry in old["tasks"]:
        del entry["balanced_accuracy"], entry["val_from"]
    out.write_text(json.dumps(old))

    def not_again(*args):
        raise AssertionError("a finished task was evaluated again")

    monkeypatch.setitem(suite.PROTOCOLS, "linear", not_again)
    result = suite.evaluate_tasks(_tiny_model(), load_tasks(f"imagefolder:{root}"), "linear", image_size=8,
                                  out_json=out, progress=False)  # fmt: skip
    assert result["tasks"] == old["tasks"] and result["mean"] == old["mean"]


SCALE = Vtab1kScale(lrs=(0.1,), steps=(1,), batch_size=4, repetitions=3, n_train=2, n_val=1)


def _vtab_task():
    split = ArraySplit(np.zeros((4, 1, 1, 3), np.uint8), np.array([0, 1, 0, 1]))
    from vivi.data.tasks import ImageTask

    return ImageTask("t", "natural", ["a", "b"], split, split, split, val_from="val/")


def test_vtab1k_reports_the_balanced_accuracy_of_the_median_run_and_resumes_old_state():
    task = _vtab_task()
    scores = {0: (80.0, 60.0), 1: (70.0, 65.0), 2: (90.0, 50.0)}  # seed -> (accuracy, balanced)

    def trial(t):
        acc, bal = scores[t.seed] if t.phase == "final" else (50.0, 50.0)
        return {"accuracy": acc, "balanced_accuracy": bal}

    (entry,), state = run_vtab1k([task], trial, SCALE)
    assert entry["accuracy"] == 80.0 and entry["balanced_accuracy"] == 60.0  # seed 0's run is the median
    assert entry["balanced_accuracies"] == [60.0, 65.0, 50.0]

    def never(t):
        raise AssertionError("a finished run was redone")

    old = {k: v for k, v in state.items() if k != "final_balanced"}  # saved before the key existed
    (entry,), _ = run_vtab1k([task], never, SCALE, state=json.loads(json.dumps(old)))
    assert entry["accuracy"] == 80.0 and "balanced_accuracy" not in entry

    partial = json.loads(json.dumps({**old, "final": {"t": [80.0]}}))  # one of three runs done, without it
    (entry,), state = run_vtab1k([task], trial, SCALE, state=partial)
    assert state["final"]["t"] == [80.0, 70.0, 90.0] and state["final_balanced"]["t"] == [None, 65.0, 50.0]
    assert "balanced_accuracy" not in entry  # not known for the median run: not made up


def test_vtab1k_and_finetune_through_the_suite_carry_both_keys(tmp_path):
    from vivi.evaluate import vtab1k

    two = {"a": [RED] * 3, "b": [GREEN] * 3}
    root = _folder(tmp_path / "d", {"train": two, "val": two, "test": {"a": [RED] * 3, "b": [GREEN]}})
    tiny = Vtab1kScale(lrs=(0.1,), steps=(1,), batch_size=4, repetitions=1, n_train=6, n_val=6)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(vtab1k.VTAB1K_SCALES, "tiny", tiny)
        for protocol in ("vtab1k", "finetune"):
            (entry,) = suite.evaluate_tasks(_tiny_model(), load_tasks(f"imagefolder:{root}"), protocol, image_size=8,
                                            out_json=tmp_path / f"{protocol}.json", progress=False)["tasks"]  # fmt: skip
            assert entry["val_from"] == "val/"
            assert 0 <= entry["balanced_accuracy"] <= 100
            assert entry["accuracy"] in (0.0, 25.0, 75.0, 100.0)
