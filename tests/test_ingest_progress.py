"""`vivi ingest`'s progress within a video: the bar counted whole videos, so one 40-minute film
left it still for minutes. Workers report how far they are (a small file per video in flight);
a thread of the main process shows it. Only what is deterministic is tested: no timing."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from tqdm import tqdm

from test_odd_videos import write
from vivi.data.ingest import (
    PROGRESS_SUFFIX, IngestSummary, Options, _decode, _LiveBar, in_flight, ingest, list_sources, process_video,
)


@pytest.fixture
def six_seconds(tmp_path) -> Path:
    """6 s at 10 fps: two 3 s shots."""
    path = tmp_path / "six.mp4"
    write(path, fps=10, shots=2, per_shot=30)
    return path


def options(spool: Path | str = "") -> Options:
    return Options(fps=1.0, short_side=32, min_shots=1, jpeg_quality=90, detector="histogram", spool_dir=str(spool))


def test_decoding_reports_each_second_of_video_as_it_goes(six_seconds):
    calls: list[tuple[float, int]] = []
    [source] = list_sources(six_seconds)
    _decode(source, source.location, options(), lambda seconds, frames: calls.append((seconds, frames)))
    assert calls == [(1.0, 11), (2.0, 21), (3.0, 31), (4.0, 41), (5.0, 51)]  # within the one video, in order


def test_a_worker_leaves_its_progress_for_the_main_process_to_count(six_seconds, tmp_path):
    """What a worker process does, here in this one: its file says how far it got; the main process
    removes it once the video is in the summary (see the next test)."""
    spool = tmp_path / "spool"
    [source] = list_sources(six_seconds)
    result = process_video(source, options(spool))
    assert result.record["status"] == "ok"
    assert (spool / f"{source.key}{PROGRESS_SUFFIX}").is_file()
    assert in_flight(spool) == (5.0, 51)
    (spool / f"other{PROGRESS_SUFFIX}").write_text("")  # a worker that has just opened its file
    assert in_flight(spool) == (5.0, 51)


def test_the_bar_shows_video_time_of_finished_videos_and_those_in_flight(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / f"a{PROGRESS_SUFFIX}").write_text(f"{125.5:16.3f} {3000:12d}\n")
    summary = IngestSummary(videos_ok=1, frames_decoded=1000, video_hours=60 / 3600)
    with tqdm(total=3, file=io.StringIO()) as bar, _LiveBar(bar, spool, summary, 0.0) as live:
        live.show()
        assert "frames=4000" in bar.postfix and "video=03:05" in bar.postfix, bar.postfix


def test_an_ingest_with_its_bar_leaves_no_progress_file(six_seconds, tmp_path, capsys):
    out = tmp_path / "out"
    summary = ingest(six_seconds, out, fps=1.0, progress=True)
    assert summary.videos_ok == 1
    assert not (out / "spool").exists()  # every progress file removed, so the spool folder too
    assert "video=00:06" in capsys.readouterr().err  # the finished video's 6 s
