"""Inputs the other tests do not bring: found by feeding `vivi` unusual videos and image folders."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from test_linear import TinyCNN, _image_folder
from test_robustness import BLUE, MeanColour, _frames_dir, _png
from vivi.data.ingest import ingest
from vivi.data.shards import INDEX_NAME, read_records
from vivi.data.shots import Shot, max_step_s, split_at_gaps
from vivi.data.tasks import load_tasks
from vivi.data.video import Video
from vivi.errors import UserError
from vivi.evaluate import suite
from vivi.evaluate.encoders import Encoder
from vivi.evaluate.fingerprint import task_fingerprint
from vivi.evaluate.robustness import evaluate_robustness, frame_order, load_robustness_task

FPS = 10


def write_ts(path: Path, colours: list[tuple[int, int, int]], frames_each: int = 20) -> None:
    """An MPEG-TS clip, one solid colour per shot of ``frames_each`` frames, timestamps from 0."""
    with av.open(str(path), "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        for colour in colours:
            for _ in range(frames_each):
                image = np.zeros((24, 32, 3), np.uint8) + np.array(colour, np.uint8)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def test_timestamps_that_restart_keep_increasing_and_the_whole_video_is_sampled(tmp_path):
    """Two MPEG-TS files joined with ``cat`` (a common way to merge recordings): the second part's
    timestamps start again from 0. Its frames used to get times before the next sampling time,
    so the whole second part was decoded and silently yielded no sample and no shot."""
    write_ts(tmp_path / "a.ts", [(255, 0, 0), (0, 255, 0)])
    write_ts(tmp_path / "b.ts", [(0, 0, 255), (255, 255, 0)])
    joined = tmp_path / "joined.ts"
    joined.write_bytes((tmp_path / "a.ts").read_bytes() + (tmp_path / "b.ts").read_bytes())
    with Video(str(joined)) as video:
        times = [frame.t for frame in video.frames()]
    assert len(times) == 80
    assert all(b > a for a, b in zip(times, times[1:]))
    assert abs(times[40] - 4.0) < 1e-6  # one frame period after the last frame of the first part

    ingest(joined, tmp_path / "out", fps=1.0, progress=False)
    [record] = read_records(tmp_path / "out" / INDEX_NAME)
    assert record["status"] == "ok"
    assert record["duration_s"] == 8.0
    assert len(record["shots"]) == 4  # the two shots of the second part too
    kept = [f["t"] for s in record["shots"] for f in s["frames"]]
    assert max(kept) >= 7.0


def write_mkv(path: Path, rate: int, pts: list[int], colours: list[tuple[int, int, int]]) -> None:
    """A Matroska clip declaring ``rate`` fps, frame i at ``pts[i] / rate`` seconds in ``colours[i]``."""
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        for p, colour in zip(pts, colours):
            frame = av.VideoFrame.from_ndarray(np.zeros((24, 32, 3), np.uint8) + np.array(colour, np.uint8), "rgb24")
            frame.pts, frame.time_base = p, Fraction(1, rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_a_declared_rate_far_from_the_timestamps_gives_way_to_the_measured_one(tmp_path):
    """Browser MediaRecorder WebMs declare 1000 fps (their time base) for frames ~33 ms apart. The
    detector took the 1 s minimum shot as 1000 frames and the video was skipped ("no stretch of
    1 s without a cut"); the rate the timestamps show is used now, and recorded."""
    path = tmp_path / "rate1000.mkv"
    write_mkv(path, 1000, [i * 100 for i in range(40)], [(255, 0, 0)] * 20 + [(0, 0, 255)] * 20)
    with Video(str(path)) as video:
        assert video.fps == 1000.0  # what the file declares
    ingest(path, tmp_path / "out", fps=1.0, progress=False)
    [record] = read_records(tmp_path / "out" / INDEX_NAME)
    assert record["status"] == "ok" and record["fps"] == 10.0 and record["duration_s"] == 4.0
    assert [(s["start_frame"], s["end_frame"]) for s in record["shots"]] == [(0, 19), (20, 39)]


def test_a_long_stretch_without_frames_ends_a_shot_where_frames_were_lost(tmp_path):
    """Damage to a file (packets that fail to decode up to the next keyframe) leaves seconds with no
    frame; the frames after it may repeat the last good picture. Frames on either side of such a
    gap were joined into one shot, which could hold shots never seen."""
    path = tmp_path / "damaged.mkv"
    with av.open(str(path), "w", format="matroska") as container:  # three shots, a corner that changes
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(60):
            image = np.zeros((48, 64, 3), np.uint8) + np.array(np.eye(3, dtype=np.uint8)[i // 20] * 255)
            image[:24, :32] = 128 + i % 50
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, "rgb24")))
        container.mux(stream.encode())
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 400] = bytes(400)  # zeros over some packets mid-file
    path.write_bytes(bytes(data))
    with Video(str(path)) as video:
        times = [frame.t for frame in video.frames()]
        assert video.decode_errors > 0 and max(b - a for a, b in zip(times, times[1:])) > max_step_s(10.0)
    ingest(path, tmp_path / "out", fps=1.0, progress=False)
    [record] = read_records(tmp_path / "out" / INDEX_NAME)
    assert record["decode_errors"] > 0 and record["shots"]
    for shot in record["shots"]:
        inside = times[shot["start_frame"] : shot["end_frame"] + 1]
        assert max(b - a for a, b in zip(inside, inside[1:])) <= max_step_s(10.0), shot


def test_an_undamaged_still_held_for_seconds_stays_in_its_shot(tmp_path):
    """A variable-rate screen recording emits a frame only when the picture changes: seconds between
    frames there are a still picture held, not frames lost, and the shot goes on across them."""
    path = tmp_path / "still.mkv"
    write_mkv(path, 10, [*range(20), *range(60, 80)], [(255, 0, 0)] * 40)
    ingest(path, tmp_path / "out", fps=1.0, progress=False)
    [record] = read_records(tmp_path / "out" / INDEX_NAME)
    assert record["fps"] == 10.0 and record["decode_errors"] == 0
    shots = [(s["start_frame"], s["end_frame"], s["start_s"], s["end_s"]) for s in record["shots"]]
    assert shots == [(0, 39, 0.0, 8.0)]


def test_split_at_gaps_drops_pieces_shorter_than_a_shot():
    times = [i / 10 for i in range(20)] + [6 + i / 10 for i in range(5)] + [9 + i / 10 for i in range(12)]
    assert split_at_gaps([Shot(0, 36)], times, 10.0) == [Shot(0, 19), Shot(25, 36)]  # 5 frames < 1 s
    assert split_at_gaps([Shot(0, 19), Shot(20, 36)], times[:20] + [2 + i / 10 for i in range(17)], 10.0) == [
        Shot(0, 19), Shot(20, 36)]  # fmt: skip


def test_frame_folders_skip_mac_clutter_and_order_unpadded_frame_numbers(tmp_path):
    """``frames:DIR`` sequences copied from a Mac carry ``._name`` AppleDouble files next to each
    frame: they used to count as broken frames and drop every sequence. Unpadded frame numbers
    used to sort 0, 1, 10, 11, 2, ..., so pm-k compared frames far apart as neighbours."""
    root = _frames_dir(tmp_path / "vids")
    sequence = root / "test" / "blue" / "v3"
    for i in range(12):
        _png(sequence / f"frame_{i}.png", BLUE)
    (sequence / "._frame_0.png").write_bytes(b"\x00\x05\x16\x07Mac OS X")
    (sequence / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "test" / "blue" / "._f00.png").write_bytes(b"\x00\x05\x16\x07Mac OS X")  # not a loose frame
    task = load_robustness_task(f"frames:{root}")
    [v3] = [s for s in task.sequences if s.name == "blue/v3"]
    assert [p.name for p in v3.frames.paths] == [f"frame_{i}.png" for i in range(12)]
    assert sorted([Path("f10.png"), Path("f9.png"), Path("f009b.png")], key=frame_order) == [
        Path("f9.png"), Path("f009b.png"), Path("f10.png")]  # fmt: skip
    result = evaluate_robustness(Encoder("colour", MeanColour(), 4), f"frames:{root}", k=1, progress=False)
    (entry,) = result["tasks"]
    assert entry["n_sequences"] == 3 and "skipped_images" not in entry


@pytest.mark.parametrize("protocol", ["linear", "knn", "corruptions"])
def test_a_validation_split_with_no_readable_image_is_a_one_line_error(tmp_path, protocol):
    """A folder's val/ (or the fifth of train/ held out for it) whose every file is broken used to
    stop the probe with scikit-learn's "Found array with 0 sample(s)" traceback."""
    root = _image_folder(tmp_path / "d")
    for c in ("0", "1"):
        (root / "val" / c).mkdir(parents=True)
        (root / "val" / c / "x.jpg").write_text("not an image")
    with pytest.raises(UserError, match=r"no readable validation image .* skipped 2 unreadable images"):
        suite.evaluate_tasks(TinyCNN(), load_tasks(f"imagefolder:{root}"), protocol=protocol, image_size=8,
                             model_name="tiny", progress=False)  # fmt: skip


def test_file_names_that_are_not_utf8_are_ingested_and_evaluated(tmp_path):
    """Names in another encoding (Latin-1, from an old archive) reach Python with surrogates;
    hashing them for a shard key or an image folder's fingerprint raised UnicodeEncodeError."""
    name = os.fsdecode(b"caf\xe9")
    videos = tmp_path / "videos"
    videos.mkdir()
    write_ts(videos / f"{name}.ts", [(255, 0, 0), (0, 0, 255)])
    summary = ingest(videos, tmp_path / "out", fps=1.0, progress=False)
    assert summary.videos_ok == 1
    [record] = read_records(tmp_path / "out" / INDEX_NAME)
    assert record["key"].isascii() and record["source"].endswith(f"{name}.ts")

    root = _image_folder(tmp_path / "d", per_class=5)
    (root / "train" / "0" / "0.png").rename(root / "train" / "0" / f"{name}.png")
    [task] = load_tasks(f"imagefolder:{root}")
    assert len(task_fingerprint(task)) == 16


def test_too_short_shots_are_named_as_the_reason_no_video_can_supply_a_clip():
    """Three shots of 2 sampled frames each, for a preset wanting one shot of 8: the message
    said only "most shots in a video: 3", which reads as if shots were what was missing."""
    from vivi.config import DataConfig
    from vivi.data.batches import training_videos

    shot = {"start_frame": 0, "end_frame": 9, "frames": [{"frame": 0, "t": 0.0}, {"frame": 5, "t": 1.0}]}
    record = {"key": "v-0", "status": "ok", "shots": [shot] * 3}
    with pytest.raises(UserError, match=r"has a shot of >= 8 frames \(most shots in a video: 3, "
                                        r"most sampled frames in a shot: 2\)"):  # fmt: skip
        training_videos([record], DataConfig(shots=1, frames=8), "data")
