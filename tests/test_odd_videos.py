"""`vivi ingest` on files the built-in world never makes: found by feeding it odd videos and folders.

Every video is tiny (64x48, a few seconds at 5-10 fps) and written here with PyAV.
"""

from __future__ import annotations

import io
import os
import tarfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from test_ingest import check_shards_agree, run_ingest
from vivi.data.ingest import ingest
from vivi.data.shards import INDEX_NAME, read_records
from vivi.errors import UserError

W, H = 64, 48
COLOURS = [(200, 40, 30), (30, 60, 210), (30, 200, 60)]


def picture(i: int, shot: int) -> np.ndarray:
    """A flat colour per shot, a bright bar moving 3 px per frame, a green top-left corner."""
    image = np.zeros((H, W, 3), np.uint8) + np.array(COLOURS[shot], np.uint8)
    image[: H // 4, : W // 4] = (0, 220, 0)
    image[:, (3 * i) % W] = 255
    return image


def write(path: Path, codec: str = "libx264", fps: int = 5, shots: int = 2, per_shot: int = 15,
          options: dict | None = None, sample_aspect: Fraction | None = None, container_options: dict | None = None,
          times: list[float] | None = None, fade: int = 0) -> None:  # fmt: skip
    """``times``: each frame's time (s), a variable frame rate, instead of ``fps``'s even steps;
    ``fade``: the last that many frames fade to black."""
    frames = shots * per_shot
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        if sample_aspect is not None:
            stream.codec_context.sample_aspect_ratio = sample_aspect
        if times is not None:
            stream.time_base = Fraction(1, 1000)
        for i in range(frames):
            image = picture(i, i // per_shot)
            if i >= frames - fade:
                image = (image * ((frames - 1 - i) / fade)).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if times is not None:
                frame.pts, frame.time_base = round(times[i] * 1000), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def cut_in_half(path: Path) -> Path:
    """The file's first half of bytes, as an interrupted download or copy leaves it."""
    data = path.read_bytes()
    cut = path.with_name(f"cut_{path.name}")
    cut.write_bytes(data[: len(data) // 2])
    return cut


def records_by_name(out: Path) -> dict[str, dict]:
    return {Path(r["source"]).name: r for r in read_records(out / INDEX_NAME)}


def test_a_symbolic_link_loop_in_a_folder_is_an_error_record(tmp_path):
    """``a.mp4 -> b.mp4 -> a.mp4`` stopped the listing with ``RuntimeError: Symlink loop`` (a
    traceback), so none of the folder's good videos was ingested."""
    src = tmp_path / "src"
    src.mkdir()
    write(src / "good.mp4")
    (src / "loop_a.mp4").symlink_to("loop_b.mp4")
    (src / "loop_b.mp4").symlink_to("loop_a.mp4")
    summary = run_ingest(src, tmp_path / "out", fps=1.0)
    records = records_by_name(tmp_path / "out")
    assert (summary.videos_ok, summary.videos_error) == (1, 2)
    for name in ("loop_a.mp4", "loop_b.mp4"):
        assert records[name]["status"] == "error" and "symbolic link loop" in records[name]["error"]


def test_a_named_pipe_named_like_a_video_is_an_error_record_not_a_hang(tmp_path):
    """FFmpeg opening a FIFO with no writer waits forever: one ``x.mp4`` pipe in a folder hung the
    whole run (without ``--timeout``; with it, the reason only said the time ran out)."""
    src = tmp_path / "src"
    src.mkdir()
    write(src / "good.mp4")
    os.mkfifo(src / "fifo.mp4")
    summary = run_ingest(src, tmp_path / "out", fps=1.0, timeout=20)  # the timeout only guards the test
    records = records_by_name(tmp_path / "out")
    assert (summary.videos_ok, summary.videos_error) == (1, 1)
    assert records["fifo.mp4"]["error"].startswith("not a regular file but a named pipe"), records["fifo.mp4"]


def test_h264_with_b_frames_in_avi_is_timed_by_its_decoding_timestamps(tmp_path):
    """AVI has no presentation times: B-frames come out in display order with pts shuffled
    (1, 4, 3, 5, 2, ...). Each step back was taken for a timestamp restart, so a 6 s video was
    timed as ~10 s and sampled ~1.7 times a second at --fps 1."""
    path = tmp_path / "bframes.avi"
    write(path, options={"bf": "3"})
    with av.open(str(path)) as container:  # the file really is what the test claims
        pts = [f.pts for f in container.decode(video=0)]
    assert any(b < a for a, b in zip(pts, pts[1:]))
    run_ingest(path, tmp_path / "out", fps=1.0)
    [record] = check_shards_agree(tmp_path / "out")
    assert record["status"] == "ok" and record["num_frames"] == 30
    assert record["duration_s"] == 6.0
    assert [f["t"] for s in record["shots"] for f in s["frames"]] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert [(s["start_frame"], s["start_s"]) for s in record["shots"]] == [(0, 0.0), (15, 3.0)]


def test_anamorphic_video_is_stored_as_it_is_shown(tmp_path):
    """64x48 stored pixels 4:3 wide show as 85x48 (16:9), as DVDs (720x480 at 32:27) and HDV
    (1440x1080 at 4:3) do: frames were stored squashed at 64x48."""
    path = tmp_path / "anamorphic.mkv"
    write(path, sample_aspect=Fraction(4, 3))
    run_ingest(path, tmp_path / "out", fps=1.0)
    [record] = check_shards_agree(tmp_path / "out")  # also: every JPEG has the record's aspect
    assert (record["width"], record["height"]) == (85, 48)


def test_a_still_image_named_like_a_video_is_an_error_not_a_short_video(tmp_path):
    """A JPEG named .mp4 opened as a one-frame 0.04 s "video" and was skipped as too short for a shot."""
    src = tmp_path / "src"
    src.mkdir()
    write(src / "good.mp4")
    buffer = io.BytesIO()
    Image.fromarray(picture(0, 0)).save(buffer, "JPEG")
    (src / "photo.mp4").write_bytes(buffer.getvalue())
    summary = run_ingest(src, tmp_path / "out", fps=1.0)
    assert (summary.videos_ok, summary.videos_error) == (1, 1)
    assert records_by_name(tmp_path / "out")["photo.mp4"]["error"] == "a still image (JPEG), not a video"


def test_a_folder_that_cannot_be_read_is_named_not_silently_left_out(tmp_path, monkeypatch, capsys):
    """``os.walk`` drops a subfolder it may not read without a word: its videos were simply missing.
    (Root reads every folder, so the refusal is made here rather than with chmod.)"""
    src = tmp_path / "src"
    (src / "locked").mkdir(parents=True)
    write(src / "good.mp4")
    write(src / "locked" / "hidden_from_us.mp4")
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    summary = run_ingest(src, tmp_path / "out", fps=1.0)
    assert summary.videos_ok == 1
    err = capsys.readouterr().err
    assert f"cannot read the folder {src / 'locked'} (Permission denied); the files in it are left out" in err


def test_the_summary_names_the_videos_that_were_not_ingested(tmp_path, capsys):
    """The run ended with "1 ok, 0 skipped, 4 errors" and no word of which files or why."""
    src = tmp_path / "src"
    src.mkdir()
    write(src / "good.mp4")
    for name in ("a.mp4", "b.mp4", "c.mp4", "d.mp4"):
        (src / name).write_text("not a video\n")
    ingest(src, tmp_path / "out", fps=1.0, progress=True)
    err = capsys.readouterr().err
    assert f"  error: {src / 'a.mp4'}: cannot open: Invalid data found when processing input\n" in err
    assert f"  (and 1 more; every video's status and reason is in {tmp_path / 'out' / INDEX_NAME})" in err


def test_pretrain_on_an_ingest_where_every_video_failed_names_the_counts(tmp_path, capsys):
    """It said "run `vivi ingest SRC OUT` first" to a user who had: the ingest ran, nothing came through."""
    from vivi.cli import main

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "a.mp4").write_text("not a video\n")
    write(src / "short.mp4", shots=1, per_shot=3)  # 0.6 s: skipped, a shot lasts at least 1 s
    ingest(src, out, fps=1.0, progress=False)
    assert main(["pretrain", "--preset", "VIVI-Ex(4)", "--data", str(out), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"vivi: error: {out}: no video was ingested with status ok (1 error, 1 skipped); "
                       f"`vivi ingest-stats {out}` lists the reasons")  # fmt: skip
    assert not (tmp_path / "run").exists()


# (extension, codec, extra container options): 10 s at 10 fps, two 5 s shots. AVI with MPEG-4 part 2:
# its 5.7 kB header leaves an H.264 AVI this small under 1 s once cut in half (then skipped)
CUT_SHORT = [("mkv", "libx264", None), ("webm", "libvpx-vp9", None), ("avi", "mpeg4", None),
             ("mp4", "libx264", {"movflags": "faststart"})]  # fmt: skip


@pytest.mark.parametrize(("ext", "codec", "container_options"), CUT_SHORT, ids=[c[0] for c in CUT_SHORT])
def test_a_video_cut_short_keeps_its_frames_and_says_so(tmp_path, capsys, ext, codec, container_options):
    """Cut in half, an mkv, webm or avi (or an mp4 with its index first) plays up to the cut: it was
    ingested as an ok video of about half its frames with decode_errors 0 and not a word said."""
    src = tmp_path / "src"
    src.mkdir()
    full = src / f"full.{ext}"
    write(full, codec=codec, fps=10, shots=2, per_shot=50, container_options=container_options)
    cut = cut_in_half(full)
    full.unlink()
    summary = ingest(src, tmp_path / "out", fps=1.0, progress=True)
    [record] = check_shards_agree(tmp_path / "out")
    assert record["status"] == "ok" and record["shots"] and record["decode_errors"] == 0
    played, declared = record["duration_s"], record["declared_s"]  # seconds of video, not a timing
    assert played < 6.0 and declared == 10.0
    assert summary.videos_short == 1 and "1 ok (1 shorter than its file declares)" in str(summary)
    err = capsys.readouterr().err
    assert "warning: 1 video ends well before the length its file declares" in err
    assert f"  {cut}: decoded {record['duration_s']:g} s of the 10 s declared\n" in err


INTACT = [("mkv", "libx264"), ("webm", "libvpx-vp9"), ("avi", "libx264"), ("avi", "mpeg4"), ("ts", "libx264"),
          ("mp4", "libx264"), ("mov", "libx264")]  # fmt: skip


def test_intact_videos_are_not_taken_for_cut_short(tmp_path, capsys):
    """No false alarms: every container at a constant rate, a variable frame rate (a still picture
    held for 2 s, bursts at 20 fps), a video ending in a fade to black (frames the detector leaves
    out of every shot), and a live WebM (browser MediaRecorder: no duration at all), whole or cut."""
    src = tmp_path / "src"
    src.mkdir()
    for ext, codec in INTACT:
        write(src / f"{codec}.{ext}", codec=codec, fps=10, shots=2, per_shot=50)
    steps = [0.1] * 20 + [2.0] + [0.05] * 20 + [0.3] * 19  # 60 frames over 9.7 s
    vfr_times = [sum(steps[:i]) for i in range(60)]
    for ext, codec in [("mkv", "libx264"), ("webm", "libvpx-vp9")]:
        write(src / f"vfr.{ext}", codec=codec, shots=2, per_shot=30, times=vfr_times)
        write(src / f"fade.{ext}", codec=codec, fps=10, shots=2, per_shot=50, fade=30)
    write(src / "live.webm", codec="libvpx-vp9", fps=10, shots=2, per_shot=50, container_options={"live": "1"})
    cut_in_half(src / "live.webm")  # declares no length, so a cut cannot be told from an end
    with av.open(str(src / "sound_runs_on.mkv"), "w") as container:  # 5 s of picture, 10 s of sound:
        video = container.add_stream("libx264", rate=10)  # the segment's 10 s is no length of the video
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        audio = container.add_stream("aac", rate=8000, layout="mono")
        for i in range(50):
            container.mux(video.encode(av.VideoFrame.from_ndarray(picture(i, i // 25), format="rgb24")))
        for k in range(80):
            sound = av.AudioFrame.from_ndarray(np.zeros((1, 1000), np.float32), format="fltp", layout="mono")
            sound.sample_rate, sound.pts = 8000, 1000 * k
            container.mux(audio.encode(sound))
        container.mux(video.encode() + audio.encode())
    summary = ingest(src, tmp_path / "out", fps=1.0, progress=True)
    records = records_by_name(tmp_path / "out")
    assert len(records) == len(INTACT) + 7
    assert all(r["status"] == "ok" for r in records.values()), records
    assert not [name for name, r in records.items() if "declared_s" in r]
    assert records["vfr.mkv"]["duration_s"] > 9.0 and records["fade.mkv"]["duration_s"] == 10.0
    assert summary.videos_short == 0 and "shorter than" not in capsys.readouterr().err


def test_a_truncated_mp4_with_its_index_at_the_end_is_still_an_error(tmp_path):
    """What a cut costs an ordinary mp4 (its moov written last): the file cannot be opened at all."""
    write(tmp_path / "full.mp4", fps=10, shots=2, per_shot=50)
    cut = cut_in_half(tmp_path / "full.mp4")
    summary = run_ingest(cut, tmp_path / "out", fps=1.0)
    [record] = records_by_name(tmp_path / "out").values()
    assert record["status"] == "error" and record["error"].startswith("cannot open: ")
    assert "declared_s" not in record and summary.videos_short == 0


def write_ts(path: Path, width: int, height: int, frames: int = 30, shot: int = 0) -> None:
    """An MPEG-TS segment of one flat colour, ``width`` x ``height``: two joined with ``cat`` make one
    stream whose size changes midway, as a broadcast capture or an adaptive stream's recording does."""
    with av.open(str(path), "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = np.zeros((height, width, 3), np.uint8) + np.array(COLOURS[shot], np.uint8)
            image[:, (3 * i) % width] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def test_a_stream_that_changes_size_midway_stores_frames_of_one_size(tmp_path):
    """A 64x48 stream that turns 48x64 after 3 s: the frames after the change were stored at their own
    size and shape (24x32 beside 32x24) while the record said 64x48. Now every frame has the first
    size (a frame of another shape centre-cropped, not stretched) and the record names both sizes."""
    write_ts(tmp_path / "a.ts", 64, 48, shot=0)
    write_ts(tmp_path / "b.ts", 48, 64, shot=1)
    joined = tmp_path / "joined.ts"
    joined.write_bytes((tmp_path / "a.ts").read_bytes() + (tmp_path / "b.ts").read_bytes())
    run_ingest(joined, tmp_path / "out", fps=2.0, short_side=24)
    [record] = check_shards_agree(tmp_path / "out")  # each stored frame's aspect is the record's
    assert record["status"] == "ok" and (record["width"], record["height"]) == (64, 48)
    assert record["frame_sizes"] == [[64, 48], [48, 64]] and len(record["shots"]) == 2
    sizes = set()
    with tarfile.open(record["shard"]) as tar:
        for member in tar:
            if member.name.endswith(".jpg"):
                sizes.add(Image.open(io.BytesIO(tar.extractfile(member).read())).size)
    assert sizes == {(32, 24)}
    run_ingest(tmp_path / "a.ts", tmp_path / "plain", fps=2.0, short_side=24)
    assert "frame_sizes" not in read_records(tmp_path / "plain" / INDEX_NAME)[0]  # said only where it happens


def test_hidden_videos_are_skipped_but_counted(tmp_path):
    """``.clip.mp4`` is hidden and stays out, but was not counted either: a folder of hidden videos
    said "no videos" and nothing more. AppleDouble ``._clip.mp4`` files are no videos: not counted."""
    src = tmp_path / "src"
    src.mkdir()
    write(src / "good.mp4")
    (src / ".hidden.mp4").write_bytes((src / "good.mp4").read_bytes())
    (src / "._good.mp4").write_bytes(b"AppleDouble")
    summary = run_ingest(src, tmp_path / "out", fps=1.0)
    assert (summary.videos, summary.hidden_skipped) == (1, 1)
    assert str(summary).endswith("; 1 hidden video file skipped (names starting with '.' are hidden; "
                                 "rename them to ingest them).")  # fmt: skip
    (src / "good.mp4").rename(src / ".good.mp4")
    with pytest.raises(UserError, match=r"in this folder; skipped 2 hidden video files, e.g. \.good\.mp4 \(names "):
        run_ingest(src, tmp_path / "again", fps=1.0)


def test_an_ingest_where_every_video_failed_exits_1_and_keeps_its_records(tmp_path, capsys):
    """It exited 0, so a script went on to pretrain on nothing. A partly failed ingest still exits 0."""
    from vivi.cli import main

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "a.mp4").write_text("not a video\n")
    write(src / "short.mp4", shots=1, per_shot=3)  # 0.6 s: skipped, not failed
    assert main(["ingest", str(src), str(out)]) == 1
    expected = (f"vivi: error: {out}: no video was ingested: 1 of 2 failed (the first: {src / 'a.mp4'}: cannot open: "
                f"Invalid data found when processing input); `vivi ingest-stats {out}` lists every reason")  # fmt: skip
    assert capsys.readouterr().err.strip().splitlines()[-1] == expected
    assert [r["status"] for r in read_records(out / INDEX_NAME)] == ["error", "skipped"]  # kept
    assert main(["ingest", str(src), str(out)]) == 1  # a re-run has nothing left to do: still failed
    assert capsys.readouterr().err.strip().splitlines()[-1] == expected
    write(src / "good.mp4")
    partly = run_ingest(src, out, fps=1.0)
    assert partly.videos_ok == 1 and partly.nothing_ingested is None
