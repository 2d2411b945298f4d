"""The robustness probe's C is chosen on whole held-out shots where the shots are known: frames of
one shot are near-copies, so frames held out beside their fitted neighbours made val optimistic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vivi.data.tasks import stratified_holdout
from vivi.evaluate.robustness import load_frame_folders, load_world, probe_holdout


def test_whole_shots_are_held_out_and_every_class_keeps_both_sides():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 40)
    groups = np.array([f"c{y}-shot{i // 8}" for i, y in enumerate(labels)])  # 5 shots of 8 frames per class
    order = rng.permutation(len(labels))
    labels, groups = labels[order], groups[order]
    fit, val, said = probe_holdout(labels, groups)
    assert not set(groups[fit]) & set(groups[val]), "a shot on both sides"
    assert sorted(np.concatenate([fit, val])) == list(range(len(labels)))
    for c in range(3):
        assert (labels[val] == c).sum() == 8 and (labels[fit] == c).sum() == 32  # 1 of 5 shots: 20%
    assert said == "20% of train shots held out whole (seed 0)"
    again = probe_holdout(labels, groups)
    assert np.array_equal(again[1], val), "the same draw every time"


def test_without_shots_or_with_one_shot_a_class_gives_frames():
    labels = np.repeat(np.arange(2), 10)
    fit, val, said = probe_holdout(labels, None)
    expected = stratified_holdout(labels, 0.2, 0)
    assert np.array_equal(fit, expected[0]) and np.array_equal(val, expected[1])
    assert said == "20% of train frames held out (seed 0)"
    one_shot = np.array(["a"] * 10 + [f"b{i // 2}" for i in range(10)])
    fit, val, _ = probe_holdout(labels, one_shot)
    assert 0 < (labels[val] == 0).sum() < 10, "class 0 has one shot: frames of it are held out"
    assert not set(one_shot[fit][labels[fit] == 1]) & set(one_shot[val][labels[val] == 1])


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, value, value)).save(path)


def test_frame_folders_group_train_frames_by_their_video_folder(tmp_path):
    for cls, v in (("a", 20), ("b", 200)):
        for video in range(2):
            for f in range(3):
                _png(tmp_path / "nested" / "train" / cls / f"vid{video}" / f"{f}.png", v)
                _png(tmp_path / "flat" / "train" / cls / f"{video}_{f}.png", v)
        for root in ("nested", "flat"):
            for f in range(3):
                _png(tmp_path / root / "test" / cls / "clip" / f"{f}.png", v)
    _png(tmp_path / "nested" / "train" / "a" / "loose.png", 20)  # beside the video folders: its own group
    nested = load_frame_folders(tmp_path / "nested")
    groups = dict(zip(map(str, nested.train.paths), nested.train_groups))
    assert groups[str(tmp_path / "nested" / "train" / "a" / "vid1" / "2.png")] == "a/vid1"
    assert groups[str(tmp_path / "nested" / "train" / "a" / "loose.png")] == "a/loose.png"
    assert len(set(nested.train_groups)) == 5
    assert load_frame_folders(tmp_path / "flat").train_groups is None, "nothing known of flat frames' shots"


def test_the_world_s_train_frames_carry_their_shot(tiny_world):
    task = load_world(tiny_world)
    assert task.train_groups is not None and len(task.train_groups) == len(task.train)
    assert all("#shot" in g for g in task.train_groups)
    assert len(set(task.train_groups)) > 1
