"""Shot detectors selectable by name (``vivi ingest --detector``), all fed from ingest's one decode loop.

``histogram`` is ours (:mod:`vivi.data.shots`: HSV histograms, twin comparison, so gradual
transitions and black frames belong to no shot). ``content`` and ``adaptive`` are
PySceneDetect's ``ContentDetector`` and ``AdaptiveDetector`` with their default settings; we
hand them the small frames our decode pass makes anyway (``process_frame(frame_num, image)``),
never a second decode. They report hard cuts only: a cut list has no notion of transition
frames, so a dissolve or fade becomes one cut somewhere inside it (or none), and its frames
stay in the neighbouring shots. Both kinds share the minimum shot length of the histogram
detector (``DetectorParams.min_shot_s``): shorter segments are no shot.

PySceneDetect needs OpenCV; both come with ``pip install 'vivi[scenedetect]'``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from vivi.data.shots import THUMBNAIL_WIDTH, DetectorParams, Shot, ShotDetector, batch_features
from vivi.errors import UserError

DETECTOR_NAMES = ("histogram", "content", "adaptive")
# PySceneDetect's SceneManager shrinks frames so their larger side is 256 px
# (scenedetect.scene_manager.DEFAULT_MIN_WIDTH) before its detectors see them; its default
# thresholds assume that resolution, so we feed frames of that size.
SCENEDETECT_SIDE = 256
INSTALL_HINT = "pip install 'vivi[scenedetect]'"


class FrameDetector(Protocol):
    """A streaming shot detector for one video: one small image per decoded frame, in order."""

    pixel_format: str  # what :meth:`push` takes: "rgb24" or "bgr24"

    def width(self, frame_width: int, frame_height: int) -> int:
        """Width of the images to push for frames of this size (the height keeps the aspect)."""

    def push(self, image: np.ndarray) -> None:
        """Account for the next frame in decode order."""

    def shots(self) -> list[Shot]:
        """The shots, once every frame has been pushed."""


class HistogramFrames:
    """Our histogram detector (:class:`vivi.data.shots.ShotDetector`) on 64-px RGB thumbnails,
    which it collects into batches of ``BATCH`` for :func:`~vivi.data.shots.batch_features`
    (the same features, at about half the CPU time per frame of one call per frame)."""

    pixel_format = "rgb24"
    BATCH = 16  # thumbnails (7 KB each); larger batches outgrow the CPU caches and gain nothing
    MAX_PIXELS = THUMBNAIL_WIDTH * 4 * THUMBNAIL_WIDTH  # 64x256; portrait 9:16 video (64x114) stays as it is

    def __init__(self, fps: float, params: DetectorParams | None = None) -> None:
        self._detector = ShotDetector(fps, params)
        self._batch = np.empty((0, 0, 0, 3), np.uint8)
        self._count = 0  # thumbnails in the batch

    def width(self, frame_width: int, frame_height: int) -> int:
        """``THUMBNAIL_WIDTH``, narrower for frames over 4 times taller than wide, so a thumbnail
        has at most ``MAX_PIXELS``: a 64-px-wide thumbnail of a 1x720 strip is 64x46080, and a
        batch of those took gigabytes and seconds per frame."""
        return max(1, min(THUMBNAIL_WIDTH, math.isqrt(self.MAX_PIXELS * frame_width // max(frame_height, 1))))

    def push(self, image: np.ndarray) -> None:
        if image.shape != self._batch.shape[1:]:  # the first frame, or the video changed size
            self._flush()
            self._batch = np.empty((self.BATCH, *image.shape), np.uint8)
        self._batch[self._count] = image
        self._count += 1
        if self._count == self.BATCH:
            self._flush()

    def shots(self) -> list[Shot]:
        self._flush()
        return self._detector.shots()

    def _flush(self) -> None:
        if self._count:
            self._detector.push_many(batch_features(self._batch[: self._count]))
        self._count = 0


class SceneDetectFrames:
    """A PySceneDetect detector fed BGR frames at the resolution its SceneManager would use."""

    pixel_format = "bgr24"

    def __init__(self, detector: Any, fps: float, min_shot_s: float = DetectorParams.min_shot_s) -> None:
        self._detector = detector
        self._min_len = max(1, round(min_shot_s * fps))
        self._count = 0
        self._cuts: list[int] = []

    def width(self, frame_width: int, frame_height: int) -> int:
        scale = min(1.0, SCENEDETECT_SIDE / max(frame_width, frame_height, 1))
        return max(1, round(frame_width * scale))

    def push(self, image: np.ndarray) -> None:
        self._cuts += self._detector.process_frame(self._count, image)
        self._count += 1

    def shots(self) -> list[Shot]:
        cuts = self._cuts + list(self._detector.post_process(self._count))
        return [s for s in cuts_to_shots(cuts, self._count) if len(s) >= self._min_len]


def cuts_to_shots(cuts: list[int], num_frames: int) -> list[Shot]:
    """Segments between cuts; a cut at frame c ends a shot at c - 1 and starts the next at c."""
    starts = [0, *sorted({c for c in cuts if 0 < c < num_frames})]
    ends = [s - 1 for s in starts[1:]] + [num_frames - 1]
    return [Shot(s, e) for s, e in zip(starts, ends) if num_frames > 0]


def _scenedetect_factory(name: str) -> Callable[[], Any]:
    """The PySceneDetect detector class for ``name``; a one-line UserError when it is not installed."""
    try:
        from scenedetect.detectors import AdaptiveDetector, ContentDetector
    except ImportError as e:
        raise UserError(f"detector {name!r} needs PySceneDetect and OpenCV ({e}): {INSTALL_HINT}") from None
    return {"content": ContentDetector, "adaptive": AdaptiveDetector}[name]


def check_detector(name: str) -> None:
    """Raise a one-line :class:`UserError` for an unknown name or a detector that cannot run here."""
    if name not in DETECTOR_NAMES:
        raise UserError(f"detector {name!r}: unknown, use one of {', '.join(DETECTOR_NAMES)}")
    if name != "histogram":
        _scenedetect_factory(name)


def make_frame_detector(name: str, fps: float) -> FrameDetector:
    """A fresh detector for one video, by ``--detector`` name (default settings for each)."""
    check_detector(name)
    if name == "histogram":
        return HistogramFrames(fps)
    return SceneDetectFrames(_scenedetect_factory(name)(), fps)
