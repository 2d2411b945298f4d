"""`vivi ingest` across containers and codecs, and on a variable-frame-rate file.

Every video is tiny (64x48, a few seconds) and written here with PyAV, so each test shows
one thing: the codec/container decodes, the cut is found, frames are sampled by timestamp.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from test_ingest import check_shards_agree, run_ingest

W, H, FPS = 64, 48, 10
CUT = 20  # the first frame of the second shot
RED, BLUE = (200, 40, 30), (30, 60, 210)


def picture(i: int, cut: int = CUT) -> np.ndarray:
    """A flat colour (red before ``cut``, blue from it) with a bright bar moving 3 px per frame."""
    image = np.full((H, W, 3), RED if i < cut else BLUE, np.uint8)
    image[:, (3 * i) % W] = 255
    return image


def write(path: Path, codec: str, frames: int = 2 * CUT, pts_ms: list[int] | None = None, cut: int = CUT) -> None:
    """Encode ``frames`` pictures at FPS, or at the given millisecond timestamps (VFR)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        if pts_ms is not None:
            stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(picture(i, cut), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def need(codec: str) -> None:
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV/FFmpeg build has no {codec} encoder (av.codecs_available)")


@pytest.mark.parametrize(
    "codec, suffix, decoder",
    [("libx264", ".mp4", "h264"), ("libx265", ".mp4", "hevc"), ("libvpx-vp9", ".webm", "vp9"),
     ("mpeg4", ".avi", "mpeg4"), ("libx264", ".mov", "h264"), ("libx264", ".mkv", "h264")],
    ids=["h264-mp4", "hevc-mp4", "vp9-webm", "mpeg4-avi", "h264-mov", "h264-mkv"],
)
def test_codec_and_container_ingest(tmp_path, codec, suffix, decoder):
    need(codec)
    path = tmp_path / f"video{suffix}"
    write(path, codec)
    with av.open(str(path)) as container:  # the file really holds what the test claims
        assert container.streams.video[0].codec_context.name == decoder
    summary = run_ingest(path, tmp_path / "out", fps=1.0)
    [record] = check_shards_agree(tmp_path / "out")
    assert summary.videos_ok == 1 and record["status"] == "ok", record["error"]
    assert (record["width"], record["height"], record["num_frames"]) == (W, H, 2 * CUT)
    assert record["fps"] == FPS and record["decode_errors"] == 0
    first, second = record["shots"]
    assert abs(first["end_frame"] - (CUT - 1)) <= 1 and abs(second["start_frame"] - CUT) <= 1
    assert [f["t"] for s in record["shots"] for f in s["frames"]] == [0.0, 1.0, 2.0, 3.0]


def test_variable_frame_rate_is_sampled_by_timestamp(tmp_path):
    """25 fps for 2 s, 5 fps for 2 s, 10 fps for 2 s: the nominal rate fits none of it, so
    sampling by frame count would keep the wrong frames; by timestamp, one per second."""
    gaps = [40] * 50 + [200] * 10 + [100] * 20
    pts = [sum(gaps[:i]) for i in range(len(gaps))]
    path = tmp_path / "vfr.mkv"
    write(path, "libx264", frames=len(pts), pts_ms=pts, cut=30)
    run_ingest(path, tmp_path / "out", fps=1.0, min_shots=1)
    [record] = check_shards_agree(tmp_path / "out")
    assert record["num_frames"] == 80
    kept = [(f["frame"], f["t"]) for s in record["shots"] for f in s["frames"]]
    # Frames 0..29 are red, 30.. blue (one cut at frame 30); the first frame at or after each
    # whole second: t=0 -> 0, 1.0 -> 25, 2.0 -> 50, 3.0 -> 55, 4.0 -> 60, 5.0 -> 70.
    assert kept == [(0, 0.0), (25, 1.0), (50, 2.0), (55, 3.0), (60, 4.0), (70, 5.0)]
    starts = [s["start_s"] for s in record["shots"]]
    assert starts == [0.0, 1.2]  # frame 30 at 30 * 40 ms


def test_a_one_picture_stream_before_the_video_is_not_taken_for_it(tmp_path):
    """A cover picture or thumbnail stream (web downloads embed one) may come first; the video
    stream is FFmpeg's best, not simply the first."""
    path = tmp_path / "with-cover.mkv"
    with av.open(str(path), "w") as container:
        cover = container.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 16, 16, "yuvj420p"
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        container.mux(cover.encode(av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")))
        container.mux(cover.encode())
        for i in range(2 * CUT):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture(i), format="rgb24")))
        container.mux(stream.encode())
    run_ingest(path, tmp_path / "out", fps=1.0)
    [record] = check_shards_agree(tmp_path / "out")
    assert (record["status"], record["width"], record["num_frames"], len(record["shots"])) == ("ok", W, 2 * CUT, 2)


@pytest.mark.parametrize("codec, raw_format", [("libx264", "h264"), ("mpeg4", "m4v")])
def test_a_raw_elementary_stream_keeps_its_own_frame_rate(tmp_path, codec, raw_format):
    """A raw Annex B .h264 (no timestamps) or .m4v stream, named like an mp4: FFmpeg's raw demuxer
    declares 25 fps whatever the bitstream says; the bitstream's 10 fps must win, or the frames'
    times, the sampling grid and the shortest shot (in frames) are all wrong."""
    need(codec)
    path = tmp_path / "raw.mp4"
    with av.open(str(path), "w", format=raw_format) as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i in range(2 * CUT):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture(i), format="rgb24")))
        container.mux(stream.encode())
    run_ingest(path, tmp_path / "out", fps=1.0)
    [record] = check_shards_agree(tmp_path / "out")
    assert (record["status"], record["fps"], record["duration_s"]) == ("ok", FPS, 4.0), record["error"]
    assert [f["t"] for s in record["shots"] for f in s["frames"]] == [0.0, 1.0, 2.0, 3.0]


def test_frame_times_are_the_exact_fractions_of_the_time_base(tmp_path):
    """NTSC's 30000/1001 fps in 1/30000 s ticks: each time is (pts - first pts) * time base,
    rounded once (a float time base, rounded first, is off in the last bit for many frames)."""
    from vivi.data.video import Video

    path = tmp_path / "ntsc.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(30000, 1001))
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i in range(90):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture(i), format="rgb24")))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        raw = [(f.pts, f.time_base) for f in container.decode(video=0)]
    expected = [float((pts - raw[0][0]) * time_base) for pts, time_base in raw]
    with Video(str(path)) as video:
        times = [frame.t for frame in video.frames()]
    assert times == expected and len(set(times)) == 90
    assert any(t != (pts - raw[0][0]) * float(tb) for t, (pts, tb) in zip(times, raw)), "the test can tell"


def test_decoding_threads_are_set_as_asked(tmp_path):
    from vivi.data.video import Video

    path = tmp_path / "v.mp4"
    write(path, "libx264", frames=12)
    decoded = {}
    for threads in (0, 1):
        with Video(str(path), threads) as video:
            decoded[threads] = [(f.t, video.thumbnail(f, 16).tobytes()) for f in video.frames()]
            if threads:
                assert video._stream.codec_context.thread_count == threads
    assert decoded[0] == decoded[1] and len(decoded[1]) == 12
