"""`--detector content|adaptive`: PySceneDetect's detectors fed from our one decode pass."""

from __future__ import annotations

import sys
from pathlib import Path

import av
import numpy as np
import pytest

from test_ingest import check_shards_agree, run_ingest, write_video
from test_shots import clip
from vivi.cli import main
from vivi.data import detectors, video
from vivi.data.detectors import SceneDetectFrames, cuts_to_shots, make_frame_detector
from vivi.data.shots import Shot
from vivi.errors import UserError

FPS = 10


def test_cuts_become_inclusive_segments():
    assert cuts_to_shots([30, 10], 50) == [Shot(0, 9), Shot(10, 29), Shot(30, 49)]
    assert cuts_to_shots([0, 50, 60], 50) == [Shot(0, 49)]  # cuts outside (0, n) are no cuts
    assert cuts_to_shots([], 0) == []


def test_frames_are_shrunk_like_scenedetects_scene_manager():
    d = make_frame_detector("content", 25.0)
    assert d.pixel_format == "bgr24"
    assert d.width(1920, 1080) == 256 and d.width(1080, 1920) == 144 and d.width(64, 48) == 64


@pytest.mark.parametrize("name", ["content", "adaptive"])
def test_scenedetect_finds_the_hard_cuts_in_one_decode_pass(tmp_path, monkeypatch, name):
    frames, truth = clip(0)  # every shot at least min_scene_len=15 frames long
    write_video(tmp_path / "clip.mp4", frames)
    opened = []
    real_open = av.open
    monkeypatch.setattr(video.av, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    run_ingest(tmp_path / "clip.mp4", tmp_path / "out", fps=FPS, detector=name)
    assert len(opened) == 1, "the detector must be fed from ingest's decode loop, not a second decode"
    [record] = check_shards_agree(tmp_path / "out")
    starts = [s["start_frame"] for s in record["shots"]]
    hard_cuts = [truth[1].start_frame, truth[3].start_frame]  # truth[2] follows a dissolve
    assert all(any(abs(s - c) <= 1 for s in starts) for c in hard_cuts), (starts, hard_cuts)
    assert record["shots"][0]["start_frame"] == 0 and record["shots"][-1]["end_frame"] == len(frames) - 1


def test_short_segments_are_no_shots():
    """The same minimum shot length as the histogram detector: 1 s, here 10 frames."""

    class Cuts:  # a stand-in detector that reports fixed cuts
        def process_frame(self, frame_num: int, image: np.ndarray) -> list[int]:
            return [frame_num] if frame_num in (20, 25) else []

        def post_process(self, frame_num: int) -> list[int]:
            return []

    d = SceneDetectFrames(Cuts(), fps=FPS)
    for _ in range(50):
        d.push(np.zeros((4, 4, 3), np.uint8))
    assert d.shots() == [Shot(0, 19), Shot(25, 49)]  # 20..24 is half a second


def test_missing_scenedetect_is_a_one_line_user_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "scenedetect.detectors", None)  # import now fails
    write_video(tmp_path / "a.mp4", clip(0)[0][:20])
    with pytest.raises(UserError, match=r"pip install 'vivi\[scenedetect\]'"):
        run_ingest(tmp_path / "a.mp4", tmp_path / "out", detector="adaptive")
    assert main(["ingest", str(tmp_path / "a.mp4"), str(tmp_path / "out2"), "--detector", "content"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'vivi[scenedetect]'" in err
    assert not (tmp_path / "out2").exists(), "the check comes before any work"


def test_unknown_detector_names_the_choices():
    with pytest.raises(UserError, match="histogram, content, adaptive"):
        detectors.check_detector("magic")


def test_histogram_is_still_the_default(tmp_path):
    frames, truth = clip(1)
    write_video(tmp_path / "c.mp4", frames)
    run_ingest(tmp_path / "c.mp4", Path(tmp_path / "out"), fps=FPS)
    [record] = check_shards_agree(tmp_path / "out")
    assert len(record["shots"]) == len(truth)  # the dissolve is excluded, so four shots


def test_histogram_frames_batch_their_thumbnails_without_changing_the_shots():
    """Thumbnails are collected into batches for the features: shots as frame by frame, for a
    length that is no multiple of the batch and a video whose size changes midway."""
    from vivi.data.shots import detect_shots, frame_features

    frames, _ = clip(1)
    frames = frames[:45] + [f[::2, ::2] for f in frames[45:]]
    d = make_frame_detector("histogram", FPS)
    for f in frames:
        d.push(f)
    assert len(frames) % d.BATCH and d.shots() == detect_shots([frame_features(f) for f in frames], FPS)
    assert len(d.shots()) >= 3
