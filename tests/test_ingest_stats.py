"""`vivi ingest --part i/N` slicing and `vivi ingest-stats` over several ingest folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from vivi.cli import main
from vivi.data.ingest import ingest, list_sources, parse_part, select_part
from vivi.data.shards import INDEX_NAME
from vivi.data.stats import PLOT_NAMES, compute_stats, format_stats, ingest_stats, load_records
from vivi.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def listing(tmp_path) -> Path:
    """A list file of 11 (not existing) videos, one listed twice."""
    names = [f"v{i:02d}.mp4" for i in range(11)] + ["v03.mp4"]
    path = tmp_path / "videos.txt"
    path.write_text("\n".join(names) + "\n")
    return path


@pytest.mark.parametrize("n", [1, 2, 3, 4, 11, 15])
def test_parts_are_disjoint_and_cover_every_source_once(listing, n):
    sources = list_sources(listing)
    assert len(sources) == 11
    parts = [select_part(sources, i, n) for i in range(n)]
    keys = [s.key for part in parts for s in part]
    assert len(keys) == len(set(keys)) and sorted(keys) == sorted(s.key for s in sources)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced
    assert [select_part(list_sources(listing), i, n) for i in range(n)] == parts  # deterministic


def test_parts_of_a_folder_follow_the_sorted_listing(tmp_path):
    for name in ["b.mp4", "a.mp4", "sub/c.mkv", "d.webm"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    sources = list_sources(tmp_path)
    assert [Path(s.given).name for s in select_part(sources, 0, 2)] == ["a.mp4", "d.webm"]
    assert [Path(s.given).name for s in select_part(sources, 1, 2)] == ["b.mp4", "c.mkv"]


@pytest.mark.parametrize("text", ["", "1", "a/b", "1/2/3", "-1/4", "4/4", "5/4", "0/0", "1.0/2"])
def test_bad_part_values_are_one_line_user_errors(text):
    with pytest.raises(UserError) as e:
        parse_part(text)
    assert "\n" not in str(e.value) and "--part" in str(e.value)


def test_part_parsing():
    assert parse_part("0/1") == (0, 1) and parse_part("3/4") == (3, 4) and parse_part(" 2 / 8 ") == (2, 8)
    with pytest.raises(UserError):
        select_part([], 2, 2)


def test_ingest_parts_then_stats_read_them_as_one_dataset(tmp_path, capsys):
    """Undecodable files need no codec time: every part records its errors; the stats add up."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"empty{i}.mp4").write_bytes(b"")
    outs = [tmp_path / "out" / f"part-{i}" for i in range(4)]
    for i, out in enumerate(outs):
        ingest(src, out, part=f"{i}/4", progress=False)
    assert (outs[3] / INDEX_NAME).read_text() == ""  # an empty part is still an ingest output
    records = load_records(outs)
    assert sorted(Path(r["source"]).name for r in records) == ["empty0.mp4", "empty1.mp4", "empty2.mp4"]
    summary = ingest(src, outs[0], part=(0, 4), progress=False)  # resumes: nothing twice
    assert (summary.already_done, summary.videos) == (1, 0)
    assert main(["ingest-stats", *map(str, outs), "-o", str(tmp_path / "plots")]) == 0
    printed = capsys.readouterr().out
    assert "3 videos: 0 ok, 0 skipped, 3 errors" in printed and "3  empty file (0 bytes)" in printed
    for name in PLOT_NAMES:
        assert Image.open(tmp_path / "plots" / name).size[0] > 0


def _shot(start_s: float, end_s: float, frames: int) -> dict:
    return {
        "start_frame": int(start_s * 10), "end_frame": int(end_s * 10) - 1, "start_s": start_s, "end_s": end_s,
        "frames": [{"frame": int(start_s * 10) + k, "t": start_s + k / 10} for k in range(frames)],
    }


def _record(key: str, status: str, error: str | None = None, duration_s: float | None = None, shots=()) -> dict:
    return {
        "source": f"/videos/{key}.mp4", "key": key, "status": status, "error": error, "fps": 10.0,
        "num_frames": int((duration_s or 0) * 10), "duration_s": duration_s, "width": 64, "height": 64,
        "shots": list(shots), **({"shard": "shards/shard-000000.tar"} if status == "ok" else {}),
    }


@pytest.fixture
def two_folders(tmp_path) -> list[Path]:
    """Two ingest folders with index records written here; ``a`` also appears in the second."""
    first = [
        _record("a", "ok", duration_s=1800.0, shots=[_shot(0, 2, 2), _shot(2, 5, 3), _shot(5, 6, 1)]),
        _record("b", "ok", duration_s=900.0, shots=[_shot(0, 4, 4)]),
        _record("c", "error", "empty file (0 bytes)"),
    ]
    second = [
        _record("a", "ok", duration_s=1800.0, shots=[_shot(0, 2, 2)]),  # a duplicate: counted once
        _record("d", "skipped", "0 shots with kept frames, fewer than min_shots=1", duration_s=900.0),
        _record("e", "error", "empty file (0 bytes)"),
        _record("f", "error", "no video stream"),
    ]
    folders = []
    for name, records in [("p0", first), ("p1", second)]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / INDEX_NAME).write_text("".join(json.dumps(r) + "\n" for r in records))
        folders.append(folder)
    return folders


def test_stats_counts_by_hand(two_folders):
    stats = compute_stats(load_records(two_folders), folders=2)
    s = stats.summary
    assert (s.videos_ok, s.videos_skipped, s.videos_error, stats.duplicates) == (2, 1, 3, 1)
    assert (s.shots, s.frames) == (4, 10)  # a: 3 shots, 6 frames; b: 1 shot, 4 frames
    assert s.video_hours == pytest.approx(1.0)  # 1800 + 900 + 900 s (the skipped video counts too)
    assert sorted(stats.shots_per_video) == [1, 3]
    assert sorted(stats.shot_seconds) == [1.0, 2.0, 3.0, 4.0]
    assert stats.reasons["error"].most_common() == [("empty file (0 bytes)", 2), ("no video stream", 1)]
    text = format_stats(stats)
    assert "2 ingest folders: 6 videos: 2 ok, 1 skipped, 3 errors; 4 shots, 10 frames kept from 1.00 hours" in text
    assert "1 duplicate records" in text and "2.00 shots per video" in text and "mean shot length 2.50 s" in text
    assert text.index("2  empty file (0 bytes)") < text.index("1  no video stream")


def test_histograms_default_to_the_first_folder_and_decode(two_folders):
    stats, paths = ingest_stats(two_folders)
    assert [p.parent for p in paths] == [two_folders[0]] * 2 and [p.name for p in paths] == list(PLOT_NAMES)
    for path in paths:
        with Image.open(path) as image:
            image.load()
            assert image.format == "PNG" and min(image.size) > 100


def test_missing_folder_or_index_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        load_records([tmp_path / "nope"])
    with pytest.raises(UserError, match=INDEX_NAME):
        load_records([tmp_path])


def test_cli_missing_folder_exits_2_with_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "vivi", "ingest-stats", "/nonexistent"], cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == "vivi: error: /nonexistent: no such folder"


def test_reasons_that_differ_only_in_their_numbers_are_one_kind():
    from vivi.data.stats import reason_kind

    short = "0 shots with kept frames, fewer than min_shots=1 (the video lasts {} s; a shot lasts at least 1 s)"
    kinds = {reason_kind(short.format(d)) for d in ("0.10", "0.50", "12.00")}
    assert kinds == {"0 shots with kept frames, fewer than min_shots=1 (the video lasts # s; a shot lasts at least 1 s)"}
    assert reason_kind("no such file: /data/1.5/clip3.5.mp4") == "no such file: /data/1.5/clip3.5.mp4"
    assert reason_kind("empty file (0 bytes)") == "empty file (0 bytes)"
    assert reason_kind("cannot open: Invalid data found when processing input") == (
        "cannot open: Invalid data found when processing input")
    records = [{"key": f"k{i}", "status": "skipped", "error": short.format(d), "duration_s": float(d)}
               for i, d in enumerate(("0.10", "0.50"))]
    assert compute_stats(records).reasons["skipped"].most_common(1)[0][1] == 2


def test_videos_cut_short_are_counted(tmp_path):
    """Ok videos whose index record holds ``declared_s`` (they end well before the length their file
    declares) are counted in the totals and under ok; skipped ones carry the field but are no ok video."""
    records = [
        _record("a", "ok", duration_s=4.0, shots=[_shot(0, 2, 2)]) | {"declared_s": 10.0},
        _record("b", "ok", duration_s=10.0, shots=[_shot(0, 2, 2)]),
        _record("c", "skipped", "0 shots with kept frames", duration_s=0.6) | {"declared_s": 10.0},
    ]
    (tmp_path / INDEX_NAME).write_text("".join(json.dumps(r) + "\n" for r in records))
    stats, _ = ingest_stats([tmp_path])
    assert stats.summary.videos_short == 1
    text = format_stats(stats)
    assert "3 videos: 2 ok (1 shorter than its file declares), 1 skipped, 0 errors;" in text
    assert "     1  end well before the length their files declare (cut short? index field declared_s)" in text
