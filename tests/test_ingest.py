"""`vivi ingest` end to end on tiny H.264 videos written here with PyAV."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from test_shots import assert_matches, clip  # the same synthetic clips, here through a real codec
from vivi.data import ingest as ingest_module
from vivi.data.ingest import FAULT_ENV, IngestSummary, ingest, list_sources, source_key
from vivi.data.pool import Failure, isolated_map
from vivi.data.frames import tar_members
from vivi.data.shards import (
    INDEX_NAME, ShardWriter, image_name, read_index, read_records, recover, sample_spans, shard_records,
)
from vivi.data.shots import Shot
from vivi.data.synth import render_corpus
from vivi.errors import UserError

FPS = 10
SEEDS = (0, 1, 2)


def write_video(path: Path, frames: list[np.ndarray], fps: int = FPS, rotation: int = 0) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def write_audio_only(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000, layout="mono")
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> tuple[Path, dict[str, list[Shot]]]:
    """A folder of good clips (one in a subfolder) and their true shots, by file name."""
    root = tmp_path_factory.mktemp("videos")
    (root / "sub").mkdir()
    truth = {}
    for seed in SEEDS:
        frames, shots = clip(seed)
        name = f"sub/clip{seed}.mp4" if seed == 2 else f"clip{seed}.mp4"
        write_video(root / name, frames)
        truth[Path(name).name] = shots
    return root, truth


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory, videos) -> Path:
    """Good clips next to a zero-byte file, text named .mp4, a truncated mp4, and audio only."""
    root = tmp_path_factory.mktemp("bad")
    good, _ = videos
    for name in ("clip0.mp4", "clip1.mp4"):
        (root / name).write_bytes((good / name).read_bytes())
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is not a video\n")
    data = (good / "clip0.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    write_audio_only(root / "audio.mkv")
    return root


def run_ingest(src: Path, out: Path, **kwargs) -> IngestSummary:
    return ingest(src, out, progress=False, **kwargs)


def check_shards_agree(out: Path) -> list[dict]:
    """Every ok record's JPEGs exist in its shard and decode; the shard holds nothing else."""
    records = read_index([out])
    for record in records:
        if record["status"] != "ok":
            assert "shard" not in record
            continue
        with tarfile.open(record["shard"]) as tar:
            members = {m.name: m for m in tar if m.name.startswith(record["key"] + ".")}
            stored = json.load(tar.extractfile(members.pop(record["key"] + ".json")))
            assert stored["key"] == record["key"] and stored["shots"] == record["shots"]
            for s, shot in enumerate(record["shots"]):
                assert shot["frames"], "every shot in an ok record has kept frames"
                for f, frame in enumerate(shot["frames"]):
                    assert shot["start_frame"] <= frame["frame"] <= shot["end_frame"]
                    data = tar.extractfile(members.pop(f"{record['key']}.s{s:03d}.f{f:03d}.jpg")).read()
                    width, height = Image.open(io.BytesIO(data)).convert("RGB").size
                    assert width * record["height"] == height * record["width"]  # upright, same aspect
            assert not members, f"unlisted members {sorted(members)}"
    assert not list(out.rglob("*.tmp"))
    assert not list(out.glob("spool/*")), "spooled JPEGs are deleted once in a shard"
    return records


def assert_exactly_once(out: Path, expected: int) -> None:
    records = read_records(out / INDEX_NAME)
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys)) == expected
    in_shards = [r["key"] for shard in sorted((out / "shards").glob("*.tar")) for r in shard_records(shard)]
    assert sorted(in_shards) == sorted(r["key"] for r in records if r["status"] == "ok")
    check_shards_agree(out)


def test_index_and_shards_agree_and_cuts_match(videos, tmp_path):
    root, truth = videos
    summary = run_ingest(root, tmp_path, fps=FPS)
    assert (summary.videos_ok, summary.videos_error, summary.frames_decoded) == (3, 0, 3 * 81)
    records = check_shards_agree(tmp_path)
    assert [Path(r["source"]).name for r in records] == ["clip0.mp4", "clip1.mp4", "clip2.mp4"]
    for record in records:
        assert "." not in record["key"] and record["width"] == record["height"] == 64
        assert record["fps"] == FPS and record["num_frames"] == 81 and record["duration_s"] == 8.1
        found = [Shot(s["start_frame"], s["end_frame"]) for s in record["shots"]]
        true_shots = truth[Path(record["source"]).name]
        assert_matches(found, true_shots)
        dissolve = range(true_shots[1].end_frame + 2, true_shots[2].start_frame - 1)  # its inner frames
        assert not any(f["frame"] in dissolve for s in record["shots"] for f in s["frames"])
        first = record["shots"][0]
        assert first["start_s"] == 0.0 and first["end_s"] == pytest.approx((first["end_frame"] + 1) / FPS)
    assert summary.frames == sum(len(s["frames"]) for r in records for s in r["shots"])


def test_sampling_rate_and_short_side(videos, tmp_path):
    root, _ = videos
    run_ingest(root / "clip0.mp4", tmp_path, fps=2.0, short_side=32)
    [record] = check_shards_agree(tmp_path)
    assert (record["width"], record["height"]) == (64, 64)  # the source's size
    with tarfile.open(record["shard"]) as tar:
        jpg = next(m for m in tar if m.name.endswith(".jpg"))
        assert Image.open(tar.extractfile(jpg)).size == (32, 32)
    times = [f["t"] for s in record["shots"] for f in s["frames"]]
    assert all(round(b - a, 3) >= 0.5 for a, b in zip(times, times[1:]))
    assert 12 <= len(times) <= 17  # 8.1 s at 2 Hz, less what falls in the dissolve


def test_two_workers_give_the_same_records(videos, tmp_path):
    root, _ = videos
    run_ingest(root, tmp_path / "one", fps=2.0)
    run_ingest(root, tmp_path / "two", fps=2.0, workers=2, shard_max_bytes=1)
    one, two = (sorted(read_records(tmp_path / d / INDEX_NAME), key=lambda r: r["key"]) for d in ("one", "two"))
    assert [r["shots"] for r in one] == [r["shots"] for r in two]
    assert len({r["shard"] for r in two}) == 3  # shard_max_bytes=1: one video per shard
    check_shards_agree(tmp_path / "two")


def test_bad_inputs_become_error_records(bad_videos, tmp_path):
    summary = run_ingest(bad_videos, tmp_path, fps=2.0)
    assert (summary.videos_ok, summary.videos_error) == (2, 4)
    records = {Path(r["source"]).name: r for r in check_shards_agree(tmp_path)}
    for name in ("empty.mp4", "text.mp4", "truncated.mp4", "audio.mkv"):
        record = records[name]
        assert record["status"] == "error" and record["shots"] == []
        assert record["error"] and "\n" not in record["error"]
    assert "0 bytes" in records["empty.mp4"]["error"]
    assert "no video stream" in records["audio.mkv"]["error"]


def test_videos_with_too_few_shots_are_skipped(videos, tmp_path):
    root, _ = videos
    summary = run_ingest(root / "clip0.mp4", tmp_path, fps=2.0, min_shots=5)
    [record] = read_records(tmp_path / INDEX_NAME)
    assert summary.videos_skipped == 1 and record["status"] == "skipped"
    assert "min_shots=5" in record["error"] and record["num_frames"] == 81
    assert not list((tmp_path / "shards").glob("*.tar"))


def test_rotated_video_is_stored_upright(tmp_path):
    frames = [f[:32] for f in clip(0)[0][:10]]
    write_video(tmp_path / "phone.mp4", frames, rotation=90)
    run_ingest(tmp_path / "phone.mp4", tmp_path / "out", fps=FPS)
    [record] = check_shards_agree(tmp_path / "out")
    assert (record["width"], record["height"]) == (32, 64)


def test_list_file_resolves_relative_paths_and_skips_comments(videos, tmp_path, capsys):
    root, _ = videos
    rel = Path(os.path.relpath(root, tmp_path))
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two clips\n{rel}/clip0.mp4\n\n  {rel}/sub/clip2.mp4  \n{root}/clip0.mp4\n")
    sources = list_sources(listing)
    assert [s.given for s in sources] == [f"{rel}/clip0.mp4", f"{rel}/sub/clip2.mp4"]  # the duplicate is gone
    assert f"{root}/clip0.mp4 is the video {rel}/clip0.mp4 again" in capsys.readouterr().err  # and said so
    run_ingest(listing, tmp_path / "out", fps=1.0)
    assert [r["source"] for r in read_records(tmp_path / "out" / INDEX_NAME)] == [s.given for s in sources]


def test_keys_come_from_names_not_from_where_the_videos_are(videos, tmp_path):
    """The same videos ingested at two places get the same keys (so a run on them draws the same
    batches, and Ex-YT-F the same frames); a list of relative entries moved with its videos too; a
    folder of another name gives other keys (its clip0.mp4 is not the first folder's)."""
    root, _ = videos
    for place in ("a", "b"):
        shutil.copytree(root, tmp_path / place / "videos")
        (tmp_path / place / "list.txt").write_text("videos/clip0.mp4\nvideos/sub/clip2.mp4\n")
    keys = {place: [s.key for s in list_sources(tmp_path / place / "videos")] for place in ("a", "b")}
    assert keys["a"] == keys["b"] and len(set(keys["a"])) == 3
    assert [s.key for s in list_sources(tmp_path / "a" / "list.txt")] == [
        s.key for s in list_sources(tmp_path / "b" / "list.txt")
    ]
    shutil.copytree(root, tmp_path / "day2")
    assert not set(keys["a"]) & {s.key for s in list_sources(tmp_path / "day2")}
    for place in ("a", "b"):
        run_ingest(tmp_path / place / "videos", tmp_path / f"out-{place}", fps=1.0)
    indexed = {place: sorted(r["key"] for r in read_index([tmp_path / f"out-{place}"])) for place in ("a", "b")}
    assert indexed["a"] == indexed["b"] == sorted(keys["a"])
    assert json.loads((tmp_path / "out-a" / "ingest.json").read_text())["keys"] == ingest_module.KEYS_BY_NAME


def test_a_moved_folder_resumes_and_another_video_of_the_same_name_is_refused(videos, tmp_path, capsys):
    root, _ = videos
    shutil.copytree(root, tmp_path / "old" / "videos")
    (tmp_path / "old" / "videos" / "clip1.mp4").unlink()
    run_ingest(tmp_path / "old" / "videos", tmp_path / "out", fps=1.0)
    shutil.move(tmp_path / "old", tmp_path / "new")
    shutil.copy(root / "clip1.mp4", tmp_path / "new" / "videos" / "clip1.mp4")  # a video added meanwhile
    capsys.readouterr()
    summary = run_ingest(tmp_path / "new" / "videos", tmp_path / "out", fps=1.0)
    assert (summary.already_done, summary.videos_ok) == (2, 1)
    err = capsys.readouterr().err
    assert "is taken as the video ingested from" in err and "(and 1 more)" in err
    assert len(read_index([tmp_path / "out"])) == 3

    other = tmp_path / "elsewhere" / "videos"
    other.mkdir(parents=True)
    shutil.copy(root / "clip1.mp4", other / "clip0.mp4")  # same name as a held video, another video
    before = (tmp_path / "out" / INDEX_NAME).read_bytes()
    with pytest.raises(UserError, match=r"clip0\.mp4: .* already holds another video of this name .* bytes; this one"):
        run_ingest(other, tmp_path / "out", fps=1.0)
    assert (tmp_path / "out" / INDEX_NAME).read_bytes() == before


def test_a_folder_begun_by_an_older_vivi_keeps_its_keys_by_location(videos, tmp_path, monkeypatch):
    """Before keys were made from names, they hashed each video's absolute path; such a folder's
    resume must still find its videos done, and the videos it adds get keys of the same kind."""
    root, _ = videos
    shutil.copytree(root, tmp_path / "videos")
    moved_aside = tmp_path / "clip1.mp4"
    shutil.move(tmp_path / "videos" / "clip1.mp4", moved_aside)
    with monkeypatch.context() as m:
        m.setattr(ingest_module, "_key_scheme", lambda out: ingest_module.KEYS_BY_LOCATION)
        run_ingest(tmp_path / "videos", tmp_path / "out", fps=1.0)
    settings = tmp_path / "out" / "ingest.json"
    settings.write_text(json.dumps({k: v for k, v in json.loads(settings.read_text()).items() if k != "keys"}))
    shutil.move(moved_aside, tmp_path / "videos" / "clip1.mp4")
    summary = run_ingest(tmp_path / "videos", tmp_path / "out", fps=1.0)
    assert (summary.already_done, summary.videos_ok) == (2, 1)
    records = read_index([tmp_path / "out"])
    assert sorted(r["key"] for r in records) == sorted(source_key(r["location"]) for r in records)
    assert json.loads(settings.read_text())["keys"] == ingest_module.KEYS_BY_LOCATION


def test_a_link_to_a_video_in_the_same_folder_is_ingested_once_and_said(videos, tmp_path, capsys):
    root, _ = videos
    folder = tmp_path / "linked"
    folder.mkdir()
    (folder / "a.mp4").symlink_to(root / "clip0.mp4")
    (folder / "b.mp4").symlink_to(root / "clip0.mp4")
    (folder / "c.mp4").symlink_to(root / "clip1.mp4")
    assert [Path(s.given).name for s in list_sources(folder)] == ["a.mp4", "c.mp4"]
    err = capsys.readouterr().err
    assert f"{folder / 'b.mp4'} is the video {folder / 'a.mp4'} again" in err and err.count("\n") == 1
    list_sources(root)  # no link, no repeat: nothing said
    assert "again" not in capsys.readouterr().err


def test_a_list_file_with_a_byte_order_mark_and_crlf_lines(videos, tmp_path):
    """Windows editors save lists as UTF-8 with a BOM and CRLF: the mark is no part of the first path
    (which was then "no such file") and a first-line comment stays a comment."""
    root, _ = videos
    listing = tmp_path / "list.txt"
    listing.write_bytes(f"\ufeff# clips\r\n{root}/clip0.mp4\r\n{root}/clip1.mp4\r\n".encode())
    assert [s.given for s in list_sources(listing)] == [f"{root}/clip0.mp4", f"{root}/clip1.mp4"]


def test_a_file_in_a_folder_named_like_a_pipe_command_is_a_file(videos, tmp_path, monkeypatch):
    """`vivi ingest . OUT` lists ``pipe:touch MARK.mp4`` without a leading ``./``: it is a video file,
    never a shell command to run."""
    root, _ = videos
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "pipe:touch MARK.mp4").write_bytes((root / "clip0.mp4").read_bytes())
    monkeypatch.chdir(folder)
    run_ingest(Path("."), tmp_path / "out", fps=1.0)
    run_ingest(Path("pipe:touch MARK.mp4"), tmp_path / "one", fps=1.0)
    assert not (folder / "MARK").exists() and not (folder / "MARK.mp4").exists()
    for out in ("out", "one"):
        [record] = check_shards_agree(tmp_path / out)
        assert record["status"] == "ok" and record["location"] == str(folder / "pipe:touch MARK.mp4"), record


def test_a_video_without_shots_says_why(tmp_path):
    """A long all-black video has no shot because of its content, not its length: its reason
    must not read as if it were shorter than a shot."""
    write_video(tmp_path / "black.mp4", [np.zeros((32, 32, 3), np.uint8)] * 30)
    run_ingest(tmp_path / "black.mp4", tmp_path / "out")
    [record] = read_records(tmp_path / "out" / INDEX_NAME)
    assert record["status"] == "skipped" and record["duration_s"] == 3.0
    assert "black frames" in record["error"] and "lasts 3" not in record["error"], record["error"]


def test_a_tall_narrow_video_gets_a_small_detector_thumbnail(tmp_path):
    """A 64-px-wide thumbnail of a 2x720 strip was 64x23040 pixels (GBs per batch of features);
    frames up to 4 times taller than wide keep the 64-px width."""
    from vivi.data.detectors import make_frame_detector
    from vivi.data.video import Video

    frames = [np.full((720, 2, 3), (200, 40, 30) if i < 12 else (30, 60, 210), np.uint8) for i in range(24)]
    write_video(tmp_path / "strip.mp4", frames)
    with Video(str(tmp_path / "strip.mp4")) as video:
        detector, frame = make_frame_detector("histogram", video.fps), next(video.frames())
        thumbnail = video.thumbnail(frame, detector.width(frame.raw.width, frame.raw.height))
    assert thumbnail.shape[0] * thumbnail.shape[1] <= 64 * 256, thumbnail.shape
    assert [detector.width(w, h) for w, h in ((1920, 1080), (1080, 1920), (64, 256))] == [64, 64, 64]
    run_ingest(tmp_path / "strip.mp4", tmp_path / "out", fps=FPS)
    [record] = check_shards_agree(tmp_path / "out")
    assert [(s["start_frame"], s["end_frame"]) for s in record["shots"]] == [(0, 11), (12, 23)]


def test_bad_options_are_user_errors(videos, tmp_path):
    root, _ = videos
    with pytest.raises(UserError, match="workers=0"):
        run_ingest(root, tmp_path, workers=0)
    with pytest.raises(UserError, match="detector 'magic'"):
        run_ingest(root, tmp_path, detector="magic")


@pytest.mark.parametrize("make", ["missing", "empty folder", "empty list"])
def test_unusable_src_is_a_user_error(tmp_path, make):
    src = tmp_path / "src"
    if make == "empty folder":
        src.mkdir()
        (src / "notes.txt").write_text("no videos here")
    elif make == "empty list":
        src = tmp_path / "list.txt"
        src.write_text("# nothing yet\n\n")
    with pytest.raises(UserError, match=str(src)):
        run_ingest(src, tmp_path / "out")


def test_rerun_skips_finished_videos(videos, tmp_path):
    root, _ = videos
    run_ingest(root, tmp_path, fps=1.0)
    again = run_ingest(root, tmp_path, fps=1.0)
    assert (again.already_done, again.videos_ok) == (3, 0)
    assert_exactly_once(tmp_path, 3)


def test_resume_after_a_kill_mid_run(videos, tmp_path):
    root, _ = videos
    src = tmp_path / "many"
    src.mkdir()
    for i in range(8):  # enough work that the kill lands mid-run
        (src / f"copy{i}.mp4").write_bytes((root / f"clip{i % 2}.mp4").read_bytes())
    out = tmp_path / "out"
    code = "import sys; from pathlib import Path; from vivi.data.ingest import ingest; " \
        "ingest(sys.argv[1], Path(sys.argv[2]), fps=10.0, shard_max_bytes=1, progress=False)"
    proc = subprocess.Popen([sys.executable, "-c", code, str(src), str(out)])
    deadline = time.monotonic() + 60
    while not list((out / "shards").glob("*.tar")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(read_records(out / INDEX_NAME)) < 8, "the run finished before it could be killed"
    run_ingest(src, out, fps=10.0, shard_max_bytes=1)
    assert_exactly_once(out, 8)


def test_resume_repairs_what_a_kill_can_leave(videos, tmp_path):
    root, _ = videos
    run_ingest(root, tmp_path, fps=1.0, shard_max_bytes=1)
    index = tmp_path / INDEX_NAME
    lines = index.read_text().splitlines(keepends=True)
    # Killed after the last shard's rename but before its record reached the index, while a
    # later record was half written, with a shard still being written:
    index.write_text("".join(lines[:-1]) + lines[-1][:20])
    (tmp_path / "shards" / "shard-000099.tar.tmp").write_bytes(b"partial")
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "clip9-0123456789.jpgs").write_bytes(b"half a video's JPEGs")
    summary = run_ingest(root, tmp_path, fps=1.0, shard_max_bytes=1)
    assert (summary.already_done, summary.videos_ok) == (3, 0)  # recovered from the shard itself
    assert_exactly_once(tmp_path, 3)
    # A shard renamed but never indexed at all, and a torn first record:
    lines = index.read_text().splitlines(keepends=True)
    index.write_text(lines[0][:10])
    run_ingest(root, tmp_path, fps=1.0, shard_max_bytes=1)
    assert_exactly_once(tmp_path, 3)


def small_jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), seed * 40 % 256, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


SAMPLES = {"v0": [2, 1], "v1": [3], "v2": [1, 2]}  # key: kept frames per shot


def sample(key: str) -> tuple[dict, list[tuple[str, bytes]]]:
    """A video's record and JPEGs as ingest hands them to the shard writer."""
    shots = SAMPLES[key]
    record = {"key": key, "status": "ok", "shots": [{"frames": [{"frame": f} for f in range(n)]} for n in shots]}
    images = [
        (image_name(key, s, f), small_jpeg(10 * int(key[1:]) + s + f)) for s, n in enumerate(shots) for f in range(n)
    ]
    return record, images


def open_shard(shards: Path, keys: list[str]) -> tuple[ShardWriter, list[dict]]:
    """A shard-000000 being written, holding the samples of ``keys``, not closed (as a kill leaves it)."""
    writer = ShardWriter(shards, 1 << 30, 0)
    records = [sample(key)[0] for key in keys]
    for record, key in zip(records, keys):
        assert writer.add(record, sample(key)[1]) == []
    return writer, records


def closed_shard(shards: Path, keys: list[str]) -> bytes:
    writer, _ = open_shard(shards, keys)
    writer.close()
    return (shards / "shard-000000.tar").read_bytes()


def cut(data: bytes, members: dict[str, tarfile.TarInfo], spans: list[list[int]], how: str) -> bytes:
    """What a kill (or a power loss) can leave of the tmp file of a shard written up to its end."""
    last_jpeg, header = members["v2.s001.f001.jpg"], members["v2.s000.f000.jpg"].offset
    jpeg_end = last_jpeg.offset_data + last_jpeg.size
    return {
        "not closed": data,
        "mid-json": data[: spans[0][0] + 512 + 20],
        "mid-header": data[: spans[2][0] + 100],
        "mid-JPEG": data[: members["v1.s000.f001.jpg"].offset_data + 200],
        "after a sample": data[: spans[1][1]],
        "zeros at the tail": data[: spans[1][1]] + bytes(3000),
        "JPEG tail zeroed": data[: jpeg_end - 100] + bytes(len(data) - jpeg_end + 100),
        "damaged header": data[: header + 3] + b"X" + data[header + 4 :],  # its checksum no longer matches
        "member past the end": data[: last_jpeg.offset_data] + data[last_jpeg.offset_data : jpeg_end - 1],
    }[how]


@pytest.mark.parametrize("how, kept", [
    ("not closed", 3), ("mid-json", 0), ("mid-header", 2), ("mid-JPEG", 1), ("after a sample", 2),
    ("zeros at the tail", 2), ("JPEG tail zeroed", 2), ("damaged header", 2), ("member past the end", 2),
])  # fmt: skip
def test_recover_keeps_the_whole_videos_of_a_shard_a_kill_left_open(tmp_path, capsys, how, kept):
    """A SIGKILL leaves the open shard as .tar.tmp with the index lacking its videos: the whole samples
    become a complete shard, indexed once and readable by span; the video cut short is left to redo."""
    writer, written = open_shard(tmp_path / "src", list(SAMPLES))
    data = (tmp_path / "src" / "shard-000000.tar.tmp").read_bytes()  # before any close: what a kill leaves
    writer.close()
    with tarfile.open(tmp_path / "src" / "shard-000000.tar") as tar:
        members = {m.name: m for m in tar}
    out = tmp_path / "out"
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "shard-000000.tar.tmp").write_bytes(cut(data, members, [r["shard_span"] for r in written], how))
    keys = list(SAMPLES)[:kept]
    records, next_shard = recover(out)
    assert [r["key"] for r in records] == [r["key"] for r in read_records(out / INDEX_NAME)] == keys
    assert next_shard == (1 if kept else 0) and not list(out.rglob("*.tmp"))
    assert records == written[:kept]  # the records, spans included, that closing the shard would have indexed
    err = capsys.readouterr().err
    said = f"shard-000000.tar.tmp: kept {kept} video{'s' if kept > 1 else ''} complete in this shard cut short"
    assert (said in err) == bool(kept) and err.count("\n") == (1 if kept else 0)
    if not kept:
        assert not list((out / "shards").iterdir())
        return
    shard = out / "shards" / "shard-000000.tar"
    assert shard.read_bytes() == closed_shard(tmp_path / f"closed-{kept}", keys)  # ended as tarfile ends it
    for record in read_index([out]):
        start, end = record["shard_span"]
        with open(record["shard"], "rb") as f:
            f.seek(start)
            got = tar_members(f.read(end - start))
        assert got == {name.split(".", 1)[1]: jpeg for name, jpeg in sample(record["key"])[1]} | {"json": got["json"]}
        assert sample_spans(record["shard"])[record["key"]] == tuple(record["shard_span"])
    from webdataset.tariterators import group_by_keys, tar_file_expander  # what WebDataset(url) reads with

    with open(shard, "rb") as f:
        samples = list(group_by_keys(tar_file_expander([{"url": str(shard), "stream": f}])))
    assert [s["__key__"] for s in samples] == keys
    assert all(s[name.split(".", 1)[1]] == jpeg for s in samples for name, jpeg in sample(s["__key__"])[1])
    assert recover(out) == (records, 1) and read_records(out / INDEX_NAME) == records  # nothing twice


def test_recover_never_replaces_a_renamed_shard_with_a_tmp_of_its_number(tmp_path):
    shards = tmp_path / "shards"
    complete = closed_shard(shards, ["v0"])
    (shards / "shard-000000.tar.tmp").write_bytes(complete[:-1024])
    records, next_shard = recover(tmp_path)
    assert [r["key"] for r in records] == ["v0"] and next_shard == 1
    assert (shards / "shard-000000.tar").read_bytes() == complete and not list(shards.glob("*.tmp"))


def test_recover_deletes_a_tmp_whose_records_name_another_shard(tmp_path):
    """Renamed as it is, such a file would give index records that point at a shard not holding them."""
    shards = tmp_path / "shards"
    (shards / "shard-000001.tar.tmp").write_bytes(closed_shard(shards, ["v0", "v1"]))
    (shards / "shard-000000.tar").unlink()
    assert recover(tmp_path) == ([], 0) and not list(shards.iterdir())


@pytest.mark.parametrize("cut_last", [False, True])
def test_a_sigkilled_ingest_keeps_the_videos_of_its_open_shard(videos, tmp_path, capsys, cut_last):
    """`vivi ingest` killed by SIGKILL (the OOM killer, a preemption) while the default-sized shard is
    open: the resumed run decodes only the videos not finished, and every video ends up once."""
    root, _ = videos
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"copy{i}.mp4").write_bytes((root / f"clip{i % 2}.mp4").read_bytes())
    out = tmp_path / "out"
    code = "import sys; from pathlib import Path; from vivi.data.ingest import ingest; " \
        "ingest(sys.argv[1], Path(sys.argv[2]), fps=1.0, progress=False)"
    # in-process decoding: the fault hook SIGKILLs the ingest process itself as it starts on copy3
    env = {**os.environ, FAULT_ENV: "kill:copy3.mp4"}
    proc = subprocess.run([sys.executable, "-c", code, str(src), str(out)], env=env, timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL
    tmp = out / "shards" / "shard-000000.tar.tmp"
    assert read_records(out / INDEX_NAME) == [] and tmp.is_file(), "three videos wait in the open shard"
    if cut_last:  # a power loss: the last video's bytes did not all reach the disk
        os.truncate(tmp, tmp.stat().st_size - 700)
    kept = 2 if cut_last else 3
    summary = run_ingest(src, out, fps=1.0)
    assert (summary.already_done, summary.videos_ok, summary.frames_decoded) == (kept, 6 - kept, (6 - kept) * 81)
    assert f"kept {kept} videos complete in this shard" in capsys.readouterr().err
    assert_exactly_once(out, 6)
    run_ingest(src, tmp_path / "clean", fps=1.0)
    assert read_records(out / INDEX_NAME)[:kept] == read_records(tmp_path / "clean" / INDEX_NAME)[:kept]


def test_read_index_makes_shard_paths_absolute(videos, tmp_path):
    root, _ = videos
    run_ingest(root / "clip1.mp4", tmp_path / "a", fps=1.0)
    run_ingest(root / "sub" / "clip2.mp4", tmp_path / "b", fps=1.0)
    records = read_index([tmp_path / "a", tmp_path / "b"])
    assert len(records) == 2 and all(os.path.isabs(r["shard"]) and Path(r["shard"]).is_file() for r in records)
    with pytest.raises(UserError, match="index.jsonl"):
        read_index([tmp_path / "nowhere"])


def test_synth_cuts_and_transitions_match_ground_truth(tmp_path):
    render_corpus(tmp_path / "world", videos=2, seed=0, workers=1, size=64, fps=4.0, progress=False)
    run_ingest(tmp_path / "world" / "videos", tmp_path / "out", fps=4.0)  # keep every frame
    records = {Path(r["source"]).name: r for r in check_shards_agree(tmp_path / "out")}
    truths = [json.loads(line) for line in (tmp_path / "world" / "ground_truth.jsonl").read_text().splitlines()]
    assert {t["kind"] for truth in truths for t in truth["transitions"]} == {"dissolve", "fade"}
    for truth in truths:
        shots = records[Path(truth["video"]).name]["shots"]
        assert len(shots) == len(truth["shots"])
        starts, ends = [s["start_frame"] for s in shots], [s["end_frame"] for s in shots]
        for cut in truth["cuts"]:
            assert any(abs(s - cut) <= 1 for s in starts) and any(abs(e - (cut - 1)) <= 1 for e in ends)
        for t in truth["transitions"]:
            assert any(abs(e - (t["start_frame"] - 1)) <= 1 for e in ends)
            assert any(abs(s - (t["end_frame"] + 1)) <= 1 for s in starts)
            inner = range(t["start_frame"] + 1, t["end_frame"])
            assert not any(f["frame"] in inner for s in shots for f in s["frames"])


def noisy_clip_file(path: Path) -> Path:
    """clip(0) with strong noise, so its packets are large and a corrupt region hits a few."""
    rng = np.random.default_rng(0)
    frames = [np.clip(f.astype(np.int16) + rng.integers(-40, 40, f.shape), 0, 255).astype(np.uint8) for f in clip(0)[0]]
    write_video(path, frames)
    return path


def test_a_corrupt_region_costs_only_its_own_frames(tmp_path):
    data = bytearray(noisy_clip_file(tmp_path / "good.mp4").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2000] = b"\xff" * 2000  # garbage inside the mdat, mid-video
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "corrupt.mp4").write_bytes(data)
    summary = run_ingest(tmp_path / "src", tmp_path / "out", fps=FPS)
    [record] = check_shards_agree(tmp_path / "out")
    assert summary.videos_ok == 1 and record["status"] == "ok"
    assert record["decode_errors"] >= 1 and 40 < record["num_frames"] < 81
    assert len(record["shots"]) >= 2


def test_a_video_with_no_decodable_frame_is_an_error(tmp_path):
    data = bytearray(noisy_clip_file(tmp_path / "good.mp4").read_bytes())
    start, end = data.find(b"mdat") + 4, data.find(b"moov") - 4
    data[start:end] = bytes(end - start)  # every coded frame zeroed; the index (moov) intact
    (tmp_path / "zeroed.mp4").write_bytes(data)
    run_ingest(tmp_path / "zeroed.mp4", tmp_path / "out")
    [record] = read_records(tmp_path / "out" / INDEX_NAME)
    assert record["status"] == "error" and "\n" not in record["error"]
    assert re.match(r"no decodable video frames \((\d\d) packets failed to decode: ", record["error"]), record["error"]


@pytest.mark.parametrize("fault", ["kill", "hang"])
def test_a_dying_or_hanging_worker_costs_one_video(videos, tmp_path, monkeypatch, fault):
    root, _ = videos
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"v{i}.mp4").write_bytes((root / f"clip{i % 2}.mp4").read_bytes())
    monkeypatch.setenv(FAULT_ENV, f"{fault}:v1.mp4")  # the spawned workers inherit it
    started = time.monotonic()
    summary = run_ingest(src, tmp_path / "out", fps=1.0, workers=2, timeout=6.0 if fault == "hang" else None)
    assert time.monotonic() - started < 40
    records = {Path(r["source"]).name: r for r in read_records(tmp_path / "out" / INDEX_NAME)}
    assert (summary.videos_ok, summary.videos_error) == (3, 1)
    assert records["v1.mp4"]["status"] == "error"
    expected = "worker process died (killed by SIGKILL" if fault == "kill" else "timed out after 6 s"
    assert records["v1.mp4"]["error"].startswith(expected), records["v1.mp4"]["error"]
    assert_exactly_once(tmp_path / "out", 4)


def _square_unless_odd_case(x: int) -> int:
    """A worker function for isolated_map: 3 raises, 4 exits the process, others square."""
    if x == 3:
        raise ValueError("three is\nbad")
    if x == 4:
        os._exit(5)
    return x * x


def test_isolated_map_turns_exceptions_and_exits_into_failures():
    results = dict(isolated_map(_square_unless_odd_case, [1, 2, 3, 4, 5, 6], workers=2))
    assert {k: v for k, v in results.items() if not isinstance(v, Failure)} == {1: 1, 2: 4, 5: 25, 6: 36}
    assert results[3] == Failure("unexpected ValueError: three is bad")
    assert results[4] == Failure("worker process died (exit code 5)")


def test_timeout_needs_isolation(videos, tmp_path):
    root, _ = videos
    with pytest.raises(UserError, match="timeout"):
        run_ingest(root, tmp_path, timeout=5.0, isolate=False)
    with pytest.raises(UserError, match="timeout=0"):
        run_ingest(root, tmp_path, timeout=0)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_unreadable_file_is_an_error_record(videos, tmp_path):
    root, _ = videos
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.mp4").write_bytes((root / "clip0.mp4").read_bytes())
    locked = src / "locked.mp4"
    locked.write_bytes((root / "clip1.mp4").read_bytes())
    locked.chmod(0)
    summary = run_ingest(src, tmp_path / "out", fps=1.0)
    records = {Path(r["source"]).name: r for r in read_records(tmp_path / "out" / INDEX_NAME)}
    assert (summary.videos_ok, summary.videos_error) == (1, 1)
    assert records["locked.mp4"]["error"].startswith("cannot open: ") and "ermission" in records["locked.mp4"]["error"]


def test_a_listed_file_that_is_gone_is_an_error_record(videos, tmp_path):
    root, _ = videos
    listing = tmp_path / "list.txt"
    listing.write_text(f"{root}/clip0.mp4\n{tmp_path}/gone.mp4\n")
    summary = run_ingest(listing, tmp_path / "out", fps=1.0)
    records = {Path(r["source"]).name: r for r in read_records(tmp_path / "out" / INDEX_NAME)}
    assert (summary.videos_ok, summary.videos_error) == (1, 1)
    assert records["gone.mp4"]["error"] == f"no such file: {tmp_path / 'gone.mp4'}"  # where it was looked for



def test_ctrl_c_keeps_the_videos_finished_so_far(videos, tmp_path, monkeypatch):
    """Finished videos wait in the open shard; an interrupt closes it instead of throwing it away."""
    import vivi.data.ingest as ingest_module

    root, _ = videos
    real = ingest_module._process

    def interrupted_on_the_third(source, location, options, on_progress=None):
        if location.endswith("clip2.mp4"):
            raise KeyboardInterrupt
        return real(source, location, options, on_progress)

    monkeypatch.setattr(ingest_module, "_process", interrupted_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        run_ingest(root, tmp_path, fps=1.0)
    assert [Path(r["source"]).name for r in read_records(tmp_path / INDEX_NAME)] == ["clip0.mp4", "clip1.mp4"]
    monkeypatch.setattr(ingest_module, "_process", real)
    assert run_ingest(root, tmp_path, fps=1.0).videos_ok == 1
    assert_exactly_once(tmp_path, 3)


def test_sigterm_interrupts_like_ctrl_c_but_never_inside_a_write():
    from vivi.errors import Interrupts

    with Interrupts() as stop:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        finished = False
        with pytest.raises(KeyboardInterrupt):
            with stop.deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                finished = True  # the block ran to its end before the interrupt was raised
        assert finished
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_out_that_is_a_file_and_changed_options_are_one_line_errors(videos, tmp_path):
    root, _ = videos
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="file: exists and is not a folder"):
        run_ingest(root, tmp_path / "file")
    run_ingest(root / "clip0.mp4", tmp_path / "out", fps=1.0)
    with pytest.raises(UserError, match=r"out: was ingested with fps=1.0 \(now 2.0\); re-run with the same options"):
        run_ingest(root, tmp_path / "out", fps=2.0)  # would mix 1 Hz and 2 Hz videos in one dataset
    with pytest.raises(UserError, match=r"out: was ingested with jpeg_quality=90 \(now 50\)"):
        run_ingest(root, tmp_path / "out", fps=1.0, jpeg_quality=50)  # frames of two qualities
    assert run_ingest(root, tmp_path / "out", fps=1.0).videos_ok == 2


def test_folders_follow_links_skip_hidden_files_and_note_other_files(videos, tmp_path, capsys):
    """A linked folder's videos are not silently missing; a broken link is an error record."""
    root, _ = videos
    src = tmp_path / "src"
    (src / "linked").parent.mkdir()
    (src / "linked").symlink_to(root / "sub")
    (src / "a.M4V").write_bytes((root / "clip0.mp4").read_bytes())
    (src / "broken.mp4").symlink_to(tmp_path / "gone.mp4")
    (src / "._a.mp4").write_bytes(b"AppleDouble")
    (src / "notes.txt").write_text("x")
    sources = list_sources(src)
    assert [Path(s.given).name for s in sources] == ["a.M4V", "broken.mp4", "clip2.mp4"]
    assert "ignored 1 file that is not a video (.txt: 1)" in capsys.readouterr().err
    run_ingest(src, tmp_path / "out", fps=1.0)
    records = {Path(r["source"]).name: r for r in read_records(tmp_path / "out" / INDEX_NAME)}
    assert records["broken.mp4"]["error"] == f"no such file: {tmp_path / 'gone.mp4'}"
    assert records["clip2.mp4"]["status"] == records["a.M4V"]["status"] == "ok"


def test_raw_elementary_streams_are_found_in_folders(tmp_path):
    for name in ("cam.h264", "b.264", "c.hevc", "d.H265", "e.265", "f.yuv"):
        (tmp_path / name).write_bytes(b"")
    assert [Path(s.given).name for s in list_sources(tmp_path)] == ["b.264", "c.hevc", "cam.h264", "d.H265", "e.265"]


def test_workers_that_fill_the_cores_decode_with_one_thread_each(monkeypatch):
    from vivi.data.ingest import _decode_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert [_decode_threads(w) for w in (1, 2, 3)] == [0, 1, 1]  # 0: FFmpeg's choice for a lone worker
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert [_decode_threads(w) for w in (1, 2, 8)] == [0, 4, 1]


def test_the_ingest_module_leaves_decoding_modules_to_the_workers():
    """The main process starts workers sooner without PyAV and Pillow; workers need no tqdm."""
    code = "import sys, vivi.data.ingest; print(sorted({'av', 'PIL', 'tqdm'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_pipe_commands_and_fsspec_urls_are_ingested_like_their_files(videos, tmp_path):
    """``pipe:CMD`` (webdataset's convention) and non-FFmpeg URLs are copied to a temporary file in
    the spool, then decoded exactly as the file itself; a failing command or an unknown protocol is
    an error record with the reason, and no temporary copy is left behind."""
    root, _ = videos
    listing = tmp_path / "list.txt"
    listing.write_text(
        f"pipe:cat '{root}/clip1.mp4'\nfile://{root}/sub/clip2.mp4\n"
        f"pipe:cat '{tmp_path}/gone.mp4'\nnosuchproto://bucket/clip.mp4\n"
    )
    summary = run_ingest(listing, tmp_path / "out", fps=FPS, workers=2)
    assert (summary.videos_ok, summary.videos_error) == (2, 2)
    records = {r["source"]: r for r in check_shards_agree(tmp_path / "out")}
    run_ingest(root, tmp_path / "direct", fps=FPS)
    direct = {Path(r["source"]).name: r for r in read_records(tmp_path / "direct" / INDEX_NAME)}
    for given, name in ((f"pipe:cat '{root}/clip1.mp4'", "clip1.mp4"), (f"file://{root}/sub/clip2.mp4", "clip2.mp4")):
        assert records[given]["location"] == given and records[given]["key"].startswith(name.split(".")[0])
        assert records[given]["shots"] == direct[name]["shots"] and records[given]["num_frames"] == 81
    gone = records[f"pipe:cat '{tmp_path}/gone.mp4'"]["error"]
    assert gone.startswith("pipe command exited with status 1: ") and "gone.mp4" in gone
    assert records["nosuchproto://bucket/clip.mp4"]["error"] == "cannot read: ValueError: Protocol not known: nosuchproto"
    assert not list((tmp_path / "out").rglob("*.video"))


def test_a_list_with_a_latin1_path_is_read_and_a_utf16_list_refused(videos, tmp_path):
    """One path of an old disk's Latin-1 name refused the whole list; it now keeps its bytes, as a
    folder listing names the file. UTF-16 (NUL bytes) is still no list, in one line."""
    root, _ = videos
    latin1 = os.fsdecode(str(tmp_path).encode() + b"/caf\xe9.mp4")
    Path(latin1).write_bytes((root / "clip0.mp4").read_bytes())
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"caf\xe9.mp4\n" + f"{root}/clip1.mp4\n".encode())
    assert [s.location for s in list_sources(listing)] == [latin1, str(root / "clip1.mp4")]
    summary = run_ingest(listing, tmp_path / "out", fps=1.0)
    assert (summary.videos_ok, summary.videos_error) == (2, 0)
    listing.write_text(f"{root}/clip1.mp4\n", encoding="utf-16")
    with pytest.raises(UserError, match=r"list\.txt: not a readable text list of videos \(UnicodeDecodeError\); a list is UTF-8"):
        list_sources(listing)
