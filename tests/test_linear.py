"""The linear protocol end to end: features of a frozen model, the probe, and resumable suites."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vivi.data.tasks import ArraySplit, ImageTask
from vivi.errors import UserError
from vivi.evaluate import suite
from vivi.evaluate.features import MEAN, STD, extract_features
from vivi.evaluate.linear import linear_probe


def _blobs(rng: np.random.Generator, n: int, classes: int, dim: int, spread: float):
    centers = rng.normal(0, 5, (classes, dim))
    y = rng.integers(0, classes, n)
    return centers[y] + rng.normal(0, spread, (n, dim)), y


def _split3(x: np.ndarray, y: np.ndarray, n_train: int, n_val: int):
    val = slice(n_train, n_train + n_val)
    return x[:n_train], y[:n_train], x[val], y[val], x[n_train + n_val :], y[n_train + n_val :]


def test_separable_blobs_are_solved():
    x, y = _blobs(np.random.default_rng(0), 600, classes=5, dim=16, spread=0.5)
    result = linear_probe(*_split3(x, y, 300, 100))
    assert result["accuracy"] == pytest.approx(100.0)
    assert (result["n_train"], result["n_val"], result["n_test"]) == (300, 100, 200)
    assert len(result["sweep"]) >= 6


def test_noise_labels_give_chance():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(1400, 32)), rng.integers(0, 10, 1400)
    result = linear_probe(*_split3(x, y, 300, 100))
    assert 3.0 < result["accuracy"] < 18.0


def test_c_selection_finds_the_weakly_regularised_regime():
    # The label lives in x0 - x1 while both carry a large shared nuisance. A heavily
    # regularised probe weights features by their class-mean difference (about x0 alone)
    # and sees mostly nuisance; only a nearly unregularised one learns to cancel it.
    rng = np.random.default_rng(2)
    n = 900
    y = rng.integers(0, 2, n)
    nuisance = rng.normal(0, 10, n)
    signal = np.where(y == 1, 0.5, -0.5) + rng.normal(0, 0.05, n)
    x = np.stack([nuisance + signal, nuisance, rng.normal(size=n)], axis=1)
    result = linear_probe(*_split3(x, y, 400, 200))
    by_c = {s["C"]: s["val_accuracy"] for s in result["sweep"]}
    assert by_c[1e-4] < 75.0
    assert result["C"] >= 1.0 and result["val_accuracy"] == max(by_c.values())
    assert result["accuracy"] > 97.0


def test_probe_is_deterministic_and_ties_pick_smallest_c():
    x, y = _blobs(np.random.default_rng(3), 300, classes=3, dim=8, spread=0.1)
    first, second = linear_probe(*_split3(x, y, 150, 50)), linear_probe(*_split3(x, y, 150, 50))
    assert first == second
    assert first["val_accuracy"] == 100.0 and first["C"] == min(s["C"] for s in first["sweep"])


class TinyCNN(nn.Module):
    """Conv -> BatchNorm -> global pool: pooled features [n, 4] like a timm model with num_classes=0."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Recorder(nn.Module):
    """Passes the input through pooled, remembering what the model was fed."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return x.mean(dim=(2, 3))


def _split(n: int, size: int = 12, seed: int = 0) -> ArraySplit:
    rng = np.random.default_rng(seed)
    return ArraySplit(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n) % 2)


def test_features_shape_dtype_and_determinism():
    model, split = TinyCNN().train(), _split(10)
    feats = extract_features(model, split, image_size=16, batch_size=4, progress=False)
    assert feats.shape == (10, 4) and feats.dtype == np.float32
    assert model.training  # mode restored
    assert np.array_equal(feats, extract_features(model, split, image_size=16, batch_size=4, progress=False))
    one_batch = extract_features(model, split, image_size=16, batch_size=10, progress=False)
    np.testing.assert_allclose(feats, one_batch, atol=1e-6)


def test_features_resize_and_normalisation():
    assert MEAN == STD == (0.5, 0.5, 0.5)
    images = np.stack([np.full((5, 7, 3), v, np.uint8) for v in (0, 255, 51)])
    split = ArraySplit(images, np.array([0, 1, 0]))
    recorder = Recorder()
    feats = extract_features(recorder, split, image_size=9, progress=False)
    (seen,) = recorder.inputs
    assert seen.shape == (3, 3, 9, 9) and seen.dtype == torch.float32
    np.testing.assert_allclose(feats, [[-1.0] * 3, [1.0] * 3, [-0.6] * 3], atol=1e-6)  # (51 / 255 - 0.5) / 0.5


def test_model_must_return_pooled_features():
    with pytest.raises(ValueError, match="pooled features"):
        extract_features(nn.Identity(), _split(2), image_size=8, progress=False)


def _task(name: str, group: str, seed: int) -> ImageTask:
    splits = _split(12, seed=seed), _split(6, seed=seed + 1), _split(8, seed=seed + 2)
    return ImageTask(name, group, ["a", "b"], *splits)


def _run(tasks: list[ImageTask], out: Path) -> dict:
    return suite.evaluate_tasks(TinyCNN(), tasks, image_size=8, out_json=out, model_name="tiny", progress=False)


def test_evaluate_tasks_writes_and_resumes(tmp_path, extraction_calls):
    out = tmp_path / "res" / "linear.json"
    tasks = [_task("one", "natural", 0), _task("two", "structured", 10)]
    calls = extraction_calls
    first = _run(tasks[:1], out)
    assert calls == ["one/train", "one/val", "one/test"]
    assert json.loads(out.read_text()) == first
    assert [t["task"] for t in first["tasks"]] == ["one"]

    calls.clear()
    both = _run(tasks, out)
    assert calls == ["two/train", "two/val", "two/test"]
    assert both["tasks"][0] == first["tasks"][0]
    one, two = (t["accuracy"] for t in both["tasks"])
    assert both["groups"] == {"natural": one, "structured": two}
    assert both["mean"] == pytest.approx((one + two) / 2)
    assert {"task", "group", "protocol", "accuracy", "val_accuracy", "C"} <= set(both["tasks"][1])
    assert all(0.0 <= t["accuracy"] <= 100.0 for t in both["tasks"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["linear.json"]  # no temporary left behind

    calls.clear()
    assert _run(tasks, out) == both
    assert calls == []


def test_two_evaluations_into_one_file_keep_each_other_s_tasks(tmp_path, monkeypatch):
    """Run side by side on other tasks, each wrote back the file as it had read it at its start: the
    one that finished last dropped the other's tasks. Here "two" is written while "one" is running."""
    out = tmp_path / "linear.json"
    run = suite.PROTOCOLS["linear"]

    def meanwhile(model, task, settings):
        if task.name == "one":  # another evaluation finishes task "two" into the same file meanwhile
            monkeypatch.setitem(suite.PROTOCOLS, "linear", run)
            _run([_task("two", "structured", 10)], out)
        return run(model, task, settings)

    monkeypatch.setitem(suite.PROTOCOLS, "linear", meanwhile)
    result = _run([_task("one", "natural", 0)], out)
    assert [t["task"] for t in result["tasks"]] == ["two", "one"]
    assert json.loads(out.read_text()) == result


def test_evaluate_tasks_refuses_other_runs_file_and_unknown_protocol(tmp_path):
    out = tmp_path / "r.json"
    out.write_text(json.dumps({"model": "other", "protocol": "linear", "image_size": 8, "tasks": []}))
    with pytest.raises(UserError, match="model='other'"):
        suite.evaluate_tasks(TinyCNN(), [], image_size=8, out_json=out, model_name="tiny", progress=False)
    with pytest.raises(UserError, match=r"nope: unknown protocol \(available: linear, knn, finetune, corruptions, vtab1k\)"):
        suite.evaluate_tasks(TinyCNN(), [], protocol="nope")


def _image_folder(root: Path, per_class: int = 4) -> Path:
    from PIL import Image

    for split, n in (("train", per_class), ("test", 2)):
        for c, colour in enumerate([(250, 0, 0), (0, 0, 250)]):
            (root / split / str(c)).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (6, 6), colour).save(root / split / str(c) / f"{i}.png")
    return root


@pytest.mark.parametrize("protocol", ["linear", "knn"])
def test_unreadable_images_are_skipped_named_and_kept_in_the_results(tmp_path, capsys, protocol):
    """One broken file must not stop an evaluation: it is left out of the probe and named."""
    from vivi.data.tasks import load_tasks

    root = _image_folder(tmp_path / "d")
    (root / "train" / "0" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    (root / "test" / "1" / "1.png").write_bytes(b"")
    out = tmp_path / "r.json"
    result = suite.evaluate_tasks(TinyCNN(), load_tasks(f"imagefolder:{root}"), protocol=protocol, image_size=8,
                                  out_json=out, model_name="tiny", progress=False)  # fmt: skip
    (entry,) = result["tasks"]
    assert entry["n_train"] + entry["n_val"] == 7 and entry["n_test"] == 3
    assert entry["skipped_images"] == [f"{root / 'train/0/0.png'} (not an image format PIL can read)",
                                       f"{root / 'test/1/1.png'} (empty file (0 bytes))"]  # fmt: skip
    assert json.loads(out.read_text())["tasks"][0]["skipped_images"] == entry["skipped_images"]
    assert "skipped 2 unreadable images" in capsys.readouterr().err


def test_a_class_with_no_readable_training_image_is_an_error(tmp_path):
    from vivi.data.tasks import load_tasks

    root = _image_folder(tmp_path / "d")
    for path in (root / "train" / "1").iterdir():
        path.write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"no readable training image left in class 1; skipped 4 unreadable"):
        _run(load_tasks(f"imagefolder:{root}"), tmp_path / "r.json")
