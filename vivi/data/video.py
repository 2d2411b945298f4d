"""Decode a video once with PyAV: frames in presentation order with their timestamps.

Ingest looks at every frame twice at most: a tiny RGB thumbnail for shot detection and,
for the few frames it keeps, an RGB image resized to a short side. Both are scaled by
FFmpeg's swscale straight from the decoded YUV frame, so no full-size RGB copy is made.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter

DEFAULT_FPS = 25.0  # assumed when a stream declares no frame rate at all
# libavformat's AVFMT_NOTIMESTAMPS: a container without timestamps of its own (a raw .h264, .hevc
# or .m4v elementary stream); its demuxer declares an average rate of 25 fps whatever the video says
AVFMT_NOTIMESTAMPS = 0x0080
RATE_PROBE_FRAMES = 32  # frames whose timestamps :func:`measured_fps` looks at
RATE_MISMATCH = 2.0  # a declared rate this many times off the timestamps' is not the frame rate


class VideoError(Exception):
    """A file that cannot be read as a video; the message is a one-line reason."""


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its index in the decoded sequence and its time from the first frame."""

    index: int
    t: float
    raw: av.VideoFrame


class Video:
    """An open video file; use as a context manager and iterate :meth:`frames` once."""

    def __init__(self, location: str, threads: int = 0) -> None:
        """``threads``: decoding threads; 0 lets FFmpeg choose (one per core, plus one)."""
        if "://" not in location and os.path.isfile(location) and os.path.getsize(location) == 0:
            raise VideoError("empty file (0 bytes)")
        try:
            self._container = av.open(location)
        except av.error.FFmpegError as e:
            raise VideoError(f"cannot open: {_reason(e)}") from None
        if not self._container.streams.video:
            self._container.close()
            raise VideoError("no video stream")
        image = _still_image_format(self._container.format.name)
        if image:  # a photo named .mp4 read as a 0.04 s video was "skipped" as too short for a shot
            self._container.close()
            raise VideoError(f"a still image ({image}), not a video")
        # FFmpeg's choice (av_find_best_stream), not the first: a cover picture or thumbnail
        # (web downloads embed one) may come first and is a single frame
        self._stream = self._container.streams.best("video") or self._container.streams.video[0]
        # Frame + slice threading. Ingest asks for 1 thread per worker once workers fill the cores:
        # frame threading costs ~10% more CPU per frame, which a busy machine cannot spare
        # (benchmarks/results/ingest/README.md).
        self._stream.thread_type = "AUTO"
        self._stream.thread_count = threads
        self.fps = _nominal_fps(self._stream, _has_timestamps(self._container))
        self.sample_aspect = _sample_aspect(self._stream)
        self.decode_errors = 0  # packets the decoder rejected (see :meth:`frames`)
        self.last_error: str | None = None
        # how long the file says its video lasts, where it says so (see :func:`declared_seconds`)
        self.declared_s = declared_seconds(self._container, self._stream)
        self.start_s: float | None = None  # the first decoded frame's own timestamp, in seconds
        # every coded frame size seen, in order (width, height); the first sets the images' sizes,
        # see :meth:`_fit`. More than one: the stream changed size midway (joined captures, a
        # broadcast or adaptive stream switching resolution)
        self.coded_sizes: list[tuple[int, int]] = []
        # One scaler per output size: PyAV caches the swscale context between calls.
        self._thumbnails = VideoReformatter()
        self._samples = VideoReformatter()

    def __enter__(self) -> Video:
        return self

    def __exit__(self, *exc: object) -> None:
        self._container.close()

    def frames(self) -> Iterator[Frame]:
        """Yield every decodable frame once; times come from pts so variable frame rates stay right.

        Packets are decoded one by one so a corrupt region costs only its own frames: a packet
        the decoder rejects is counted in :attr:`decode_errors` and skipped. A demuxer error
        (the container itself is broken from there on) ends the video early, also counted.

        Times never go backwards: where the timestamps restart (MPEG-TS files joined with
        ``cat``, a recorder's clock reset), the frames after the restart continue one frame
        period after the last frame. Otherwise every frame past it would lie before the next
        sampling time, and the rest of the video would silently yield no samples.

        A frame's time is FFmpeg's "best effort" timestamp (``guess_correct_pts``, what ``ffmpeg``
        and players use): its pts, unless pts have gone backwards more often than the decoding
        timestamps, then its dts. AVI stores no presentation times: H.264 with B-frames there
        comes out in display order with pts shuffled (1, 4, 3, 5, 2, ...), and each step back was
        taken for a restart, stretching a 36 s video to 62 s and sampling it ~1.7 times too often.
        """
        first: dict[str, int] = {}  # the first pts and the first dts seen
        faulty = {"pts": 0, "dts": 0}  # how often each went backwards (or stood still)
        last_ts: dict[str, int] = {}
        offset = 0.0  # added after a timestamp restart, so times keep increasing
        last_t = -math.inf
        last_kind: str | None = None
        index = 0
        for raw in self._decoded():
            stamps = {"pts": raw.pts, "dts": raw.dts}
            for kind, other in (("pts", "dts"), ("dts", "pts")):
                value = stamps[kind] if stamps[kind] is not None else stamps[other]
                if stamps[kind] is not None:
                    first.setdefault(kind, stamps[kind])
                    faulty[kind] += kind in last_ts and stamps[kind] <= last_ts[kind]
                if value is not None:
                    last_ts[kind] = value
            pts_trusted = faulty["pts"] <= faulty["dts"]
            kind = "pts" if stamps["pts"] is not None and (pts_trusted or stamps["dts"] is None) else "dts"
            kind = kind if stamps[kind] is not None else None
            time_base = raw.time_base
            if not pts_trusted and stamps["dts"] is None and last_kind == "dts":
                # the frames flushed from the decoder at the end carry no dts, and their pts are
                # the shuffled ones: each shows one frame period after the last
                kind, t = "dts", last_t - offset + 1 / self.fps
            elif kind is None or time_base is None:
                t = index / self.fps
            else:
                # = float((ts - first ts) * time_base): integer true division rounds correctly
                # too, without making a Fraction per frame
                t = (stamps[kind] - first[kind]) * time_base.numerator / time_base.denominator
            if t + offset < last_t:
                if kind == last_kind:  # a restart
                    offset = last_t + 1 / self.fps - t
                else:  # pts and dts differ by the decoder's delay: a switch between them is no restart
                    t = last_t - offset
            t += offset
            last_t, last_kind = t, kind
            if index == 0 and kind is not None and time_base is not None:
                self.start_s = float(stamps[kind] * time_base)
            if not self.coded_sizes or (raw.width, raw.height) != self.coded_sizes[-1]:
                if (raw.width, raw.height) not in self.coded_sizes:
                    self.coded_sizes.append((raw.width, raw.height))
            yield Frame(index, t, raw)
            index += 1

    def _decoded(self) -> Iterator[av.VideoFrame]:
        packets = self._container.demux(self._stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.FFmpegError as e:
                self._note_error(e)
                return
            try:
                frames = packet.decode()
            except av.error.FFmpegError as e:
                self._note_error(e)
                continue
            yield from frames

    def _note_error(self, error: av.error.FFmpegError) -> None:
        self.decode_errors += 1
        self.last_error = _reason(error)

    def thumbnail(self, frame: Frame, width: int, pixel_format: str = "rgb24") -> np.ndarray:
        """A small array (``width`` wide, aspect kept, ``rgb24`` or ``bgr24``) for shot detection;
        rotation is ignored."""
        coded_width, coded_height = self._first_size(frame.raw)
        height = max(1, round(coded_height * width / max(coded_width, 1)))
        # Fast bilinear samples sparsely when shrinking a lot; colour histograms barely notice,
        # and it is ~50x cheaper than area averaging on HD frames (which would rival decoding).
        return self._fit(self._thumbnails, frame.raw, width, height, "FAST_BILINEAR", pixel_format)

    def upright_rgb(self, frame: Frame, short_side: int) -> np.ndarray:
        """RGB array with its short side at most ``short_side`` (never upscaled), as it is shown:
        non-square pixels made square (see :meth:`display_size`) and rotated for display."""
        coded_width, coded_height = self._first_size(frame.raw)
        shown_width = coded_width * self.sample_aspect
        scale = min(1.0, short_side / min(shown_width, coded_height))
        width, height = max(1, round(shown_width * scale)), max(1, round(coded_height * scale))
        rgb = self._fit(self._samples, frame.raw, width, height, "AREA")
        k = rotation(frame) // 90
        return np.ascontiguousarray(np.rot90(rgb, k=k)) if k else rgb

    def shown_sizes(self, frame: Frame) -> list[tuple[int, int]]:
        """:attr:`coded_sizes` as shown (see :meth:`display_size`), turned as ``frame`` is."""
        sizes = [(max(1, round(w * self.sample_aspect)), h) for w, h in self.coded_sizes]
        return [(h, w) for w, h in sizes] if rotation(frame) % 180 else sizes

    def display_size(self, frame: Frame) -> tuple[int, int]:
        """Width and height as the frame is shown: :func:`display_size` with this stream's pixel shape."""
        return display_size(frame, self.sample_aspect)

    def _first_size(self, raw: av.VideoFrame) -> tuple[int, int]:
        """The coded size of the stream's first frame, which sets every image's size."""
        return self.coded_sizes[0] if self.coded_sizes else (raw.width, raw.height)

    def _fit(
        self, scaler: VideoReformatter, raw: av.VideoFrame, width: int, height: int, interpolation: str,
        pixel_format: str = "rgb24",
    ) -> np.ndarray:
        """``raw`` at ``width`` x ``height``. A frame of another size than the first (the stream changed
        size midway) is scaled to cover that size, its aspect kept, and centre-cropped: its images
        came out at their own size and shape, so one video's stored frames disagreed with each other
        and with the record's width and height. Cropping, not stretching: the loader centre-crops too."""
        if (raw.width, raw.height) == self._first_size(raw):
            return self._scale(scaler, raw, width, height, interpolation, pixel_format)
        shown_width = raw.width * self.sample_aspect
        scale = max(width / shown_width, height / raw.height)
        cover_w, cover_h = max(width, round(shown_width * scale)), max(height, round(raw.height * scale))
        image = self._scale(scaler, raw, cover_w, cover_h, interpolation, pixel_format)
        top, left = (cover_h - height) // 2, (cover_w - width) // 2
        return np.ascontiguousarray(image[top : top + height, left : left + width])

    @staticmethod
    def _scale(
        scaler: VideoReformatter, raw: av.VideoFrame, width: int, height: int, interpolation: str,
        pixel_format: str = "rgb24",
    ) -> np.ndarray:
        # threads=1: parallelism comes from ingest workers; threaded swscale setup costs more here.
        out = scaler.reformat(
            raw, width=width, height=height, format=pixel_format, interpolation=interpolation, threads=1
        )
        return out.to_ndarray()


def rotation(frame: Frame) -> int:
    """Counterclockwise display rotation (phone videos), snapped to a multiple of 90 degrees."""
    return round(frame.raw.rotation / 90) * 90 % 360


def display_size(frame: Frame, sample_aspect: Fraction | int = 1) -> tuple[int, int]:
    """Width and height as the frame is shown: its width times the pixels' aspect ratio
    (``sample_aspect``), then its display rotation."""
    w, h = max(1, round(frame.raw.width * sample_aspect)), frame.raw.height
    return (h, w) if rotation(frame) % 180 else (w, h)


def _sample_aspect(stream: av.video.stream.VideoStream) -> Fraction | int:
    """The shape of the stream's pixels (width / height), 1 where they are square or it says nothing.

    Anamorphic video stores a wide picture in fewer columns: DVD 720x480 at 32:27 shows as
    853x480 (16:9), HDV 1440x1080 at 4:3 as 1920x1080. Taken as square pixels, every frame was
    squashed sideways (a circle an upright ellipse) and the record gave the coded size. Ratios
    beyond 8:1 either way are taken for damage, not for a picture's shape."""
    ratio = stream.sample_aspect_ratio  # FFmpeg's guess: the container's, else the codec's
    if not ratio or ratio == 1 or not Fraction(1, 8) <= ratio <= 8:
        return 1
    return Fraction(ratio)


def _nominal_fps(stream: av.video.stream.VideoStream, timestamps: bool = True) -> float:
    """The declared frame rate (average, else guessed, else DEFAULT_FPS). Without container
    timestamps the average is the raw demuxer's default of 25 fps, not the video's: the guessed
    rate, which comes from the bitstream's own timing (an SPS, a VOL header), goes first then."""
    rates = (stream.average_rate, stream.guessed_rate) if timestamps else (stream.guessed_rate, stream.average_rate)
    rate = next((r for r in rates if r), None)
    return float(rate) if rate else DEFAULT_FPS


def measured_fps(declared: float, times: Sequence[float]) -> float:
    """The frame rate to use: the declared one, unless the timestamps of the first frames
    (``times``, about :data:`RATE_PROBE_FRAMES` of them) space frames more than
    :data:`RATE_MISMATCH` times closer or farther apart, then the rate they show (one over the
    median step between distinct times, so a gap or a repeated timestamp does not sway it).

    Muxers often declare a time base rather than a rate: browser MediaRecorder WebMs say 1000 fps
    ("1k tbr") for 30 frames a second, which turned the detector's 1 s minimum shot into 1000
    frames and skipped good videos. Small disagreements (29.97 vs 30, a variable rate's average)
    keep the declared rate, so ordinary videos are measured in the frames they always were.
    """
    steps = sorted(b - a for a, b in zip(times, times[1:]) if b > a)
    if not steps:
        return declared
    rate = 1.0 / steps[len(steps) // 2]
    return rate if max(rate / declared, declared / rate) > RATE_MISMATCH else declared


# Containers whose duration FFmpeg measures from the file's own last timestamps (MPEG program and
# transport streams) rather than reads from a header: a file cut short measures as long as it is,
# and a live capture or joined files (timestamp restarts) measure wrong, so nothing is declared.
_MEASURED_DURATION = ("mpeg", "mpegts", "mpegtsraw")


def declared_seconds(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    """How long the file says its video stream lasts, from a header its muxer wrote when it finished
    the file, or None where it says nothing of the video's own length.

    Read per container, because the generic ``container.duration`` covers every stream (an mkv
    whose audio runs on after the picture ends is no damaged video) and for some formats is no
    declaration at all but a measurement or a guess:

    - Matroska/WebM: the video track's ``DURATION`` tag (FFmpeg and mkvmerge write one), else the
      segment's duration where the video is the only stream. Live WebMs (browser MediaRecorder)
      declare nothing.
    - AVI: the stream header's frame count (``dwLength``) times the frame period.
    - MP4/MOV: the track's own duration (``mdhd``, after its edit list). A file whose index sits
      at its end cannot be opened when cut short, but a "fast start" one (index first) can.
    - Other containers with timestamps (FLV, ASF, ...): the container's duration where the video
      is the only stream, unless FFmpeg measured it from the file's end (MPEG-PS/TS, see
      :data:`_MEASURED_DURATION`). Raw elementary streams declare nothing (FFmpeg's duration for
      them is a guess from the file size).
    """
    name = container.format.name
    if name in _MEASURED_DURATION or not _has_timestamps(container):
        return None
    time_base = stream.time_base
    alone = len(container.streams) == 1
    seconds: float | None = None
    if name == "avi":
        if stream.frames > 0 and time_base:
            seconds = float(stream.frames * time_base)
    elif name.startswith("matroska"):
        seconds = _clock_seconds(stream.metadata.get("DURATION") or stream.metadata.get("duration") or "")
        if seconds is None and alone and container.duration is not None:
            seconds = container.duration / av.time_base
    elif name.startswith("mov,"):
        if stream.duration is not None and time_base:
            seconds = float(stream.duration * time_base)
    elif alone and container.duration is not None:
        seconds = container.duration / av.time_base
    return seconds if seconds is not None and math.isfinite(seconds) and seconds > 0 else None


def _clock_seconds(text: str) -> float | None:
    """``"01:02:03.5"`` (Matroska's duration tags) in seconds; None if it is not such a time."""
    parts = text.strip().split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        return None
    if not 1 <= len(values) <= 3 or any(v < 0 for v in values):
        return None
    return sum(v * 60**i for i, v in enumerate(reversed(values)))


def _still_image_format(name: str) -> str | None:
    """The image type when FFmpeg reads the file as one still picture (its image demuxers: ``image2``
    and ``jpeg_pipe``, ``png_pipe``, ...), else None. ``gif_pipe`` is left alone: GIFs animate."""
    if name == "image2":
        return "image"
    if name.endswith("_pipe") and name != "gif_pipe":
        return name.removesuffix("_pipe").upper()
    return None


def _has_timestamps(container: av.container.InputContainer) -> bool:
    """Whether the container format stores timestamps (not a raw elementary stream)."""
    return not int(container.format.flags) & AVFMT_NOTIMESTAMPS


def _reason(error: av.error.FFmpegError) -> str:
    """FFmpeg's message without the file name PyAV appends (the index already names the file)."""
    message = error.strerror or str(error)
    return " ".join(str(message).split())
