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
        # FFmpeg's choice (av_find_best_stream), not the first: a cover picture or thumbnail
        # (web downloads embed one) may come first and is a single frame
        self._stream = self._container.streams.best("video") or self._container.streams.video[0]
        # Frame + slice threading. Ingest asks for 1 thread per worker once workers fill the cores:
        # frame threading costs ~10% more CPU per frame, which a busy machine cannot spare
        # (benchmarks/results/ingest/README.md).
        self._stream.thread_type = "AUTO"
        self._stream.thread_count = threads
        self.fps = _nominal_fps(self._stream, _has_timestamps(self._container))
        self.decode_errors = 0  # packets the decoder rejected (see :meth:`frames`)
        self.last_error: str | None = None
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
        """
        first_pts: int | None = None
        offset = 0.0  # added after a timestamp restart, so times keep increasing
        last_t = -math.inf
        index = 0
        for raw in self._decoded():
            pts, time_base = raw.pts, raw.time_base
            if pts is None or time_base is None:
                t = index / self.fps
            else:
                first_pts = pts if first_pts is None else first_pts
                # = float((pts - first_pts) * time_base): integer true division rounds correctly
                # too, without making a Fraction per frame
                t = (pts - first_pts) * time_base.numerator / time_base.denominator
            if t + offset < last_t:
                offset = last_t + 1 / self.fps - t
            t += offset
            last_t = t
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
        raw = frame.raw
        height = max(1, round(raw.height * width / max(raw.width, 1)))
        # Fast bilinear samples sparsely when shrinking a lot; colour histograms barely notice,
        # and it is ~50x cheaper than area averaging on HD frames (which would rival decoding).
        return self._scale(self._thumbnails, raw, width, height, "FAST_BILINEAR", pixel_format)

    def upright_rgb(self, frame: Frame, short_side: int) -> np.ndarray:
        """RGB array with its short side at most ``short_side`` (never upscaled), rotated for display."""
        raw = frame.raw
        scale = min(1.0, short_side / min(raw.width, raw.height))
        width, height = max(1, round(raw.width * scale)), max(1, round(raw.height * scale))
        rgb = self._scale(self._samples, raw, width, height, "AREA")
        k = rotation(frame) // 90
        return np.ascontiguousarray(np.rot90(rgb, k=k)) if k else rgb

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


def display_size(frame: Frame) -> tuple[int, int]:
    """Width and height as the frame is shown, i.e. after its display rotation."""
    w, h = frame.raw.width, frame.raw.height
    return (h, w) if rotation(frame) % 180 else (w, h)


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


def _has_timestamps(container: av.container.InputContainer) -> bool:
    """Whether the container format stores timestamps (not a raw elementary stream)."""
    return not int(container.format.flags) & AVFMT_NOTIMESTAMPS


def _reason(error: av.error.FFmpegError) -> str:
    """FFmpeg's message without the file name PyAV appends (the index already names the file)."""
    message = error.strerror or str(error)
    return " ".join(str(message).split())
