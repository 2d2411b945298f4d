"""pm-k on hand-built predictions, Clopper-Pearson against closed forms, and the two frame sources."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vivi.errors import UserError
from vivi.evaluate.encoders import Encoder
from vivi.evaluate.robustness import (
    anchors,
    clopper_pearson,
    evaluate_robustness,
    format_robustness,
    load_robustness_task,
    load_world,
    pm_k_outcomes,
    robustness_metrics,
)


def test_anchors_have_disjoint_windows():
    assert anchors(9, 1) == [1, 4, 7]
    assert anchors(10, 2) == [2, 7]
    assert anchors(4, 2) == [2]  # shorter than 2k+1: the middle frame
    assert anchors(5, 0) == [0, 1, 2, 3, 4]
    assert anchors(0, 3) == []


def test_pm_k_needs_every_neighbour_right():
    correct = [1, 1, 0, 1, 1, 1, 1, 1, 1]
    # anchors 1, 4, 7: all three anchor frames are right; the window 0..2 holds the mistake at 2
    assert pm_k_outcomes(correct, 1) == ([True, True, True], [False, True, True])
    assert pm_k_outcomes([1, 0, 1], 0) == ([True, False, True], [True, False, True])
    # clipped at the ends: anchor 2 of 4 frames with k=2 sees frames 0..3
    assert pm_k_outcomes([0, 1, 1, 1], 2) == ([True], [False])


def test_metrics_over_sequences():
    seqs = [
        (np.array([3, 3, 5, 3, 3, 3, 3, 3, 3]), 3),  # anchors 1, 4, 7: anchor 3/3, pm-1 2/3
        (np.array([1, 2, 2]), np.array([2, 2, 2])),  # anchor 1: right, but frame 0 wrong -> pm-1 0/1
        (np.array([0, 0, 0, 0]), 1),  # 4 frames, k=1: one anchor (frame 1), wrong
    ]
    m = robustness_metrics(seqs, k=1)
    assert (m["n_sequences"], m["n_anchors"]) == (3, 5)
    assert m["anchor_accuracy"] == pytest.approx(80.0) and m["pmk_accuracy"] == pytest.approx(40.0)
    assert m["difference"] == pytest.approx(40.0)
    lo, hi = clopper_pearson(2, 5)
    assert m["pmk_ci"] == pytest.approx([100 * lo, 100 * hi])
    with pytest.raises(ValueError):
        robustness_metrics(seqs, k=-1)


def test_clopper_pearson_matches_closed_forms_and_tables():
    # x = 0: the upper bound solves (1 - p)^n = alpha/2; x = n: the lower bound solves p^n = alpha/2
    assert clopper_pearson(0, 10) == pytest.approx((0.0, 1 - 0.025 ** (1 / 10)))
    assert clopper_pearson(10, 10) == pytest.approx((0.025 ** (1 / 10), 1.0))
    assert clopper_pearson(0, 10)[1] == pytest.approx(0.30850, abs=1e-5)
    # 7 of 10: the textbook exact interval (0.3475, 0.9333)
    assert clopper_pearson(7, 10) == pytest.approx((0.34755, 0.93330), abs=1e-4)
    lo, hi = clopper_pearson(5, 10)
    assert lo == pytest.approx(1 - hi)  # symmetric at one half


def _png(path: Path, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), color).save(path)


RED, BLUE = (220, 10, 10), (10, 10, 220)


def _frames_dir(root: Path) -> Path:
    for i in range(5):
        _png(root / "train" / "red" / f"{i}.png", RED)
        _png(root / "train" / "blue" / f"{i}.png", BLUE)
    for i in range(9):  # a red video whose frame 3 looks blue (a perturbation)
        _png(root / "test" / "red" / "v1" / f"f{i:02d}.png", BLUE if i == 3 else RED)
    for i in range(3):
        _png(root / "test" / "blue" / "v2" / f"f{i:02d}.png", BLUE)
    return root


class MeanColour(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def test_frame_folders_end_to_end(tmp_path):
    root = _frames_dir(tmp_path / "vids")
    task = load_robustness_task(f"frames:{root}")
    assert task.classes == ["blue", "red"] and len(task.train) == 10
    assert [(s.name, s.label, len(s.frames)) for s in task.sequences] == [("blue/v2", 0, 3), ("red/v1", 1, 9)]
    out = tmp_path / "r.json"
    result = evaluate_robustness(Encoder("colour", MeanColour(), 4), f"frames:{root}", k=1, out_json=out, progress=False)
    # anchors: blue/v2 -> [1] right; red/v1 -> 1, 4, 7 right; pm-1 fails at anchor 4 (frame 3 wrong)
    (e,) = result["tasks"]
    assert (e["n_anchors"], e["anchor_accuracy"], e["pmk_accuracy"], e["difference"]) == (4, 100.0, 75.0, 25.0)
    assert e["accuracy"] == 75.0 and json.loads(out.read_text()) == result
    assert "pm-1 75.0%" in format_robustness(result)


def test_frame_folder_errors(tmp_path):
    root = _frames_dir(tmp_path / "a")
    (root / "test" / "blue" / "v2" / "f00.png").rename(root / "test" / "blue" / "f00.png")
    with pytest.raises(UserError, match="must sit in a video folder"):
        load_robustness_task(f"frames:{root}")
    root = _frames_dir(tmp_path / "b")
    _png(root / "test" / "blue" / "v3" / "f00.png", BLUE)
    for p in (root / "test" / "blue" / "v2").iterdir():
        p.unlink()
    with pytest.raises(UserError, match=r"v2: no frames"):
        load_robustness_task(f"frames:{root}")
    root = _frames_dir(tmp_path / "c")
    for p in (root / "test" / "blue" / "v2").iterdir():
        p.unlink()
    (root / "test" / "blue" / "v2").rmdir()
    (root / "test" / "blue").rmdir()
    with pytest.raises(UserError, match="missing classes present in train/: blue"):
        load_robustness_task(f"frames:{root}")
    with pytest.raises(UserError, match="unknown task spec"):
        load_robustness_task("mini-vtab")


def _video(path: Path, colors: list[tuple[int, int, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=4)
        stream.width = stream.height = 16
        stream.pix_fmt = "yuv420p"
        for c in colors:
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), c, np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def test_world_uses_single_class_shots(tmp_path):
    shots = {  # video -> [(start, end, object classes)]
        "videos/a.mp4": [(0, 3, [2]), (4, 7, [1, 5])],
        "videos/b.mp4": [(0, 4, [3, 3]), (5, 7, [4, 0])],
    }
    rows = []
    for name, spec in shots.items():
        _video(tmp_path / name, [RED] * 8)
        rows.append({"video": name, "shots": [{"start_frame": s, "end_frame": e, "objects": [{"cls": c} for c in cls]}
                                               for s, e, cls in spec]})  # fmt: skip
    (tmp_path / "ground_truth.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = load_world(tmp_path)
    # video a trains (its single-class shot: frames 0..3, every other one), video b is tested
    assert list(task.train.labels) == [2, 2] and len(task.classes) == 10
    assert [(s.name, s.label, len(s.frames)) for s in task.sequences] == [("videos/b.mp4#shot0", 3, 5)]
    assert task.sequences[0].frames.images([0]).shape == (1, 3, 16, 16)


def test_a_co_trained_head_classifies_the_world_frames(tmp_path, tiny_data, tiny_world):
    """--head: the run's own classifier, classes matched by name; no probe is fitted."""
    from vivi.config import apply_overrides, preset
    from vivi.data.synth.tasks import render_labelled
    from vivi.evaluate.classifier import head_classifier
    from vivi.evaluate.encoders import load_encoder
    from vivi.evaluate.robustness import evaluate_robustness
    from vivi.train.loop import pretrain

    labelled = render_labelled(tmp_path / "labelled", per_class=2, size=32)
    cfg = apply_overrides(preset("Sup-ImageNet"), ["data.videos=4", "data.workers=0", "optim.steps=1", "device=cpu"])
    run = pretrain(cfg, [labelled], tmp_path / "run", progress=False)
    head = head_classifier(run)
    from vivi.data.synth import CLASS_NAMES

    assert head.classes == sorted(CLASS_NAMES), "the folder's class names, in the head's order"
    result = evaluate_robustness(load_encoder(str(run)), f"world:{tiny_world}", k=1, progress=False, head=head)
    entry = result["tasks"][0]
    assert entry["classifier"] == "head" and "C" not in entry
    assert 0 <= entry["pmk_accuracy"] <= entry["anchor_accuracy"] <= 100
    assert result["model_source"] == str(run.resolve()) and "checkpoint" not in result

    # a checkpoint of the run by path: its own head and backbone, and the results say which step
    from vivi.train.checkpoint import list_checkpoints

    (step,) = list_checkpoints(run)
    again = evaluate_robustness(load_encoder(str(step)), f"world:{tiny_world}", k=1, progress=False,
                                head=head_classifier(step))  # fmt: skip
    assert again["checkpoint"] == {"path": str(step.resolve()), "step": 1} and again["model"] == "run@step1"
    assert again["tasks"][0]["pmk_accuracy"] == entry["pmk_accuracy"], "the last step's weights are the final ones"


def test_broken_frames_drop_their_sequence_and_are_listed(tmp_path, capsys):
    """A broken test frame would be read as black and counted as a (wrong) prediction, and dropping
    just the frame would make its neighbours look adjacent: its sequence is left out, and said so."""
    root = _frames_dir(tmp_path / "vids")
    _png(root / "test" / "blue" / "v3" / "f00.png", BLUE)
    (root / "test" / "blue" / "v3" / "f01.png").write_bytes(b"")
    (root / "train" / "red" / "0.png").write_bytes(b"not a png")
    result = evaluate_robustness(Encoder("colour", MeanColour(), 4), f"frames:{root}", k=1, progress=False)
    (e,) = result["tasks"]
    assert (e["n_sequences"], e["n_anchors"], e["n_train"]) == (2, 4, 9)
    assert e["skipped_images"] == [f"{root / 'train/red/0.png'} (not an image format PIL can read)",
                                   f"{root / 'test/blue/v3/f01.png'} (empty file (0 bytes))"]  # fmt: skip
    assert "left out 1 sequences with unreadable frames: blue/v3" in capsys.readouterr().err
