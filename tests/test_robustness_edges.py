"""Edge cases of the robustness numbers: a hand-worked pm-k case, Clopper-Pearson against the
binomial tails directly, odd sequences, leakage and truncated videos, and corruptions that must
match ImageNet-C and not depend on how images are batched."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_robustness import RED, MeanColour, _frames_dir, _png, _video

from vivi.data.tasks import ArraySplit
from vivi.errors import UserError
from vivi.evaluate.corruptions import CorruptedSplit, corrupt
from vivi.evaluate.encoders import Encoder
from vivi.evaluate.robustness import (
    anchors,
    clopper_pearson,
    evaluate_robustness,
    load_robustness_task,
    load_world,
    pm_k_outcomes,
    robustness_metrics,
)

# ---- pm-k by hand


def test_eleven_frames_by_hand():
    # frames 0..10, wrong at 2 and 9
    correct = [f not in (2, 9) for f in range(11)]
    # k=1: windows 0-2, 3-5, 6-8; frames 9, 10 are in no window (the mistake at 9 is not seen)
    assert anchors(11, 1) == [1, 4, 7]
    assert pm_k_outcomes(correct, 1) == ([True, True, True], [False, True, True])
    # k=2: windows 0-4, 5-9; frame 10 unscored. Anchor 2 is itself wrong; anchor 7 sees frame 9
    assert anchors(11, 2) == [2, 7]
    assert pm_k_outcomes(correct, 2) == ([False, True], [False, False])
    m = robustness_metrics([(np.array([0 if c else 1 for c in correct]), 0)], k=2)
    assert (m["n_anchors"], m["anchor_accuracy"], m["pmk_accuracy"], m["difference"]) == (2, 50.0, 0.0, 50.0)


def test_short_sequences_k0_and_huge_k():
    # shorter than 2k+1: one anchor in the middle, judged on the whole (clipped) sequence
    assert anchors(3, 2) == [1] and pm_k_outcomes([1, 1, 0], 2) == ([True], [False])
    assert anchors(1, 4) == [0] and pm_k_outcomes([1], 4) == ([True], [True])
    # k=0: every frame an anchor, pm-0 == anchor accuracy
    m = robustness_metrics([(np.array([1, 0, 1, 1]), 1)], k=0)
    assert m["n_anchors"] == 4 and m["anchor_accuracy"] == m["pmk_accuracy"] == 75.0
    # k above every sequence: one anchor per sequence, right only if every frame is
    m = robustness_metrics([(np.array([1, 0, 1, 1, 1]), 1), (np.array([2, 2]), 2)], k=50)  # middle frames 2, 1
    assert (m["n_anchors"], m["anchor_accuracy"], m["pmk_accuracy"]) == (2, 100.0, 50.0)


def test_empty_sequences_are_not_counted():
    """Fails without the fix: an empty sequence gave no anchor but raised n_sequences."""
    m = robustness_metrics([(np.array([], dtype=int), 0), (np.array([1, 1, 1]), 1)], k=1)
    assert (m["n_sequences"], m["n_anchors"]) == (1, 1)


# ---- Clopper-Pearson from the binomial tails, no beta function


def _cp_by_tails(x: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    def pmf(p: float, j: int) -> float:
        return math.comb(n, j) * p**j * (1 - p) ** (n - j)

    def solve(too_high) -> float:  # bisection on p in [0, 1]
        lo, hi = 0.0, 1.0
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if too_high(mid) else (mid, hi)
        return (lo + hi) / 2

    lower = 0.0 if x == 0 else solve(lambda p: sum(pmf(p, j) for j in range(x, n + 1)) >= alpha / 2)
    upper = 1.0 if x == n else solve(lambda p: sum(pmf(p, j) for j in range(x + 1)) <= alpha / 2)
    return lower, upper


@pytest.mark.parametrize("x,n", [(0, 1), (1, 1), (0, 7), (7, 7), (3, 10), (1, 50), (49, 50), (137, 200)])
def test_clopper_pearson_equals_binomial_tail_inversion(x, n):
    assert clopper_pearson(x, n) == pytest.approx(_cp_by_tails(x, n), abs=1e-9)


# ---- sources: classes, leakage, truncation


def test_a_class_with_one_one_frame_sequence_and_mixed_sizes(tmp_path):
    root = tmp_path / "mixed"
    for i, (w, h) in enumerate([(4, 4), (9, 5), (6, 13)]):
        Image.new("RGB", (w, h), RED).save(_path(root / "train" / "red" / f"{i}.png"))
        Image.new("RGB", (h, w), (10, 10, 220)).save(_path(root / "train" / "blue" / f"{i}.png"))
    for i in range(5):
        Image.new("RGB", (5 + i, 9), RED).save(_path(root / "test" / "red" / "v1" / f"f{i}.png"))
    Image.new("RGB", (3, 3), (10, 10, 220)).save(_path(root / "test" / "blue" / "only" / "f0.png"))
    task = load_robustness_task(f"frames:{root}")
    assert [(s.name, s.label, len(s.frames)) for s in task.sequences] == [("blue/only", 0, 1), ("red/v1", 1, 5)]
    (e,) = evaluate_robustness(Encoder("colour", MeanColour(), 8), f"frames:{root}", k=1, progress=False)["tasks"]
    # red/v1 (5 frames): anchor 1; blue/only (1 frame): anchor 0
    assert (e["n_sequences"], e["n_anchors"], e["pmk_accuracy"]) == (2, 2, 100.0)


def _path(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_a_test_frame_linked_into_train_is_an_error(tmp_path, link):
    """Fails without the fix: train/ assembled from links to test frames went unnoticed."""
    root = _frames_dir(tmp_path / "vids")
    target = root / "test" / "red" / "v1" / "f04.png"
    made = root / "train" / "red" / "from_test.png"
    os.symlink(target, made) if link == "symlink" else os.link(target, made)
    with pytest.raises(UserError, match=r"f04.png: the same file as a train/ image"):
        load_robustness_task(f"frames:{root}")


def test_world_split_is_by_video_and_labels_follow_shots(tmp_path):
    rows = []
    for v in range(4):  # videos 0, 1 train; 2, 3 test; shot classes differ per video
        name = f"videos/video_{v:05d}.mp4"
        _video(tmp_path / name, [RED] * 6)
        rows.append({"video": name, "num_frames": 6, "shots": [
            {"start_frame": 0, "end_frame": 2, "objects": [{"cls": v}]},
            {"start_frame": 3, "end_frame": 5, "objects": [{"cls": v + 4}, {"cls": v + 4}]}]})  # fmt: skip
    (tmp_path / "ground_truth.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
    task = load_world(tmp_path)
    assert sorted(set(task.train.labels.tolist())) == [0, 1, 4, 5]
    assert [(s.name, s.label, len(s.frames)) for s in task.sequences] == [
        ("videos/video_00002.mp4#shot0", 2, 3), ("videos/video_00002.mp4#shot1", 6, 3),
        ("videos/video_00003.mp4#shot0", 3, 3), ("videos/video_00003.mp4#shot1", 7, 3)]  # fmt: skip


@pytest.mark.parametrize("num_frames", [12, None])
def test_a_truncated_world_video_is_an_error(tmp_path, num_frames):
    """Fails without the fix: shots past the decoded frames were cut short or left empty silently."""
    rows = []
    for name in ("videos/a.mp4", "videos/b.mp4"):
        _video(tmp_path / name, [RED] * 8)  # the ground truth says 12 frames
        row = {"video": name, "shots": [{"start_frame": 0, "end_frame": 4, "objects": [{"cls": 1}]},
                                        {"start_frame": 5, "end_frame": 11, "objects": [{"cls": 2}]}]}  # fmt: skip
        rows.append({**row, "num_frames": num_frames} if num_frames else row)
    (tmp_path / "ground_truth.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=r"a.mp4: decoded 8 frames, the ground truth expects 12"):
        load_world(tmp_path)


# ---- corruptions


def test_contrast_keeps_each_channels_mean_as_imagenet_c():
    """Fails without the fix: one mean over all channels turned a pure red image grey-pink."""
    red = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    red[:, 0] = 255
    for severity in (1, 5):
        assert torch.equal(corrupt(red, "contrast", severity), red)
    # ImageNet-C's numpy formula on an H x W x 3 image, written out
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (5, 5, 3)).astype(np.float64) / 255
    means = hwc.mean(axis=(0, 1), keepdims=True)
    want = np.clip((hwc - means) * 0.2 + means, 0, 1) * 255
    x = torch.from_numpy((hwc * 255).round().astype(np.uint8)).permute(2, 0, 1)[None]
    got = corrupt(x, "contrast", 3)[0].permute(1, 2, 0).numpy().astype(np.float64)
    assert np.abs(got - want).max() <= 1.0


def test_corruption_of_an_image_does_not_depend_on_its_batch():
    """Fails without the fix: the noise was seeded by the batch's first index."""
    rng = np.random.default_rng(1)
    base = ArraySplit(rng.integers(0, 256, (6, 8, 8, 3)).astype(np.uint8), np.zeros(6))
    split = CorruptedSplit(base, "gaussian_noise", 3)
    together = split.images(np.arange(6))
    assert torch.equal(together[2:4], split.images([2, 3]))
    assert torch.equal(together[4], split.images([4])[0])
    assert torch.equal(together, CorruptedSplit(base, "gaussian_noise", 3).images(np.arange(6))), "seeded"
    assert not torch.equal(together[0], together[1])
    assert split.images([]).shape == (0, 3, 8, 8)
