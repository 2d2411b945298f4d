"""Evaluation on a researcher's own image folders: what the numbers are computed over, and what
the results file says about it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vivi.data.tasks import load_tasks
from vivi.evaluate import vtab1k
from vivi.evaluate.vtab1k import Vtab1kScale, vtab1k_splits

COLOURS = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)]


def _folder(root: Path, counts: dict[str, dict[str, int]]) -> Path:
    """``root/<split>/<class>/<i>.png``: class c one flat colour, ``counts[split][class]`` images."""
    for split, classes in counts.items():
        for c, (name, n) in enumerate(classes.items()):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (6, 6), COLOURS[c % len(COLOURS)]).save(root / split / name / f"{i}.png")
    return root


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())


def test_vtab1k_subsets_of_an_image_folder_keep_every_class(tmp_path):
    """Files are listed class by class: the first n_train of train/ were the first classes only."""
    three = {"a": 6, "b": 6, "c": 6}
    root = _folder(tmp_path / "d", {"train": three, "val": three, "test": {"a": 1, "b": 1, "c": 1}})
    (task,) = load_tasks(f"imagefolder:{root}")
    scale = Vtab1kScale(lrs=(0.1,), steps=(1,), batch_size=4, n_train=6, n_val=3)
    train, val, test = vtab1k_splits(task, scale)
    assert (len(train), len(val), len(test)) == (6, 3, 3)
    assert sorted(set(train.labels.tolist())) == sorted(set(val.labels.tolist())) == [0, 1, 2]
    again, _, _ = vtab1k_splits(task, scale)  # the same draw every time: resuming stays exact
    assert again.paths == train.paths
    assert vtab1k.spread_sample(np.array([0, 0, 0, 1]), 2, seed=0).tolist()[-1] == 3  # the rare class kept


def test_vtab1k_results_name_unreadable_images_and_counts_also_on_resume(tmp_path, monkeypatch):
    """linear/knn/finetune list skipped files and the counts measured; vtab1k dropped a broken test
    image from the denominator without a word in its results."""
    from vivi.evaluate.suite import evaluate_tasks

    two = {"a": 4, "b": 4}
    root = _folder(tmp_path / "d", {"train": two, "val": {"a": 2, "b": 2}, "test": {"a": 2, "b": 2}})
    (root / "test" / "b" / "bad.png").write_bytes(b"not a png")
    monkeypatch.setitem(vtab1k.VTAB1K_SCALES, "t", Vtab1kScale((0.01,), (1,), batch_size=4, repetitions=1,
                                                                 n_train=8, n_val=4))  # fmt: skip
    out = tmp_path / "r.json"
    for _ in range(2):  # the second run resumes from the file: nothing is read, nothing may be lost
        (entry,) = evaluate_tasks(_tiny_model(), load_tasks(f"imagefolder:{root}"), "vtab1k", image_size=8,
                                  out_json=out, progress=False, scale="t")["tasks"]  # fmt: skip
        assert entry["skipped_images"] == [f"{root / 'test/b/bad.png'} (not an image format PIL can read)"]
        assert (entry["n_train"], entry["n_val"], entry["n_test"]) == (8, 4, 4)


def test_probe_results_say_when_val_lacks_a_class(tmp_path, capsys):
    """A class with one training image is never held out into val: the setting is chosen blind to
    it, and the results must say so rather than report val accuracy as if val covered it."""
    from vivi.evaluate.suite import evaluate_tasks

    root = _folder(tmp_path / "d", {"train": {"a": 1, "b": 5}, "test": {"a": 1, "b": 1}})
    for protocol in ("knn", "linear"):
        (entry,) = evaluate_tasks(_tiny_model(), load_tasks(f"imagefolder:{root}"), protocol, image_size=8,
                                  progress=False)["tasks"]  # fmt: skip
        assert entry["val_missing_classes"] == ["a"] and entry["n_val"] == 1
        assert "no validation image of class a" in capsys.readouterr().err
    full = _folder(tmp_path / "e", {"train": {"a": 5, "b": 5}, "test": {"a": 1, "b": 1}})
    (entry,) = evaluate_tasks(_tiny_model(), load_tasks(f"imagefolder:{full}"), "knn", image_size=8,
                              progress=False)["tasks"]  # fmt: skip
    assert "val_missing_classes" not in entry


def test_results_name_the_folder_measured_and_refuse_another_of_the_same_name(tmp_path):
    """An image folder's task is named by its last path part: /x/pets and /y/pets are both "pets".
    The file must say which folder was measured, and the refusal must not claim the folder changed."""
    import pytest

    from vivi.errors import UserError
    from vivi.evaluate.suite import evaluate_tasks

    first = _folder(tmp_path / "x" / "pets", {"train": {"a": 3, "b": 3}, "test": {"a": 1, "b": 1}})
    other = _folder(tmp_path / "y" / "pets", {"train": {"a": 4, "b": 4}, "test": {"a": 1, "b": 1}})
    out = tmp_path / "r.json"
    (entry,) = evaluate_tasks(_tiny_model(), load_tasks(f"imagefolder:{first}"), "knn", image_size=8, out_json=out,
                              progress=False)["tasks"]  # fmt: skip
    assert entry["source"] == str(first)
    with pytest.raises(UserError, match=f"other images \\({first}\\).*another folder of the same name"):
        evaluate_tasks(_tiny_model(), load_tasks(f"imagefolder:{other}"), "knn", image_size=8, out_json=out,
                       progress=False)  # fmt: skip


def test_a_random_encoder_is_named_with_its_seed():
    from vivi.evaluate.encoders import load_encoder

    assert load_encoder("random:tiny").name == "random-tiny"  # seed 0 as before: old results still resume
    assert load_encoder("random:tiny", seed=3).name == "random-tiny s3"


def test_a_task_named_twice_is_evaluated_once(tmp_path, capsys):
    """vtab1k reported a task named twice twice, weighting it double in the suite's mean."""
    import json

    from vivi.data.synth.tasks import SUITE_VERSION

    root = tmp_path / "mini-vtab"
    root.mkdir()
    suite = {"version": SUITE_VERSION, "tasks": [{"name": "t", "group": "natural", "classes": 2}]}
    (root / "suite.json").write_text(json.dumps(suite))
    arrays = {f"{k}_{s}": v for s in ("train", "val", "test")
              for k, v in (("x", np.zeros((2, 4, 4, 3), np.uint8)), ("y", np.array([0, 1])))}  # fmt: skip
    np.savez(root / "t.npz", **arrays)
    assert [t.name for t in load_tasks("mini-vtab:t,t", cache_dir=tmp_path)] == ["t"]
    assert "t named more than once" in capsys.readouterr().err
