"""Loading downstream tasks: image folders (and every way they can be wrong) and mini-VTAB."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vivi.data import synth
from vivi.data.tasks import ArraySplit, load_tasks, stratified_holdout
from vivi.errors import UserError


def _png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (6, 4)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _folder(root: Path, counts: dict[str, dict[str, int]]) -> Path:
    """root/<split>/<class>/<i>.png, one solid colour per class."""
    colors = {}
    for split, per_class in counts.items():
        for cls, n in per_class.items():
            color = colors.setdefault(cls, (40 * len(colors), 255 - 40 * len(colors), 7))
            for i in range(n):
                _png(root / split / cls / f"{i}.png", color)
    return root


def test_imagefolder_with_val(tmp_path):
    counts = {"train": {"dog": 2, "cat": 3}, "val": {"cat": 1, "dog": 1}, "test": {"cat": 1, "dog": 2}}
    root = _folder(tmp_path / "pets", counts)
    (task,) = load_tasks(f"imagefolder:{root}")
    assert (task.name, task.group, task.classes) == ("pets", "custom", ["cat", "dog"])
    assert list(task.train.labels) == [0, 0, 0, 1, 1]
    assert (len(task.val), len(task.test)) == (2, 3)
    batch = task.train.images([0, 4])
    assert batch.dtype == torch.uint8 and batch.shape == (2, 3, 4, 6)
    assert batch[1, :, 0, 0].tolist() == [0, 255, 7]  # dog, the first class written, channels first
    assert task.test.images([0], size=8).shape == (1, 3, 8, 8)


def test_imagefolder_holds_out_stratified_val(tmp_path):
    root = _folder(tmp_path / "d", {"train": {"a": 10, "b": 5, "c": 1}, "test": {"a": 1, "b": 1, "c": 1}})
    (task,) = load_tasks(f"imagefolder:{root}")
    assert np.bincount(task.val.labels, minlength=3).tolist() == [2, 1, 0]
    assert np.bincount(task.train.labels, minlength=3).tolist() == [8, 4, 1]
    assert not set(task.val.paths) & set(task.train.paths)
    (again,) = load_tasks(f"imagefolder:{root}")
    assert again.val.paths == task.val.paths


def test_stratified_holdout_is_deterministic_and_disjoint():
    labels = np.repeat(np.arange(4), 25)
    train, held = stratified_holdout(labels, 0.2, seed=0)
    assert np.bincount(labels[held]).tolist() == [5, 5, 5, 5]
    assert sorted([*train, *held]) == list(range(100))
    assert np.array_equal(held, stratified_holdout(labels, 0.2, seed=0)[1])


def test_exif_orientation_is_applied(tmp_path):
    root = _folder(tmp_path / "d", {"train": {"a": 2, "b": 2}, "test": {"a": 1, "b": 1}})
    img = Image.new("RGB", (6, 4), (1, 2, 3))
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(root / "test" / "a" / "0.png", exif=exif)
    (task,) = load_tasks(f"imagefolder:{root}")
    assert task.test.images([0]).shape == (1, 3, 6, 4)


def test_images_of_different_sizes_need_a_size(tmp_path):
    root = _folder(tmp_path / "d", {"train": {"a": 2, "b": 2}, "test": {"a": 1, "b": 1}})
    _png(root / "test" / "b" / "0.png", (0, 0, 0), size=(9, 9))
    (task,) = load_tasks(f"imagefolder:{root}")
    with pytest.raises(ValueError, match="size="):
        task.test.images([0, 1])
    assert task.test.images([0, 1], size=5).shape == (2, 3, 5, 5)


def _error(spec: str) -> str:
    with pytest.raises(UserError) as info:
        load_tasks(spec)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_imagefolder_errors(tmp_path):
    assert "no such directory" in _error(f"imagefolder:{tmp_path / 'nope'}")
    (tmp_path / "photo.jpg").write_bytes(b"x")  # a file where a folder was meant is not "no such directory"
    assert _error(f"imagefolder:{tmp_path / 'photo.jpg'}") == f"{tmp_path / 'photo.jpg'}: exists but is not a directory"

    (tmp_path / "a" / "test").mkdir(parents=True)
    assert "no train/ folder" in _error(f"imagefolder:{tmp_path / 'a'}")

    (tmp_path / "b" / "train").mkdir(parents=True)
    assert "no test/ folder" in _error(f"imagefolder:{tmp_path / 'b'}")

    (tmp_path / "c" / "train").mkdir(parents=True)
    (tmp_path / "c" / "test").mkdir()
    message = _error(f"imagefolder:{tmp_path / 'c'}")
    assert "no class folders" in message and str(tmp_path / "c" / "train") in message

    root = _folder(tmp_path / "d", {"train": {"x": 2, "y": 2}, "test": {"x": 1, "y": 1, "z": 1}})
    message = _error(f"imagefolder:{root}")
    assert "not present in train/: z" in message and str(root / "test") in message

    root = _folder(tmp_path / "e", {"train": {"x": 2, "y": 2, "w": 2}, "test": {"x": 1, "y": 1}})
    assert "missing classes present in train/: w" in _error(f"imagefolder:{root}")

    root = _folder(tmp_path / "f", {"train": {"x": 2, "y": 2}, "test": {"x": 1, "y": 1}})
    (root / "train" / "y" / "0.png").rename(root / "train" / "y" / "0.txt")
    (root / "train" / "y" / "1.png").unlink()
    message = _error(f"imagefolder:{root}")
    assert str(root / "train" / "y") in message and "no images" in message and "webp" in message

    root = _folder(tmp_path / "g", {"train": {"x": 1, "y": 1}, "test": {"x": 1, "y": 1}})
    assert "add val/" in _error(f"imagefolder:{root}")

    root = _folder(tmp_path / "h", {"train": {"x": 2}, "test": {"x": 1}})
    assert "only one class folder" in _error(f"imagefolder:{root}")


def test_corrupt_image_is_named_when_loaded(tmp_path):
    root = _folder(tmp_path / "d", {"train": {"x": 2, "y": 2}, "test": {"x": 1, "y": 1}})
    bad = root / "test" / "y" / "0.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (task,) = load_tasks(f"imagefolder:{root}")
    assert task.test.images([0]).shape == (1, 3, 4, 6)
    with pytest.raises(UserError, match="unreadable image") as info:
        task.test.images([0, 1])
    assert str(bad) in str(info.value)


def _fake_suite(root: Path, tasks: dict[str, str], size: int = 8) -> None:
    """A suite in the documented format: suite.json + <task>.npz with uint8 NHWC splits."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    entries = []
    for name, group in tasks.items():
        arrays = {}
        for split, n in (("train", 6), ("val", 3), ("test", 4)):
            arrays[f"x_{split}"] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
            arrays[f"y_{split}"] = np.arange(n, dtype=np.int64) % 3
        np.savez(root / f"{name}.npz", **arrays)
        entries.append({"name": name, "group": group, "classes": ["a", "b", "c"], "description": "fake"})
    (root / "suite.json").write_text(json.dumps({"name": "mini-vtab", "seed": 0, "size": size, "tasks": entries}))


def test_mini_vtab_loads_all_and_subsets(tmp_path):
    _fake_suite(tmp_path / "mini-vtab", {"shapes": "natural", "count": "structured"})
    tasks = load_tasks("mini-vtab", cache_dir=tmp_path)
    assert [(t.name, t.group, len(t.train), len(t.val), len(t.test)) for t in tasks] == [
        ("shapes", "natural", 6, 3, 4),
        ("count", "structured", 6, 3, 4),
    ]
    data = np.load(tmp_path / "mini-vtab" / "count.npz")
    batch = tasks[1].test.images([2, 0])
    assert batch.shape == (2, 3, 8, 8)
    assert torch.equal(batch[0], torch.from_numpy(data["x_test"][2]).permute(2, 0, 1))
    assert tasks[1].test.images([0], size=4).shape == (1, 3, 4, 4)
    assert [t.name for t in load_tasks("mini-vtab:count", cache_dir=tmp_path)] == ["count"]
    assert [t.name for t in load_tasks("mini-vtab:count,shapes", cache_dir=tmp_path)] == ["count", "shapes"]


def test_mini_vtab_unknown_task_lists_available(tmp_path):
    _fake_suite(tmp_path / "mini-vtab", {"shapes": "natural", "count": "structured"})
    with pytest.raises(UserError, match=r"unknown task nope \(available: shapes, count\)"):
        load_tasks("mini-vtab:nope", cache_dir=tmp_path)


def test_mini_vtab_is_built_when_missing(tmp_path, monkeypatch):
    calls = []

    def build_suite(out_dir: Path, seed: int = 0) -> Path:
        calls.append((out_dir, seed))
        _fake_suite(out_dir, {"only": "specialized"})
        return out_dir

    monkeypatch.setattr(synth, "build_suite", build_suite, raising=False)
    assert [t.name for t in load_tasks("mini-vtab", cache_dir=tmp_path)] == ["only"]
    assert [t.name for t in load_tasks("mini-vtab", cache_dir=tmp_path)] == ["only"]
    assert calls == [(tmp_path / "mini-vtab", 0)]


def test_unknown_spec():
    assert "unknown task spec" in _error("vtab:")
    assert "unknown task spec" in _error("vtab-1k:cifar100")
    assert "unknown task spec" in _error("cifar100")
    assert "unknown task spec" in _error("imagefolder:")


def test_array_split_subset():
    split = ArraySplit(np.arange(4 * 2 * 2 * 3, dtype=np.uint8).reshape(4, 2, 2, 3), np.array([0, 1, 0, 1]))
    sub = split.subset([3, 1])
    assert len(sub) == 2 and sub.labels.tolist() == [1, 1]
    assert torch.equal(sub.images([0]), split.images([3]))


def test_high_bit_depth_greys_keep_their_brightness(tmp_path):
    """PIL's convert("RGB") clips 16-bit greys to white; they must come out as their 8-bit level."""
    from vivi.data.tasks import read_image

    Image.fromarray(np.full((4, 6), 128 * 257, np.uint16)).save(tmp_path / "sixteen.png")
    Image.fromarray(np.full((4, 6), 0.5, np.float32)).save(tmp_path / "float.tif")
    for name in ("sixteen.png", "float.tif"):
        assert read_image(tmp_path / name)[:, 0, 0].tolist() == [128, 128, 128], name
    # beyond 16 bits there is no standard white: scaled by the image's maximum, not clipped to white
    ramp = np.arange(24).reshape(4, 6)
    Image.fromarray((ramp * 50_000).astype(np.int32)).save(tmp_path / "counts.tif")  # up to 1.15e6
    Image.fromarray((ramp * 400.0).astype(np.float32)).save(tmp_path / "depth_mm.tif")  # up to 9200
    for name in ("counts.tif", "depth_mm.tif"):
        grey = read_image(tmp_path / name)[0]
        assert grey[0, 0] == 0 and grey[3, 5] == 255 and grey[1, 5] == round(11 / 23 * 255), name


def test_unreadable_images_become_black_and_are_recorded_only_with_a_size(tmp_path):
    root = _folder(tmp_path / "d", {"train": {"x": 2, "y": 2}, "test": {"x": 2, "y": 1}})
    (root / "test" / "x" / "1.png").write_bytes(b"")
    (root / "test" / "y" / "link.png").symlink_to(tmp_path / "gone.png")
    (task,) = load_tasks(f"imagefolder:{root}")
    assert len(task.test) == 4  # a broken link to an image is listed, so that it is reported
    batch = task.test.images(range(4), size=5)
    assert batch[1].sum() == 0 and batch[0].sum() > 0
    assert task.test.readable().tolist() == [True, False, True, False]
    assert task.test.broken == {
        root / "test/x/1.png": "empty file (0 bytes)", root / "test/y/link.png": "broken symbolic link"
    }
    assert task.test.subset([1, 2]).readable().tolist() == [False, True]  # subsets know what their parent found


def test_linked_folders_are_followed_hidden_files_skipped_and_other_files_noted(tmp_path, capsys):
    root = _folder(tmp_path / "d", {"train": {"x": 2}, "test": {"x": 1, "y": 1}})
    _folder(tmp_path / "elsewhere", {"y": {"deep": 2}, "z": {"deep": 2}})
    (root / "train" / "y").symlink_to(tmp_path / "elsewhere" / "y")  # a linked class folder ...
    (root / "train" / "x" / "more").symlink_to(tmp_path / "elsewhere" / "z" / "deep")  # ... and subfolder (other files:
    # the same file under two classes is refused, tests/test_image_folder_faults.py)
    (root / "train" / "x" / "._0.png").write_bytes(b"AppleDouble")
    (root / "train" / "x" / "notes.txt").write_text("hi")
    (root / "train" / "x" / "Thumbs.db").write_bytes(b"\0")
    (task,) = load_tasks(f"imagefolder:{root}")
    assert len(task.train) + len(task.val) == 6
    assert "train: ignored 1 file that is not an image (.txt: 1)" in capsys.readouterr().err


def test_large_jpegs_are_decoded_at_a_reduced_scale_that_still_covers_the_size(tmp_path):
    from vivi.data.tasks import read_image

    Image.new("RGB", (800, 600), (10, 120, 200)).save(tmp_path / "photo.jpg", quality=90)
    small = read_image(tmp_path / "photo.jpg", at_least=64)
    assert small.shape == (3, 75, 100)  # 1/8 scale: both sides still >= 64
    assert read_image(tmp_path / "photo.jpg").shape == (3, 600, 800)


def test_a_val_folder_without_class_folders_says_so_not_missing_classes(tmp_path):
    """val/ holding only a README was refused as "missing classes present in train/: a, b"."""
    root = _folder(tmp_path / "d", {"train": {"a": 3, "b": 3}, "test": {"a": 1, "b": 1}})
    (root / "val").mkdir()
    (root / "val" / "README").write_text("to fill")
    with pytest.raises(UserError, match=r"val: no images in class folders \(train/'s classes: a, b\): add "
                                        r"val/<class>/<image>; or remove val/ to hold out a fifth of train/"):
        load_tasks(f"imagefolder:{root}")
