"""`vivi ingest`: videos -> shots -> frames at ~fps Hz inside shots -> shards + index.jsonl.

Each video is decoded once: every frame feeds the streaming shot detector (``--detector``,
see :mod:`vivi.data.detectors`) through a small image scaled straight from the decoded frame,
and frames on the ``fps`` sampling grid are kept as JPEG, appended to a spool file as they
are made (so memory does not grow with a video's length). When the pass ends the shots are
known and the kept frames that fall inside a shot are assigned to it. Workers only turn a
video into a record and its JPEGs, in crash-isolated processes (:mod:`vivi.data.pool`: a
crash or a ``timeout`` costs one video, recorded as an error); the main process alone writes
shards and the index, in the crash-safe order described in :mod:`vivi.data.shards`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import BinaryIO

import numpy as np

from vivi.data.detectors import check_detector, make_frame_detector
from vivi.data.files import ignored_note, output_dir, walk_files_and_hidden
from vivi.data.pool import Failure, isolated_map
from vivi.data.shards import (
    INDEX_NAME, SHARDS_DIR, SPOOL_DIR, Images, JpegSpool, ShardWriter, SpooledImages, append_records, image_name,
    recover,
)
from vivi.data.shots import DetectorParams, Shot, max_step_s, split_at_gaps
from vivi.errors import Interrupts, UserError, warn
from vivi.folder_lock import lock_folder

VIDEO_EXTENSIONS = (
    ".mp4", ".mkv", ".webm", ".avi", ".mov",  # tested
    ".m4v", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".3gp", ".flv", ".wmv", ".ogv",  # common elsewhere
    ".h264", ".264", ".h265", ".265", ".hevc",  # raw elementary streams (camera and robot dumps)
)
MiB = 1 << 20
HIDDEN_NOTE = "names starting with '.' are hidden; rename them to ingest them"
MIN_SHOT_S = DetectorParams().min_shot_s  # shared by every detector
# A video is taken to end before the length its file declares (cut short: an interrupted download
# or copy) when its decoded frames end more than max(SHORT_MIN_S, SHORT_FRACTION x declared)
# seconds early; see :func:`declared_short`.
SHORT_MIN_S = 1.0
SHORT_FRACTION = 0.05
# Tests only: "kill:NAME" (SIGKILL, as the OOM killer sends) or "hang:NAME" makes the worker
# ingesting the file named NAME die or never finish, to check that the run survives it.
FAULT_ENV = "VIVI_TEST_INGEST_FAULT"


@dataclass(frozen=True)
class Source:
    """A video to ingest: as the user gave it, where to open it, its shard key and its size in bytes
    (None for a URL or an unreadable file).

    The key is made from the video's name (:data:`KEYS_BY_NAME`): its path within the folder given
    (led by that folder's own name), the entry of a list as written, the file's name, or the URL;
    never from where the folder happens to sit, so the same videos get the same keys, and a run the
    same batches, wherever they are ingested.
    """

    given: str
    location: str
    key: str
    size: int | None = None


@dataclass(frozen=True)
class Options:
    """Per-video settings, sent to the workers."""

    fps: float
    short_side: int
    min_shots: int
    jpeg_quality: int
    detector: str
    spool_dir: str = ""  # where workers put a video's JPEGs as they go; "" keeps them in memory
    decode_threads: int = 0  # per video; 0: FFmpeg's choice (see _decode_threads)


@dataclass
class VideoResult:
    """One video's index record (without ``shard``), its JPEGs, and how many frames were decoded."""

    record: dict
    images: Images = field(default_factory=list)
    frames_decoded: int = 0


@dataclass
class IngestSummary:
    """Counts for this run; ``already_done`` videos were in the index before it started."""

    videos_ok: int = 0
    videos_skipped: int = 0
    videos_error: int = 0
    videos_short: int = 0  # of the ok videos: those ending well before their declared length
    already_done: int = 0
    shots: int = 0
    frames: int = 0  # kept frames written to shards
    frames_decoded: int = 0
    video_hours: float = 0.0
    seconds: float = 0.0
    hidden_skipped: int = 0  # hidden video files (".clip.mp4") left out of a folder's listing
    # why OUT holds no ingested video although some failed (this run's or earlier ones'), else None;
    # set by :func:`ingest`, turned into an exit status by :func:`check_ingested`
    nothing_ingested: str | None = None

    @property
    def throughput(self) -> float:
        """Frames decoded per second of wall time."""
        return self.frames_decoded / self.seconds if self.seconds > 0 else 0.0

    @property
    def videos(self) -> int:
        return self.videos_ok + self.videos_skipped + self.videos_error

    def add(self, result: VideoResult) -> None:
        self.add_record(result.record)
        self.frames_decoded += result.frames_decoded

    def add_record(self, record: dict) -> None:
        """Count one index record (also used by :mod:`vivi.data.stats` on finished indexes)."""
        status = record["status"]
        self.videos_ok += status == "ok"
        self.videos_skipped += status == "skipped"
        self.videos_error += status == "error"
        self.videos_short += status == "ok" and record.get("declared_s") is not None
        self.shots += len(record.get("shots") or [])
        self.frames += sum(len(s["frames"]) for s in record.get("shots") or [])
        self.video_hours += (record.get("duration_s") or 0.0) / 3600

    def counts(self, already_done: str = "") -> str:
        """``N videos: a ok, b skipped, c errors; S shots, F frames kept from H hours of video``."""
        return (
            f"{self.videos} video{'s' if self.videos != 1 else ''}{already_done}: "
            f"{self.videos_ok} ok{self._short()}, {self.videos_skipped} skipped, {self.videos_error} errors; "
            f"{self.shots} shots, {self.frames} frames kept from {self.video_hours:.2f} hours of video"
        )

    def _short(self) -> str:
        """" (2 shorter than their files declare)": said only where there are some."""
        if not self.videos_short:
            return ""
        n = self.videos_short
        return f" ({n} shorter than {'their files declare' if n != 1 else 'its file declares'})"

    def __str__(self) -> str:
        done = f" ({self.already_done} already in the index)" if self.already_done else ""
        return (
            f"Ingested {self.counts(done)} "
            f"in {self.seconds:.1f} s ({self.throughput:.0f} frames decoded/s){self._hidden()}."
        )

    def _hidden(self) -> str:
        """"; 3 hidden video files skipped (...)": a user whose videos were named ".x.mp4" learnt
        nothing of them."""
        if not self.hidden_skipped:
            return ""
        return f"; {_hidden_count(self.hidden_skipped)} skipped ({HIDDEN_NOTE})"


class NothingIngested(UserError):
    """Every video of an ingest failed (or none was ingested and some failed): the command failed,
    while a partly failed ingest succeeds with warnings."""

    exit_code = 1  # the work failed; 2 is for bad input the command refused (a UserError)


def check_ingested(summary: IngestSummary) -> None:
    """Raise :class:`NothingIngested` where :func:`ingest` found OUT without an ingested video
    although some failed: the CLI exited 0 on such a run, so a script went on to pretrain."""
    if summary.nothing_ingested:
        raise NothingIngested(summary.nothing_ingested)


def _nothing_ingested(out: Path, counts: dict[str, int], first_error: dict | None) -> str | None:
    """The one-line reason for :class:`NothingIngested`, from OUT's status counts (earlier runs'
    records included: re-running a failed ingest has nothing left to do, and fails again)."""
    if counts["ok"] or not counts["error"] or first_error is None:
        return None
    total = sum(counts.values())
    return (
        f"{out}: no video was ingested: {counts['error']} of {total} failed "
        f"(the first: {first_error['source']}: {first_error['error']}); `vivi ingest-stats {out}` lists every reason"
    )


def ingest(
    src: str | Path,
    out: Path,
    workers: int = 1,
    fps: float = 1.0,
    short_side: int = 256,
    min_shots: int = 1,
    shard_max_bytes: int = 256 * MiB,
    jpeg_quality: int = 90,
    detector: str = "histogram",
    progress: bool = True,
    part: str | tuple[int, int] | None = None,
    timeout: float | None = None,
    isolate: bool | None = None,
) -> IngestSummary:
    """Ingest the videos of SRC (a folder, a list file or one video) into OUT; resumes OUT.

    Videos are processed in worker processes when ``isolate`` (default: when ``workers > 1`` or
    a ``timeout`` is set; the CLI always isolates): a worker that dies (a decoder crash, the
    OOM killer) or spends more than ``timeout`` seconds on one video turns that video into an
    "error" record and is replaced; the run goes on. ``isolate=False`` with one worker decodes
    in this process (no start-up cost; what library callers and tests of small inputs want).

    ``part`` (``"i/N"`` or ``(i, N)``) ingests only that slice of the sources: see
    :func:`select_part`. Each part should get its own OUT (e.g. ``OUT/part-i``); read them
    back together with ``read_index([...])`` or ``vivi ingest-stats``.

    Where no video of OUT was ingested and some failed, the summary's ``nothing_ingested`` says so
    (the records are kept); :func:`check_ingested` makes it the error the CLI exits 1 with.
    """
    started = time.perf_counter()
    options = Options(fps, short_side, min_shots, jpeg_quality, detector, str(Path(out).resolve() / SPOOL_DIR))
    _check(options, workers, shard_max_bytes, timeout)
    if isolate is None:
        isolate = workers > 1 or timeout is not None
    if isolate:
        options = replace(options, decode_threads=_decode_threads(workers))
    if timeout is not None and not isolate:
        raise UserError("timeout needs isolate=True: only a worker process can be stopped")
    index_part = parse_part(part) if isinstance(part, str) else part
    sources, hidden = _list_sources(src)
    if index_part is not None:
        sources = select_part(sources, *index_part)
    out = output_dir(Path(out))
    # one ingest per folder: a second one into OUT would decode the same videos into other shards
    # and append them to the index again; it stops here, before OUT is read or changed
    with lock_folder(out, "ingest", "written") or contextlib.nullcontext():
        keys = _key_scheme(out)
        if keys == KEYS_BY_LOCATION:  # a folder begun before keys were made from names
            sources = [replace(s, key=source_key(s.location)) for s in sources]
        _check_same_options(out, options, keys)
        done_records, next_shard = recover(out)
        _check_same_videos(out, sources, done_records)
        done = {r["key"] for r in done_records}
        done_files = {r.get("location") for r in done_records}  # the same file, listed another way
        statuses = {status: sum(r["status"] == status for r in done_records) for status in ("ok", "skipped", "error")}
        first_error = next((r for r in done_records if r["status"] == "error"), None)
        todo = [s for s in sources if s.key not in done and s.location not in done_files]
        summary = IngestSummary(already_done=len(sources) - len(todo), hidden_skipped=hidden)
        not_ok = _FirstFew()  # this run's error and skipped records, named after the summary
        short = _FirstFew()  # this run's ok videos that end before their declared length
        writer = ShardWriter(out / SHARDS_DIR, shard_max_bytes, next_shard)
        index = out / INDEX_NAME
        index.touch()  # an empty part is still a readable (empty) ingest output
        from tqdm import tqdm  # here, not at the top: workers import this module and need no progress bar

        with (
            tqdm(total=len(todo), unit="video", desc="ingest", disable=not progress) as bar,
            Interrupts() as stop,
            _LiveBar(bar, Path(options.spool_dir), summary, started) as live,
        ):
            results = _results(todo, options, workers, timeout, isolate)
            try:
                for result in results:
                    with stop.deferred():  # a signal never cuts a shard member or an index line in half
                        with live.lock:  # the video leaves the in-flight count as it joins the summary
                            summary.add(result)
                            _progress_path(options, result.record["key"]).unlink(missing_ok=True)
                        statuses[result.record["status"]] += 1
                        if result.record["status"] == "error" and first_error is None:
                            first_error = result.record
                        if result.record["status"] == "ok":
                            append_records(index, writer.add(result.record, result.images))
                            if result.record.get("declared_s") is not None:
                                short.add(result.record)
                        else:
                            append_records(index, [result.record])
                            not_ok.add(result.record)
                        if isinstance(result.images, SpooledImages):
                            result.images.discard()
                    live.show(refresh=False)
                    bar.update()  # one redraw, count and counters together
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep every finished video, then stop
                live.stop()
                with stop.deferred():
                    results.close()  # stops the workers
                    append_records(index, writer.close())
                bar.close()
                if progress:
                    kept = f"kept the {summary.videos} videos finished in this run in {index}"
                    print(f"Interrupted: {kept}.", file=sys.stderr)
                raise
            with stop.deferred():
                append_records(index, writer.close())
        with contextlib.suppress(OSError):
            (out / SPOOL_DIR).rmdir()  # empty unless a video failed in a way that left a file
        summary.seconds = time.perf_counter() - started
        summary.nothing_ingested = _nothing_ingested(out, statuses, first_error)
        if progress:
            print(summary, file=sys.stderr)
            if not_ok.count:
                print(not_ok_note(not_ok, index), file=sys.stderr)
            if short.count:
                print(short_note(short), file=sys.stderr)
        return summary


PROGRESS_SUFFIX = ".progress"  # spool/<key>.progress: how far the worker on that video has decoded
PROGRESS_STEP_S = 1.0  # seconds of video between two reports of a video's progress
REDRAW_S = 1.0  # how often the bar is redrawn with the progress of the videos in flight


class _ProgressFile:
    """How far a worker is into its video, for the main process's bar: the bar counted whole videos,
    so one 40-minute film left it still for minutes. Workers are separate processes (see
    :mod:`vivi.data.pool`) and the main one blocks until one finishes, so the worker overwrites one
    line of a small file once per :data:`PROGRESS_STEP_S` of video (a write that costs microseconds
    against the ~25 frames decoded in between) and a thread of the main process reads it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def __call__(self, seconds: float, frames: int) -> None:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        # fixed width, both numbers only grow: an overwrite in place never leaves old digits behind
        os.pwrite(self._fd, f"{seconds:16.3f} {frames:12d}\n".encode(), 0)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _progress_path(options: Options, key: str) -> Path:
    return Path(options.spool_dir) / f"{key}{PROGRESS_SUFFIX}"


def in_flight(spool: Path) -> tuple[float, int]:
    """Seconds of video and frames decoded so far by the videos still being worked on (their
    :class:`_ProgressFile`); a file being replaced or just removed counts as nothing."""
    seconds, frames = 0.0, 0
    for path in spool.glob(f"*{PROGRESS_SUFFIX}"):
        try:
            s, f = path.read_text().split()
            seconds, frames = seconds + float(s), frames + int(f)
        except (OSError, ValueError):
            continue
    return seconds, frames


class _LiveBar:
    """The bar's counters, with the video time decoded so far (finished videos and those in flight),
    redrawn every :data:`REDRAW_S` by a thread while the main loop waits for a worker. ``lock`` keeps
    a finished video from being counted twice: the loop adds it to the summary and removes its
    progress file under it."""

    def __init__(self, bar: object, spool: Path, summary: IngestSummary, started: float) -> None:
        self.lock = threading.Lock()
        self._bar, self._spool, self._summary, self._started = bar, spool, summary, started
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _LiveBar:
        if not self._bar.disable:  # type: ignore[attr-defined]
            self._thread = threading.Thread(target=self._run, name="ingest-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def show(self, refresh: bool = True) -> None:
        """Set the counters; ``refresh``: redraw now (the main loop's ``bar.update()`` redraws)."""
        from tqdm import tqdm

        with self.lock:
            seconds, frames = in_flight(self._spool) if self._thread is not None else (0.0, 0)
            summary = self._summary
            frames += summary.frames_decoded
            seconds += summary.video_hours * 3600
        rate = frames / max(time.perf_counter() - self._started, 1e-9)
        self._bar.set_postfix(  # type: ignore[attr-defined]
            ok=summary.videos_ok, skipped=summary.videos_skipped, errors=summary.videos_error, frames=frames,
            frames_per_s=f"{rate:.0f}", video=tqdm.format_interval(seconds), refresh=refresh,
        )

    def _run(self) -> None:
        while not self._stopped.wait(REDRAW_S):
            self.show()


SHOWN_NOT_OK = 3  # videos named after the summary (not ingested, cut short); the index has them all


@dataclass
class _FirstFew:
    """The first :data:`SHOWN_NOT_OK` records of a kind, and how many there were."""

    records: list[dict] = field(default_factory=list)
    count: int = 0

    def add(self, record: dict) -> None:
        self.count += 1
        if len(self.records) < SHOWN_NOT_OK:
            self.records.append(record)

    def more(self) -> int:
        return self.count - len(self.records)


def not_ok_note(not_ok: _FirstFew, index: Path) -> str:
    """The first few videos that were not ingested, each with its reason, and where the rest are:
    "4 errors" alone left a user to dig through the index for which files and why."""
    lines = [f"  {r['status']}: {r['source']}: {r['error']}" for r in not_ok.records]
    more = f"and {not_ok.more()} more; " if not_ok.more() else ""
    lines.append(f"  ({more}every video's status and reason is in {index})")
    return "\n".join(lines)


def short_note(short: _FirstFew) -> str:
    """The first few videos whose frames end well before the length their file declares (cut short,
    most likely), each with both lengths: a truncated mkv/webm/avi used to be ingested as far as it
    goes without a word. Their frames are kept; ``declared_s`` marks them."""
    n = short.count
    lines = [f"warning: {n} video{'s end' if n != 1 else ' ends'} well before the length "
             f"{'their files declare' if n != 1 else 'its file declares'} (cut short? the frames "
             "up to the end are kept; their index records hold \"declared_s\"):"]  # fmt: skip
    lines += [f"  {r['source']}: decoded {r['duration_s']:g} s of the {r['declared_s']:g} s declared"
              for r in short.records]  # fmt: skip
    if short.more():
        lines.append(f"  (and {short.more()} more)")
    return "\n".join(lines)


def declared_short(decoded_end_s: float, declared_s: float | None) -> bool:
    """Whether frames ending at ``decoded_end_s`` end clearly before a declared length.

    The margin is max(:data:`SHORT_MIN_S`, :data:`SHORT_FRACTION` x declared). Intact files differ
    from their declaration by far less: a frame period or two (the last frame's shown duration, a
    decoder's first frames), an audio priming delay or edit, millisecond rounding. 1 s is one sample
    at the default 1 Hz, so a video losing less is not worth a warning; 5% covers the looser
    declarations of long files (a variable-rate recording whose last frame is held for a while, a
    rate declared slightly off, timestamp drift) while a cut, a download stopped at a random byte,
    loses half the video on average."""
    if declared_s is None:
        return False
    return decoded_end_s < declared_s - max(SHORT_MIN_S, SHORT_FRACTION * declared_s)


SETTINGS_NAME = "ingest.json"  # the options that shape the data, checked when OUT is resumed


# How OUT's keys are made: from each video's name (KEYS_BY_NAME, since ingest.json recorded "keys"), or
# from its absolute path (KEYS_BY_LOCATION): folders begun that way keep it, so their resume still
# finds the videos already done.
KEYS_BY_LOCATION, KEYS_BY_NAME = 1, 2


def _saved_settings(out: Path) -> dict | None:
    path = out / SETTINGS_NAME
    try:
        saved = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        saved = None  # unreadable: rewritten by _check_same_options
    return saved if isinstance(saved, dict) else None


def _key_scheme(out: Path) -> int:
    """OUT's recorded key scheme; a folder holding videos but no record of it was begun by an older
    vivi (keys by location); an empty or new one gets keys by name."""
    scheme = (_saved_settings(out) or {}).get("keys")
    if scheme in (KEYS_BY_LOCATION, KEYS_BY_NAME):
        return scheme
    index, shards = out / INDEX_NAME, out / SHARDS_DIR
    written = (index.is_file() and index.stat().st_size > 0) or (shards.is_dir() and any(shards.iterdir()))
    return KEYS_BY_LOCATION if written else KEYS_BY_NAME


def _check_same_videos(out: Path, sources: list[Source], done: list[dict]) -> None:
    """A video whose key OUT already holds, but from another place, is taken as done: the folder was
    moved or copied (its names and sizes are the same). Said in one line, so that another folder's
    videos of the same names, ingested into OUT, are never skipped unseen; one of another size is
    refused (it is another video)."""
    held = {r["key"]: r for r in done if isinstance(r.get("key"), str)}
    moved: list[tuple[Source, dict]] = []
    for s in sources:
        r = held.get(s.key)
        if r is None or r.get("location") in (None, s.location):
            continue
        if s.size is not None and isinstance(r.get("size"), int) and r["size"] != s.size:
            raise UserError(
                f"{s.given}: {out} already holds another video of this name ({r['location']}, {r['size']} "
                f"bytes; this one {s.size}); ingest this folder into a folder of its own and train on both "
                "(--data A --data B)"
            )
        moved.append((s, r))
    if moved:
        s, r = moved[0]
        more = f" (and {len(moved) - 1} more)" if len(moved) > 1 else ""
        warn(f"{out}: {s.given} is taken as the video ingested from {r['location']}{more} (same name and size): "
             "not ingested again")  # fmt: skip


def _check_same_options(out: Path, options: Options, keys: int) -> None:
    """Resuming OUT with other sampling options would mix two kinds of data in one dataset (the JPEG
    quality too: frames of two qualities; a folder written before it was recorded is not checked)."""
    wanted = {"fps": options.fps, "short_side": options.short_side, "min_shots": options.min_shots,
              "detector": options.detector, "jpeg_quality": options.jpeg_quality}  # fmt: skip
    saved = _saved_settings(out)
    path = out / SETTINGS_NAME
    if saved is not None:
        changed = [f"{k}={saved[k]!r} (now {v!r})" for k, v in wanted.items() if k in saved and saved[k] != v]
        if changed:
            raise UserError(
                f"{out}: was ingested with {', '.join(changed)}; re-run with the same options to resume, "
                "or ingest into a new folder"
            )
    path.write_text(json.dumps(wanted | {"keys": keys}) + "\n")  # keys: OUT's scheme, recorded for its resumes


def _decode_threads(workers: int) -> int:
    """Decoding threads per worker: FFmpeg's choice (one per core, plus one) for a lone worker, else
    the cores shared out. Frame threading spends ~15% more CPU per frame than one thread (720p H.264
    on 2 cores: 1.19 vs 1.04 ms), which buys nothing once the workers keep every core busy."""
    if workers == 1:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // workers)


def _check(options: Options, workers: int, shard_max_bytes: int, timeout: float | None) -> None:
    check_detector(options.detector)  # an unknown name, or scenedetect missing: a UserError
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise UserError(f"timeout={timeout}: must be a positive, finite number of seconds")
    for name, value, low in [
        ("workers", workers, 1),
        ("fps", options.fps, 1e-6),
        ("short_side", options.short_side, 1),
        ("min_shots", options.min_shots, 1),
        ("shard_max_bytes", shard_max_bytes, 1),
        ("jpeg_quality", options.jpeg_quality, 1),
    ]:
        if not math.isfinite(value) or value < low:
            raise UserError(f"{name}={value}: must be a finite number, at least {low:g}")
    if options.jpeg_quality > 100:
        raise UserError(f"jpeg_quality={options.jpeg_quality}: must be at most 100")


_PART = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def parse_part(text: str) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with 0 <= i < N; anything else is a :class:`UserError`."""
    match = _PART.fullmatch(text)
    if not match:
        raise UserError(f"--part {text!r}: expected i/N with 0 <= i < N, e.g. 0/4")
    i, n = int(match.group(1)), int(match.group(2))
    check_part(i, n)
    return i, n


def check_part(i: int, n: int) -> None:
    if n < 1:
        raise UserError(f"--part {i}/{n}: N must be at least 1")
    if not 0 <= i < n:
        raise UserError(f"--part {i}/{n}: i must satisfy 0 <= i < N (parts are numbered 0..{n - 1})")


def select_part(sources: list[Source], i: int, n: int) -> list[Source]:
    """Part ``i`` of ``n``: the sources whose position in the listing, modulo ``n``, is ``i``.

    The listing is deterministic (a folder: sorted paths; a list file: its order, duplicates
    dropped), so every machine computes the same parts; they are disjoint and together hold
    every source exactly once. Striding (not contiguous blocks) spreads long and short videos
    that sit together in the listing over all parts.
    """
    check_part(i, n)
    return sources[i::n]


def list_sources(src: str | Path) -> list[Source]:
    """Videos named by SRC: a folder (recursive, sorted), a text list of paths/URLs, or one video."""
    return _list_sources(src)[0]


def _list_sources(src: str | Path) -> tuple[list[Source], int]:
    """:func:`list_sources`, and how many hidden video files a folder holds (skipped, but counted)."""
    src = Path(src)
    hidden = 0
    if not src.exists():
        raise UserError(f"{src}: no such file or folder")
    base = Path(".")  # what relative entries are relative to
    local = True  # a folder's files and SRC itself are files, even one named "pipe:CMD.mp4"
    if src.is_dir():  # linked folders followed; broken links kept, to become error records
        files, dotted = walk_files_and_hidden(src)
        hidden = len(_hidden_videos(dotted))
        paths = [p for p in files if p.suffix.lower() in VIDEO_EXTENSIONS]
        if not paths:
            raise UserError(f"{src}: no videos ({', '.join(VIDEO_EXTENSIONS)}) in this folder{_hidden_note(dotted)}")
        note = ignored_note([p for p in files if p.suffix.lower() not in VIDEO_EXTENSIONS], "video")
        if note:
            warn(f"{src}: {note}")
        root = Path(os.path.abspath(src)).name  # the folder's own name leads: two folders' clip.mp4 differ
        entries = [(str(p), f"{root}/{p.relative_to(src).as_posix()}") for p in paths]
    elif src.suffix.lower() in VIDEO_EXTENSIONS:
        entries = [(str(src), src.name)]
    else:
        entries, base, local = [(e, e) for e in _list_file_entries(src)], src.parent, False
    sources: dict[str, Source] = {}  # by location
    repeats: list[tuple[str, str]] = []  # (entry, the entry listed before it that names the same video)
    for given, name in entries:
        source = _source(given, name, base, local)
        if source.location in sources:
            repeats.append((given, sources[source.location].given))
        else:
            sources[source.location] = source
    if repeats:
        given, first = repeats[0]
        more = f" (and {len(repeats) - 1} more)" if len(repeats) > 1 else ""
        warn(f"{src}: {given} is the video {first} again{more} (a link or a repeated entry): each video is ingested once")
    return list(sources.values()), hidden


def _hidden_note(hidden: list[Path]) -> str:
    """"; skipped 2 hidden video files, e.g. .a.mp4 (...)", or "" where there are none."""
    videos = _hidden_videos(hidden)
    return f"; skipped {_hidden_count(len(videos))}, e.g. {videos[0].name} ({HIDDEN_NOTE})" if videos else ""


def _hidden_count(n: int) -> str:
    return f"{n} hidden video file{'s' if n != 1 else ''}"


def _hidden_videos(hidden: list[Path]) -> list[Path]:
    """The hidden files that look like videos (``.clip.mp4``); ``._clip.mp4`` is no video but the
    macOS metadata (AppleDouble) copied beside every clip on a non-Mac disk, and is not counted."""
    return [p for p in hidden if p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith("._")]


def _list_file_entries(path: Path) -> list[str]:
    """A list's lines, read as UTF-8 whatever the locale; a byte-order mark (Windows editors
    write one) would otherwise become part of the first path, or turn a comment into a path.

    A path that is not UTF-8 (a Latin-1 name from an old disk, as `vivi curate` writes it back) keeps
    its bytes (``surrogateescape``, as Python names such files), rather than refusing the whole list;
    a file with NUL bytes (UTF-16, a binary file) is no list."""
    try:
        text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
        if "\x00" in text:
            raise UnicodeDecodeError("utf-8", b"\x00", 0, 1, "a NUL byte: UTF-16 or not text")
        lines = text.splitlines()
    except (OSError, UnicodeDecodeError) as e:
        hint = "" if not isinstance(e, UnicodeDecodeError) else (
            f"; a list is UTF-8 text, one video per line; a video needs one of the extensions {' '.join(VIDEO_EXTENSIONS)}"
        )
        raise UserError(f"{path}: not a readable text list of videos ({e.__class__.__name__}){hint}") from None
    entries = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not entries:
        raise UserError(f"{path}: the list names no videos")
    return entries


def _source(given: str, name: str, base: Path, local: bool = False) -> Source:
    """Resolve a path against the list's folder (URLs stay as they are, unless ``local``: a file
    found in a folder is never a URL or a shell command) and derive its key from ``name``."""
    remote = not local and is_remote(given)
    location = given if remote else _resolved(base / given)
    size = None
    if not remote:
        with contextlib.suppress(OSError):
            size = os.stat(location).st_size
    return Source(given, location, source_key(name), size)


def _resolved(path: Path) -> str:
    """The absolute path with links resolved; a link loop (``a.mp4 -> b.mp4 -> a.mp4``) stops
    resolving rather than the whole listing (it becomes the video's error record)."""
    try:
        return str(path.resolve())
    except (OSError, RuntimeError):  # RuntimeError("Symlink loop ...") before Python 3.13
        return os.path.abspath(path)


def source_key(name: str) -> str:
    """Deterministic shard key: a readable sanitized stem plus a hash of the whole name (see
    :class:`Source`; in folders begun by an older vivi, the video's location).

    A file name that is not UTF-8 (Latin-1 names from an old archive or disk) reaches Python
    with its odd bytes as surrogates; they are hashed as those original bytes rather than
    stopping the whole listing with a UnicodeEncodeError."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(name.split("?")[0]).stem)[:40] or "video"
    digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{stem}-{digest}"


def _results(
    sources: list[Source], options: Options, workers: int, timeout: float | None, isolate: bool
) -> Iterator[VideoResult]:
    """Process videos in order in this process, or in crash-isolated worker processes."""
    if not isolate:
        yield from (process_video(s, options) for s in sources)
        return
    for source, outcome in isolated_map(partial(process_video, options=options), sources, workers, timeout):
        if isinstance(outcome, Failure):
            if options.spool_dir:  # what the lost worker had spooled
                _spool_path(options, source).unlink(missing_ok=True)
            outcome = VideoResult(_record(source, "error", outcome.reason))
        yield outcome


def process_video(source: Source, options: Options) -> VideoResult:
    """Decode, detect shots, keep frames: one video to its record and JPEGs (runs in workers)."""
    from vivi.data.video import VideoError  # decoding modules load in workers only (start-up time)

    _injected_fault(source)
    report = _ProgressFile(_progress_path(options, source.key)) if options.spool_dir else None
    try:
        with _openable(source, options) as location:
            return _process(source, location, options, report)
    except VideoError as e:
        return VideoResult(_record(source, "error", str(e) + _stream_hint(source.location, str(e))))
    finally:
        if report is not None:
            report.close()  # the file stays until the main process has counted the video


def _stream_hint(location: str, error: str) -> str:
    """Why an http(s) URL that FFmpeg read itself may fail with a bare I/O error: it seeks within the
    file (an mp4's index often sits at its end), which a server without range requests (Python's
    ``http.server``, some CDNs' signed URLs) cannot serve."""
    if location.split("://", 1)[0].lower() not in ("http", "https") or "Input/output error" not in error:
        return ""
    return "; if the server does not allow range requests, list it as a pipe:curl -sL URL line (read whole)"


PIPE = "pipe:"  # webdataset's convention: "pipe:CMD" is what the shell command CMD writes to stdout
FFMPEG_SCHEMES = ("http", "https", "ftp", "rtmp", "rtsp")  # URLs FFmpeg reads itself, as a stream


def is_remote(location: str) -> bool:
    """A URL or a ``pipe:`` command rather than a local path."""
    return location.startswith(PIPE) or "://" in location


@contextlib.contextmanager
def _openable(source: Source, options: Options) -> Iterator[str]:
    """A location FFmpeg can open: a local path or an http(s)/ftp/rtmp/rtsp URL as it is; what a
    ``pipe:`` command prints or another URL holds (``s3://``, ``gs://``: any fsspec URL) copied to a
    temporary file first, because an MP4's index may sit at its end and needs a seekable file."""

    location = source.location
    if not is_remote(location):
        _check_regular_file(location)
        yield location
        return
    if not location.startswith(PIPE) and location.split("://", 1)[0].lower() in FFMPEG_SCHEMES:
        yield location
        return
    spool = Path(options.spool_dir) if options.spool_dir else None
    if spool is not None:
        spool.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{source.key}.", suffix=".video", dir=spool)
    try:
        with os.fdopen(fd, "wb") as out:
            _fetch(location, out)
        yield tmp
    finally:
        Path(tmp).unlink(missing_ok=True)


_NOT_REGULAR = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
                (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))  # fmt: skip


def _check_regular_file(location: str) -> None:
    """A local video must be a regular file: FFmpeg waits forever on a named pipe with no writer
    (one named ``x.mp4`` in a folder stopped the whole run), and a link loop is no file at all."""
    from vivi.data.video import VideoError

    try:
        mode = os.stat(location).st_mode
    except FileNotFoundError:  # where it was looked for: a list's relative line, a link's target
        raise VideoError(f"no such file: {location}") from None
    except OSError as e:
        loop = " (a symbolic link loop)" if e.errno == errno.ELOOP else ""
        raise VideoError(f"cannot open: {e.strerror or e}{loop}") from None
    kind = next((name for test, name in _NOT_REGULAR if test(mode)), None)
    if kind is not None:
        hint = "" if kind == "a folder" else "; a stream goes in a list file as a pipe:CMD line"
        raise VideoError(f"not a regular file but {kind}{hint}")


def _fetch(location: str, out: BinaryIO) -> None:
    """Write the bytes of a ``pipe:`` command's output or of an fsspec URL to ``out``."""
    from vivi.data.video import VideoError

    if location.startswith(PIPE):
        run = subprocess.run(location[len(PIPE):], shell=True, stdout=out, stderr=subprocess.PIPE, check=False)
        if run.returncode:
            said = run.stderr.decode(errors="replace").strip().splitlines()
            raise VideoError(f"pipe command exited with status {run.returncode}" + (f": {said[-1]}" if said else ""))
        return
    from vivi.data.remote import open_file, read_failed, reason

    try:
        with open_file(location) as f:
            shutil.copyfileobj(f, out, 1 << 20)
    except UserError as e:  # an unknown protocol, or a missing fsspec backend: the package to install
        raise VideoError(f"cannot read: {str(e).removeprefix(f'{location}: ')}") from None
    except Exception as e:
        if not read_failed(location, e):
            raise
        raise VideoError(f"cannot read: {reason(e)}") from None


def _spool_path(options: Options, source: Source) -> Path:
    return Path(options.spool_dir) / f"{source.key}.jpgs"


def _injected_fault(source: Source) -> None:
    """The test hook of :data:`FAULT_ENV`: die or hang on one named file."""
    kind, _, name = os.environ.get(FAULT_ENV, "").partition(":")
    if name and Path(source.location).name == name:
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif kind == "hang":
            time.sleep(3600)


def _record(source: Source, status: str, error: str | None = None, **fields: object) -> dict:
    base = dict(fps=None, num_frames=0, duration_s=None, width=None, height=None, decode_errors=0, shots=[])
    # "location": the absolute path (or URL) opened; "source" is relative to wherever the user ran
    # the command or kept the list, so a list of sources made later (vivi curate) needs this one
    return {"source": source.given, "location": source.location, "key": source.key, "size": source.size,
            "status": status, "error": error, **(base | fields)}  # fmt: skip


@dataclass(frozen=True)
class _Sample:
    """A kept frame: its index, time and JPEG bytes."""

    frame: int
    t: float
    jpeg: bytes | tuple[int, int]  # the bytes, or their (offset, length) in the spool file


@dataclass
class _Pass:
    """What one decode pass learns about a video."""

    fps: float
    size: tuple[int, int]  # displayed width, height
    times: array[float]  # of every decoded frame (8 bytes each: long videos stay small)
    samples: list[_Sample]
    shots: list[Shot]
    decode_errors: int = 0  # packets skipped because the decoder rejected them
    spool: str = ""  # the file holding the samples' JPEGs, if spooled
    declared_s: float | None = None  # the video's length as its file declares it, if it does
    last_shown_s: float = 0.0  # how long the last frame is shown, where its packet says so
    start_s: float = 0.0  # the first frame's own timestamp (s); declared lengths count from 0
    # every frame size the stream had, as shown, where it changed midway (``size`` is the first;
    # every image was made at that size, see :meth:`vivi.data.video.Video._fit`)
    sizes: list[tuple[int, int]] = field(default_factory=list)

    @property
    def end_s(self) -> float:
        """When the last decoded frame stops showing, on the file's clock (declared lengths count
        from its 0, not from the first frame): a screen recording may hold its last frame for
        seconds, which :attr:`duration`'s one frame period leaves out."""
        return max(self.start_s, 0.0) + self.times[-1] + max(1 / self.fps, self.last_shown_s)

    @property
    def duration(self) -> float:
        return self.times[-1] + 1 / self.fps


Progress = Callable[[float, int], None]  # (seconds of video decoded, frames decoded) within one video


def _process(source: Source, location: str, options: Options, on_progress: Progress | None = None) -> VideoResult:
    decoded = _decode(source, location, options, on_progress)
    meta = dict(
        fps=round(decoded.fps, 3), num_frames=len(decoded.times), duration_s=round(decoded.duration, 3),
        width=decoded.size[0], height=decoded.size[1], decode_errors=decoded.decode_errors,
    )
    if declared_short(decoded.end_s, decoded.declared_s):
        meta["declared_s"] = round(decoded.declared_s, 3)  # type: ignore[arg-type]
    if len(decoded.sizes) > 1:  # width and height are the first size, which every stored frame has
        meta["frame_sizes"] = [list(size) for size in decoded.sizes]
    shots, images = _assign(source.key, decoded)
    if len(shots) < options.min_shots:
        if isinstance(images, SpooledImages):
            images.discard()
        reason = f"{len(shots)} shots with kept frames, fewer than min_shots={options.min_shots}"
        if not shots:  # say why, e.g. for a clip shorter than any shot can be
            reason += f" ({_no_shot_reason(decoded, options.fps)})"
        return VideoResult(_record(source, "skipped", reason, **meta), frames_decoded=len(decoded.times))
    return VideoResult(_record(source, "ok", **meta, shots=shots), images, len(decoded.times))


def _no_shot_reason(decoded: _Pass, fps: float) -> str:
    """Why no shot kept a frame: "the video lasts 4.00 s" alone misleads for a long all-black
    video or one that cuts every few frames."""
    if decoded.duration < MIN_SHOT_S:
        return f"the video lasts {decoded.duration:.2f} s; a shot lasts at least {MIN_SHOT_S:g} s"
    if not decoded.shots:
        return f"no stretch of {MIN_SHOT_S:g} s without a cut, a transition or black frames"
    return f"no frame sampled at --fps {fps:g} falls inside its {len(decoded.shots)} shot(s)"


def _decode(source: Source, location: str, options: Options, on_progress: Progress | None = None) -> _Pass:
    """The one pass: every frame feeds the shot detector as a small image made straight from
    the decoded YUV frame; only frames on the fps grid are converted at sample size, to JPEG.
    ``on_progress`` hears how far the pass is, once per :data:`PROGRESS_STEP_S` of video."""
    from vivi.data.video import Video, VideoError

    times: array[float] = array("d")
    samples: list[_Sample] = []
    next_t = 0.0
    next_report = PROGRESS_STEP_S
    size: tuple[int, int] | None = None
    spool = JpegSpool(_spool_path(options, source)) if options.spool_dir else None
    try:
        with Video(location, options.decode_threads) as video:
            detector = _RateCheckedDetector(options.detector, video.fps)
            width = 0
            for frame in video.frames():
                if size is None:
                    size, width = video.display_size(frame), detector.width(frame.raw.width, frame.raw.height)
                times.append(frame.t)
                detector.push(video.thumbnail(frame, width, detector.pixel_format), frame.t)
                if frame.t >= next_t - 1e-6:  # the first frame at or after each grid time k / fps
                    jpeg = _jpeg(video.upright_rgb(frame, options.short_side), options.jpeg_quality)
                    samples.append(_Sample(frame.index, frame.t, spool.append(jpeg) if spool else jpeg))
                    next_t = (math.floor(frame.t * options.fps + 1e-6) + 1) / options.fps
                if on_progress is not None and frame.t >= next_report:
                    on_progress(frame.t, len(times))
                    next_report = (math.floor(frame.t / PROGRESS_STEP_S) + 1) * PROGRESS_STEP_S
    except BaseException:
        if spool:
            spool.close()
            spool.path.unlink(missing_ok=True)
        raise
    if spool:
        spool.close()
    if size is None:
        if spool:
            spool.path.unlink(missing_ok=True)
        errors = f" ({video.decode_errors} packets failed to decode: {video.last_error})" if video.decode_errors else ""
        raise VideoError(f"no decodable video frames{errors}")
    shots = detector.shots()
    if video.decode_errors:  # frames lost to damage: a long step between two frames may hide shots never seen
        shots = split_at_gaps(shots, times, detector.fps)
    return _Pass(detector.fps, size, times, samples, shots, video.decode_errors, str(spool.path) if spool else "",
                 video.declared_s, _shown_seconds(frame.raw), video.start_s or 0.0, video.shown_sizes(frame))


def _shown_seconds(raw: object) -> float:
    """How long a decoded frame is shown, from its packet's duration; 0 where that is unknown."""
    duration, time_base = getattr(raw, "duration", None), getattr(raw, "time_base", None)
    return float(duration * time_base) if duration and duration > 0 and time_base else 0.0


class _RateCheckedDetector:
    """The ``--detector`` for one video, made at the frame rate its first frames' timestamps show
    when the declared rate is far off (:func:`vivi.data.video.measured_fps`): detectors count
    their durations (window, minimum shot, transitions) in frames. Their small images wait until
    ``RATE_PROBE_FRAMES`` timestamps are known (a few MB at most), then go in in order."""

    def __init__(self, name: str, declared_fps: float) -> None:
        from vivi.data.video import RATE_PROBE_FRAMES

        self._name = name
        self._probe_frames = RATE_PROBE_FRAMES
        self.fps = declared_fps  # the rate the detector uses, once :meth:`shots` is called
        self._detector = make_frame_detector(name, declared_fps)
        self.pixel_format = self._detector.pixel_format  # as width(): not a matter of the rate
        self._waiting: list[np.ndarray] | None = []  # None once the detector is settled
        self._times: list[float] = []

    def width(self, frame_width: int, frame_height: int) -> int:
        return self._detector.width(frame_width, frame_height)

    def push(self, image: np.ndarray, t: float) -> None:
        """Account for the next frame in decode order, shown at ``t`` seconds."""
        if self._waiting is None:
            self._detector.push(image)
            return
        self._waiting.append(image)
        self._times.append(t)
        if len(self._waiting) >= self._probe_frames:
            self._settle()

    def shots(self) -> list[Shot]:
        if self._waiting is not None:
            self._settle()
        return self._detector.shots()

    def _settle(self) -> None:
        from vivi.data.video import measured_fps

        fps = measured_fps(self.fps, self._times)
        if fps != self.fps:
            self.fps, self._detector = fps, make_frame_detector(self._name, fps)
        waiting, self._waiting = self._waiting or [], None
        for image in waiting:
            self._detector.push(image)


def _assign(key: str, decoded: _Pass) -> tuple[list[dict], Images]:
    """Index entries for the shots that received kept frames, and those frames' named JPEGs."""
    times, samples = decoded.times, decoded.samples
    sample_frames = [s.frame for s in samples]
    entries: list[dict] = []
    names: list[str] = []
    kept: list[_Sample] = []
    for shot in decoded.shots:
        lo, hi = bisect_left(sample_frames, shot.start_frame), bisect_right(sample_frames, shot.end_frame)
        if lo == hi:
            continue
        end_s = _end_time(decoded, shot.end_frame)
        entries.append({
            "start_frame": shot.start_frame, "end_frame": shot.end_frame,
            "start_s": round(times[shot.start_frame], 3), "end_s": round(end_s, 3),
            "frames": [{"frame": s.frame, "t": round(s.t, 3)} for s in samples[lo:hi]],
        })
        names += [image_name(key, len(entries) - 1, i) for i in range(hi - lo)]
        kept += samples[lo:hi]
    if decoded.spool:
        return entries, SpooledImages(decoded.spool, names, [s.jpeg for s in kept])  # type: ignore[misc]
    return entries, [(name, s.jpeg) for name, s in zip(names, kept)]  # type: ignore[misc]


def _end_time(decoded: _Pass, frame: int) -> float:
    """When a shot ending at ``frame`` ends: the next frame's time (a frame shows until the next
    one: a variable-rate screen recording holds a still picture for seconds), or one frame period
    after it where the video ends or, in a damaged video, frames were lost (see
    :func:`vivi.data.shots.split_at_gaps`)."""
    times, t = decoded.times, decoded.times[frame]
    if frame + 1 < len(times) and not (decoded.decode_errors and times[frame + 1] - t > max_step_s(decoded.fps)):
        return times[frame + 1]
    return t + 1 / decoded.fps


def _jpeg(rgb: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
