"""Decode a video once with PyAV: frames in presentation order with their timestamps.

Ingest looks at every frame twice at most: a tiny RGB thumbnail for shot detection and,
for the few frames it keeps, an RGB image resized to a short side. Both are scaled by
FFmpeg's swscale straight from the decoded YUV frame, so no full-size RGB copy is made.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np
from av.video.reformatter import VideoReformatter

DEFAULT_FPS = 25.0  # assumed when a stream declares no frame rate at all


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

    def __init__(self, location: str) -> None:
        if "://" not in location and os.path.isfile(location) and os.path.getsize(location) == 0:
            raise VideoError("empty file (0 bytes)")
        try:
            self._container = av.open(location)
        except av.error.FFmpegError as e:
            raise VideoError(f"cannot open: {_reason(e)}") from None
        if not self._container.streams.video:
            self._container.close()
            raise VideoError("no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self.fps = _nominal_fps(self._stream)
        # One scaler per output size: PyAV caches the swscale context between calls.
        self._thumbnails = VideoReformatter()
        self._samples = VideoReformatter()

    def __enter__(self) -> Video:
        return self

    def __exit__(self, *exc: object) -> None:
        self._container.close()

    def frames(self) -> Iterator[Frame]:
        """Yield every frame once; times come from pts so variable frame rates stay right."""
        first_pts: int | None = None
        try:
            for index, raw in enumerate(self._container.decode(self._stream)):
                if raw.pts is None or raw.time_base is None:
                    t = index / self.fps
                else:
                    first_pts = raw.pts if first_pts is None else first_pts
                    t = float((raw.pts - first_pts) * raw.time_base)
                yield Frame(index, t, raw)
        except av.error.FFmpegError as e:
            raise VideoError(f"decode failed: {_reason(e)}") from None

    def thumbnail(self, frame: Frame, width: int) -> np.ndarray:
        """A small RGB array (``width`` wide, aspect kept) for shot detection; rotation is ignored."""
        raw = frame.raw
        height = max(1, round(raw.height * width / max(raw.width, 1)))
        # Fast bilinear samples sparsely when shrinking a lot; colour histograms barely notice,
        # and it is ~50x cheaper than area averaging on HD frames (which would rival decoding).
        return self._scale(self._thumbnails, raw, width, height, "FAST_BILINEAR")

    def upright_rgb(self, frame: Frame, short_side: int) -> np.ndarray:
        """RGB array with its short side at most ``short_side`` (never upscaled), rotated for display."""
        raw = frame.raw
        scale = min(1.0, short_side / min(raw.width, raw.height))
        width, height = max(1, round(raw.width * scale)), max(1, round(raw.height * scale))
        rgb = self._scale(self._samples, raw, width, height, "AREA")
        k = rotation(frame) // 90
        return np.ascontiguousarray(np.rot90(rgb, k=k)) if k else rgb

    @staticmethod
    def _scale(scaler: VideoReformatter, raw: av.VideoFrame, width: int, height: int, interpolation: str) -> np.ndarray:
        # threads=1: parallelism comes from ingest workers; threaded swscale setup costs more here.
        out = scaler.reformat(raw, width=width, height=height, format="rgb24", interpolation=interpolation, threads=1)
        return out.to_ndarray()


def rotation(frame: Frame) -> int:
    """Counterclockwise display rotation (phone videos), snapped to a multiple of 90 degrees."""
    return round(frame.raw.rotation / 90) * 90 % 360


def display_size(frame: Frame) -> tuple[int, int]:
    """Width and height as the frame is shown, i.e. after its display rotation."""
    w, h = frame.raw.width, frame.raw.height
    return (h, w) if rotation(frame) % 180 else (w, h)


def _nominal_fps(stream: av.video.stream.VideoStream) -> float:
    """The declared frame rate (average, else guessed, else DEFAULT_FPS)."""
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else DEFAULT_FPS


def _reason(error: av.error.FFmpegError) -> str:
    """FFmpeg's message without the file name PyAV appends (the index already names the file)."""
    message = error.strerror or str(error)
    return " ".join(str(message).split())
