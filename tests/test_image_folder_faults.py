"""Image folders with broken or odd files: named pipes, broken images that must not shrink or
empty a draw, a class lost from test, one file under two labels, a class of hidden images."""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vivi.data.images import balanced_subset, check_decodes, load_image, open_labelled, scan_images, unreadable_images
from vivi.data.tasks import UnreadableImage, load_tasks, read_image, stratified_holdout
from vivi.errors import UserError
from vivi.evaluate import vtab1k
from vivi.evaluate.suite import evaluate_tasks
from vivi.evaluate.vtab1k import FinetuneTrials, Vtab1kScale

COLOURS = [(250, 0, 0), (0, 0, 250), (0, 250, 0)]
GARBAGE = b"not an image at all"
PIPE = "not a regular file (a named pipe)"


def _folder(root: Path, counts: dict[str, dict[str, int]]) -> Path:
    """``root/<split>/<class>/<i>.png`` (two digits), class c one flat colour, ``counts[split][class]`` images."""
    for split, classes in counts.items():
        for c, (name, n) in enumerate(classes.items()):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (6, 6), COLOURS[c % len(COLOURS)]).save(root / split / name / f"{i:02d}.png")
    return root


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())


@contextmanager
def _no_hang(seconds: int = 30):
    """Fail (rather than hang the suite) when the block blocks on a named pipe."""

    def stop(*_):
        raise TimeoutError("blocked: a named pipe was opened")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _evaluate(root: Path, protocol: str = "linear", **kw) -> dict:
    (entry,) = evaluate_tasks(_tiny_model(), load_tasks(f"imagefolder:{root}"), protocol, image_size=8,
                              progress=False, **kw)["tasks"]  # fmt: skip
    return entry


# 1. named pipes


def test_a_named_pipe_named_like_an_image_is_never_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "pipe.png")  # os.stat follows it: a pipe too
    with _no_hang(10):
        for path in (tmp_path / "pipe.png", tmp_path / "link.png"):
            with pytest.raises(UnreadableImage, match=r"not a regular file \(a named pipe\)"):
                read_image(path)
            with pytest.raises(UnreadableImage, match=r"not a regular file \(a named pipe\)"):
                load_image(path, 8)


def test_evaluation_skips_a_named_pipe_in_an_image_folder_and_names_it(tmp_path):
    root = _folder(tmp_path / "d", {"train": {"a": 5, "b": 5}, "test": {"a": 2, "b": 2}})
    os.mkfifo(root / "train" / "a" / "pipe.png")
    with _no_hang():
        entry = _evaluate(root)
    assert entry["skipped_images"] == [f"{root / 'train/a/pipe.png'} ({PIPE})"]


def test_pretraining_on_an_image_folder_names_a_named_pipe_as_unreadable(tmp_path, capsys):
    root = _folder(tmp_path, {"images": {"a": 3, "b": 3}}) / "images"
    os.mkfifo(root / "a" / "pipe.png")
    with _no_hang(10):
        folder = scan_images(root, labelled=True)
        assert unreadable_images(folder) == {folder.paths.index(root / "a" / "pipe.png"): PIPE}
        check_decodes(folder, 8, per_class=True)
    assert f"a/pipe.png ({PIPE})" in capsys.readouterr().err


# 2a. the held-out val is drawn among the images that decode


def test_val_held_out_of_train_is_drawn_among_the_images_that_decode(tmp_path, capsys):
    """Class a: 3 good + 7 garbage, the garbage including every file the draw over all files holds
    out: val lacked class a and the probe's C was chosen blind to it (with a wrong reason)."""
    root = _folder(tmp_path / "d", {"train": {"a": 10, "b": 10}, "test": {"a": 3, "b": 3}})
    _, held = stratified_holdout(np.repeat([0, 1], 10), 0.2, seed=0)
    held_a = [i for i in held.tolist() if i < 10]
    broken = held_a + [i for i in range(10) if i not in held_a][: 7 - len(held_a)]
    for i in broken:
        (root / "train" / "a" / f"{i:02d}.png").write_bytes(GARBAGE)
    for protocol in ("linear", "knn"):
        entry = _evaluate(root, protocol)
        assert "val_missing_classes" not in entry, entry.get("val_missing_classes")
        assert (entry["n_train"], entry["n_val"], len(entry["skipped_images"])) == (2 + 8, 1 + 2, 7)
        assert entry["accuracy"] == 100.0
    assert "never held out" not in capsys.readouterr().err


# 2b. vtab1k / finetune draw their 800 + 200 among the images that decode


def _vtab_folder(tmp_path: Path, broken_train: int) -> tuple[Path, Vtab1kScale]:
    """12 train + 6 val files per the scale's 6 + 3, ``broken_train`` of the train files the draw over
    all files takes being garbage (so the old draw would have shrunk)."""
    root = _folder(tmp_path / "d", {"train": {"a": 6, "b": 6}, "val": {"a": 3, "b": 3}, "test": {"a": 2, "b": 2}})
    (task,) = load_tasks(f"imagefolder:{root}")
    first_draw = vtab1k.spread_sample(task.train.labels, 6, vtab1k.SAMPLE_SEED)
    for i in first_draw[:broken_train]:
        task.train.paths[i].write_bytes(GARBAGE)
    return root, Vtab1kScale(lrs=(0.1,), steps=(1,), batch_size=4, repetitions=1, n_train=6, n_val=3)


def test_vtab1k_draws_its_train_images_among_those_that_decode(tmp_path):
    root, scale = _vtab_folder(tmp_path, broken_train=3)
    (task,) = load_tasks(f"imagefolder:{root}")
    train_x, train_y, val_x, val_y, _, _ = FinetuneTrials(_tiny_model(), 8, scale).data(task)
    assert (len(train_x), len(train_y), len(val_y)) == (6, 6, 3)  # 3 broken replaced, not dropped
    assert sorted(set(train_y.tolist())) == [0, 1]
    assert len(task.train.broken) == 3


def test_vtab1k_refuses_in_one_line_when_too_few_images_decode_and_finetune_says_so(tmp_path, capsys):
    root, scale = _vtab_folder(tmp_path, broken_train=0)
    for path in sorted((root / "train" / "a").iterdir())[:5]:  # 7 of 12 decode, 6 needed: still enough
        path.write_bytes(GARBAGE)
    (task,) = load_tasks(f"imagefolder:{root}")
    assert len(FinetuneTrials(_tiny_model(), 8, scale).data(task)[1]) == 6
    (root / "train" / "b" / "00.png").write_bytes(GARBAGE)  # 6 of 12 decode
    (root / "train" / "b" / "01.png").write_bytes(GARBAGE)  # 5 of 12: too few
    (task,) = load_tasks(f"imagefolder:{root}")
    with pytest.raises(UserError) as refused:
        FinetuneTrials(_tiny_model(), 8, scale).data(task)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{root}: vtab1k needs 6 train and 3 val images that decode")
    assert "only 5 of 12 train and 3 of 6 val files do" in message
    (task,) = load_tasks(f"imagefolder:{root}")
    data = FinetuneTrials(_tiny_model(), 8, scale, strict=False).data(task)  # the finetune protocol: used whole
    assert len(data[1]) == 5
    assert "fine-tuning on all 5 train + 3 val images, fewer than VTAB-1k's 6 + 3" in capsys.readouterr().err


# 2c. co-training's labelled fraction is drawn among the images that decode


def test_a_labelled_fraction_replaces_a_broken_draw_by_a_readable_image_of_its_class(tmp_path, capsys):
    root = _folder(tmp_path, {"l": {"cat": 7, "dog": 7}}) / "l"
    labels = np.repeat([0, 1], 7)
    old_pick = int(balanced_subset(labels, 0.1, seed=0)[0])  # the one cat image drawn over all files
    (root / "cat" / f"{old_pick:02d}.png").write_bytes(b"")
    folder = open_labelled(f"imagefolder:{root}", 0.1, seed=0, size=8)
    assert len(folder.paths) == 2 and root / "cat" / f"{old_pick:02d}.png" not in folder.paths
    check_decodes(folder, 8, per_class=True)  # refused before: "none of the 1 kept images of class 'cat'"
    assert "passed over 1 unreadable image drawing the labelled_fraction=0.1" in capsys.readouterr().err
    for path in (root / "cat").iterdir():
        path.write_bytes(GARBAGE)
    with pytest.raises(UserError, match=r"/cat: none of the 7 images of class 'cat' decodes \(.*\), so training"):
        open_labelled(f"imagefolder:{root}", 0.1, seed=0, size=8)


def test_a_clean_labelled_fraction_is_the_same_draw_as_before(tmp_path):
    root = _folder(tmp_path, {"l": {"cat": 9, "dog": 12}}) / "l"
    folder = open_labelled(f"imagefolder:{root}", 0.3, seed=4, size=8)
    everything = scan_images(root, labelled=True)
    assert folder.paths == [everything.paths[i] for i in balanced_subset(everything.labels, 0.3, seed=4)]


# 3. a class lost from test


def test_a_class_without_a_readable_test_image_is_recorded_and_said(tmp_path, capsys):
    root = _folder(tmp_path / "d", {"train": {"a": 5, "b": 5}, "test": {"a": 2, "b": 3}})
    for path in (root / "test" / "a").iterdir():
        path.write_bytes(GARBAGE)
    for protocol in ("linear", "knn"):
        entry = _evaluate(root, protocol)
        assert entry["test_missing_classes"] == ["a"] and entry["n_test"] == 3
        err = [line for line in capsys.readouterr().err.splitlines() if "no readable test image" in line]
        assert len(err) == 1 and "of class a" in err[0]
    clean = _folder(tmp_path / "e", {"train": {"a": 5, "b": 5}, "test": {"a": 1, "b": 1}})
    assert "test_missing_classes" not in _evaluate(clean)


# 4. one file under two class labels


def test_a_class_folder_linked_to_another_class_is_refused_naming_both_paths(tmp_path):
    root = _folder(tmp_path / "d", {"train": {"a": 3, "b": 3}, "test": {"a": 1, "b": 1}})
    (root / "train" / "c").symlink_to("a")
    with pytest.raises(UserError) as refused:
        load_tasks(f"imagefolder:{root}")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{root / 'train/c/00.png'}: the same file as {root / 'train/a/00.png'} (a link)")
    assert "(c and a)" in message
    with pytest.raises(UserError, match=r"train/c/00\.png: the same file as .*train/a/00\.png"):
        scan_images(root, labelled=True)  # --labelled imagefolder:DIR alike


def test_a_link_to_another_class_image_is_refused_but_a_copy_within_a_class_is_not(tmp_path):
    root = _folder(tmp_path / "d", {"train": {"a": 3, "b": 3}, "test": {"a": 1, "b": 1}})
    (root / "train" / "a" / "again.png").symlink_to(root / "train" / "a" / "00.png")  # one class: one label
    load_tasks(f"imagefolder:{root}")
    (root / "test" / "b" / "x.png").symlink_to(root / "test" / "a" / "00.png")
    with pytest.raises(UserError, match=r"test/b/x\.png: the same file as .*test/a/00\.png .*test/ \(b and a\)"):
        load_tasks(f"imagefolder:{root}")


# 5. a class of hidden images


def test_a_class_folder_of_hidden_images_says_so(tmp_path):
    root = _folder(tmp_path / "d", {"train": {"a": 2, "b": 0}, "test": {"a": 1, "b": 1}})
    for i in range(2):
        Image.new("RGB", (6, 6)).save(root / "train" / "b" / f".{i:02d}.png")
    with pytest.raises(UserError, match=r"train/b: no images in this class folder, only hidden ones \(\.00\.png, "
                                        r"\.01\.png: names starting with '\.' are hidden; rename them to use them\)$"):
        load_tasks(f"imagefolder:{root}")


def test_a_flat_folder_of_hidden_images_says_so(tmp_path):
    for i in range(3):
        Image.new("RGB", (6, 6)).save(tmp_path / f".{i:02d}.png")
    with pytest.raises(UserError, match=r": no images, only hidden ones \(\.00\.png, \.01\.png and 1 more: names"):
        scan_images(tmp_path, labelled=False)

