"""Shot boundary detection from colour histograms (VIVI splits videos "based on color histograms").

Each frame is summarised by an HSV histogram of a small thumbnail (:func:`frame_features`).
The distance between consecutive frames finds hard cuts; gradual transitions (fades,
dissolves) change little per frame, so they are found by twin comparison: a low threshold
opens a candidate, and the candidate is a transition when the accumulated change across it
(first frame before vs. last frame after) clears the cut threshold. Both thresholds adapt to
the recent frame-to-frame change of the video, so camera motion and noise do not read as cuts.
Frames inside a transition, black frames, and segments too short to be shots (a flash, the
black between a fade-out and a fade-in) belong to no shot.

:class:`ShotDetector` takes one feature vector at a time, so the decode loop stores no frames
and no per-frame features; :func:`detect_shots` is the same detector over a whole sequence.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from vivi.errors import UserError

HUE_BINS, SAT_BINS, VAL_BINS = 16, 4, 4
HIST_SIZE = HUE_BINS * SAT_BINS * VAL_BINS
BLACK_VALUE = 0.06  # a pixel whose brightest channel is below this is black
DARK_VALUE = 0.2  # below this value, saturation is faded out (to 0 at black)
THUMBNAIL_WIDTH = 64  # pixels; colour statistics need few, and decoding dominates anyway
LUT_BITS = 6  # per channel, of the colour table that replaces per-pixel HSV arithmetic


@dataclass(frozen=True)
class DetectorParams:
    """Thresholds on the histogram distance (total variation, in [0, 1]) and durations in seconds."""

    cut_min: float = 0.3  # a cut changes at least this share of the histogram between two frames
    low_min: float = 0.06  # a frame-to-frame change this small never opens a gradual candidate
    cut_sigmas: float = 6.0  # cut threshold: recent mean + cut_sigmas * recent std (if higher)
    low_sigmas: float = 3.0  # low threshold: recent mean + low_sigmas * recent std (if higher)
    window_s: float = 4.0  # how far back "recent" reaches
    min_window: int = 8  # frames: the shortest window; its statistics count from half full
    max_transition_s: float = 3.0  # longer runs of change are motion, not a transition
    min_shot_s: float = 1.0  # shorter segments (flashes, the black between fades) are no shot
    black_share: float = 0.98  # frames with this share of black pixels (see BLACK_VALUE) are no shot


@dataclass(frozen=True)
class Shot:
    """Inclusive frame range of one shot."""

    start_frame: int
    end_frame: int

    def __len__(self) -> int:
        return self.end_frame - self.start_frame + 1


def frame_features(rgb: np.ndarray) -> np.ndarray:
    """Features of an RGB uint8 image [H, W, 3]: its normalised joint HSV histogram
    (``HIST_SIZE`` float32 values summing to 1) followed by its share of black pixels.

    Soft binning (each pixel shared linearly between the two nearest bins per channel, hue
    wrapping around) keeps a large smooth region near a bin edge from flipping bins at once
    when the light drifts slightly, which hard binning would report as a cut. Dark pixels are
    desaturated: their hue and saturation flicker with noise and made night scenes "cut".
    This runs on every decoded frame, so each pixel's bins and weights are looked up in a table
    of colours quantised to ``LUT_BITS`` per channel (:func:`_colour_table`) instead of computed.
    """
    return batch_features(rgb[None])[0]


def batch_features(rgb: np.ndarray) -> np.ndarray:
    """:func:`frame_features` of each image of a batch [B, H, W, 3], as rows [B, HIST_SIZE + 1].

    The decode loop hands its thumbnails over in batches: one image per call paid each numpy
    call's fixed cost, with caches the decoder had just flushed, for only a few thousand pixels.
    The bins' sums are whole numbers (weights in 1/255), exact in any order: a batch gives each
    image exactly the features it gets alone.
    """
    codes, weights, black = _colour_table()
    n = len(rgb)
    q = rgb.reshape(n, -1, 3) >> (8 - LUT_BITS)
    index = (q[..., 0].astype(np.intp) << (2 * LUT_BITS)) | (q[..., 1].astype(np.intp) << LUT_BITS) | q[..., 2]
    bins, bin_weights = codes.take(index, axis=0), weights.take(index, axis=0)  # [n, pixels, 8] each
    hist = np.empty((n, HIST_SIZE))
    for i in range(n):  # cheaper than offsetting each image's bins to count all in one bincount
        hist[i] = np.bincount(bins[i].ravel(), bin_weights[i].ravel(), HIST_SIZE)
    features = np.empty((n, HIST_SIZE + 1), np.float32)
    features[:, :HIST_SIZE] = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1e-9)
    features[:, HIST_SIZE] = np.count_nonzero(black.take(index), axis=1) / index.shape[1]
    return features


@cache
def _colour_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per quantised colour (2**(3 * LUT_BITS) of them, each represented by its bucket's
    centre): its 8 soft-bin codes [M, 8] and their weights in 1/255 [M, 8] (uint8: the lookup is
    bound by cache misses, and float weights would be 4-8 times larger; the rounding moves a
    frame's histogram by < 0.001 in total variation, against cut thresholds of 0.06-0.3), and
    whether it is black [M]. Built once per process (~4 MB, ~35 ms)."""
    step = 256 >> LUT_BITS
    levels = np.arange(0, 256, step) + step // 2
    colours = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3).astype(np.uint8)
    codes, weights, black = _pixel_bins(colours)
    weights = np.round(weights.T * 255).astype(np.uint8)
    return np.ascontiguousarray(codes.T), np.ascontiguousarray(weights), black.astype(np.uint8)


def _pixel_bins(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For [N, 3] uint8 pixels: the histogram codes [8, N] (uint8) of their 8 (lower/upper bin per
    channel) corners, the corners' weights [8, N], and which pixels are black [N]."""
    h, s, v = _hsv(rgb)
    s = s * np.minimum(v / DARK_VALUE, 1.0)  # the saturation of near-black pixels is noise
    (hb, hw), (sb, sw), (vb, vw) = _soft_bins(h, HUE_BINS, wrap=True), _soft_bins(s, SAT_BINS), _soft_bins(v, VAL_BINS)
    codes = (hb[:, None, None] * SAT_BINS + sb[None, :, None]) * VAL_BINS + vb[None, None, :]
    weights = hw[:, None, None] * sw[None, :, None] * vw[None, None, :]
    return codes.reshape(8, -1), weights.reshape(8, -1), v < BLACK_VALUE


def _soft_bins(x: np.ndarray, bins: int, wrap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The lower and upper neighbouring bin of each value in [0, 1] (stacked: [2, N], uint8 so
    that the codes of the colour table's 2**18 colours stay small), with linear weights (also [2, N])."""
    position = x * bins - 0.5
    low = np.floor(position)
    upper_weight = (position - low).astype(np.float32)
    low = low.astype(np.intp)
    pair = np.stack([low, low + 1])
    pair = pair % bins if wrap else np.clip(pair, 0, bins - 1)
    return pair.astype(np.uint8), np.stack([1.0 - upper_weight, upper_weight])


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """Total variation between two frames' histograms: the share of pixels that changed bin."""
    return distances(a[None], b[None])[0]


def distances(a: np.ndarray, b: np.ndarray) -> list[float]:
    """:func:`distance` between corresponding rows of ``a`` and ``b`` [n, HIST_SIZE + 1]."""
    return [0.5 * total for total in np.abs(a[:, :HIST_SIZE] - b[:, :HIST_SIZE]).sum(axis=1).tolist()]


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue, saturation, value in [0, 1] for an [N, 3] uint8 array."""
    r, g, b = (rgb[:, i].astype(np.float32) / 255.0 for i in range(3))
    v = np.maximum(np.maximum(r, g), b)
    c = v - np.minimum(np.minimum(r, g), b)
    s = c / np.maximum(v, 1e-6)
    safe_c = np.maximum(c, 1e-6)
    h = np.where(v == r, (g - b) / safe_c, np.where(v == g, 2.0 + (b - r) / safe_c, 4.0 + (r - g) / safe_c))
    return (h / 6.0) % 1.0, s, v


@dataclass
class _Run:
    """A candidate gradual transition: frames whose change from their predecessor is above low."""

    start: int  # first changed frame
    reference: np.ndarray  # features of the frame before ``start``
    cut: float  # thresholds frozen when the run opened
    low: float
    last: int  # last frame whose change was above low
    last_features: np.ndarray
    distances: list[float]


class ShotDetector:
    """Streaming twin-comparison detector: :meth:`push` every frame's features, then :meth:`shots`."""

    def __init__(self, fps: float, params: DetectorParams | None = None) -> None:
        self.params = params or DetectorParams()
        self.fps = fps
        window = max(self.params.min_window, round(self.params.window_s * self.fps))
        self._recent: deque[float] = deque(maxlen=window)
        self._max_run = max(2, round(self.params.max_transition_s * self.fps))
        self._prev: np.ndarray | None = None
        self._count = 0
        self._run: _Run | None = None
        self._segment_start = 0
        self._segments: list[Shot] = []
        self._black: list[int] = []  # indices of black frames (fades, intros): in no shot
        # No threshold is ever below this (see _thresholds): a smaller change is a quiet frame
        # without computing them, which most frames are.
        self._quiet = min(self.params.low_min, self.params.cut_min / 2)

    def push(self, features: np.ndarray) -> None:
        """Account for the next frame in decode order."""
        self.push_many(features[None])

    def push_many(self, features: np.ndarray) -> None:
        """Account for the next frames in decode order (rows [n, HIST_SIZE + 1], as from
        :func:`batch_features`): their distances and black shares in one pass, then frame by frame."""
        if not len(features):
            return
        first, prev = self._count, self._prev
        self._count, self._prev = first + len(features), features[-1]
        self._black += (first + np.flatnonzero(features[:, HIST_SIZE] >= self.params.black_share)).tolist()
        rows = features if prev is None else np.concatenate([prev[None], features])
        index = self._count - len(rows) + 1  # of rows[1]: the first frame with a predecessor
        for i, d in enumerate(distances(rows[:-1], rows[1:])):
            self._step(index + i, d, rows[i], rows[i + 1])

    def _step(self, index: int, d: float, prev: np.ndarray, features: np.ndarray) -> None:
        """Frame ``index`` changed by ``d`` from its predecessor ``prev``."""
        if self._run is None:
            if d <= self._quiet:
                self._recent.append(d)
                return
            cut, low = self._thresholds()
            if d > cut:
                self._boundary(index, index)
            elif d > low:
                self._run = _Run(index, prev, cut, low, index, features, [d])
            else:
                self._recent.append(d)
            return
        run = self._run
        if d > run.cut:
            self._close_run()
            self._boundary(index, index)
            return
        run.distances.append(d)
        if d > run.low:
            run.last, run.last_features = index, features
        if index - run.start >= self._max_run:
            self._close_run(too_long=True)
        elif index - run.last >= 2:
            self._close_run()

    def shots(self) -> list[Shot]:
        """The shots, once every frame is pushed: segments between boundaries, without black
        frames, and without what is then shorter than ``min_shot_s``."""
        if self._run is not None:
            self._close_run()
        segments = self._segments
        if self._count > self._segment_start:
            segments = segments + [Shot(self._segment_start, self._count - 1)]
        min_len = max(1, round(self.params.min_shot_s * self.fps))
        return [s for s in _split_at(segments, self._black) if len(s) >= min_len]

    def _thresholds(self) -> tuple[float, float]:
        """Cut and low thresholds from the recent quiet distances, never below the floors."""
        p = self.params
        if len(self._recent) < p.min_window // 2:
            return p.cut_min, p.low_min
        recent = np.asarray(self._recent)
        mean, std = float(recent.mean()), float(recent.std())
        cut = max(p.cut_min, mean + p.cut_sigmas * std)
        return cut, min(max(p.low_min, mean + p.low_sigmas * std), cut / 2)

    def _close_run(self, too_long: bool = False) -> None:
        """A run is a transition if its accumulated change is cut-sized; otherwise, or if it
        lasted longer than any transition (a slow pan, the light drifting), it was motion."""
        run, self._run = self._run, None
        assert run is not None
        if not too_long and run.last > run.start and distance(run.reference, run.last_features) > run.cut:
            self._boundary(run.start, run.last)
        else:
            self._recent.extend(run.distances)

    def _boundary(self, first_changed: int, first_after: int) -> None:
        """End the open shot before ``first_changed``; the next starts at ``first_after``."""
        if first_changed > self._segment_start:
            self._segments.append(Shot(self._segment_start, first_changed - 1))
        self._segment_start = first_after


def _split_at(segments: list[Shot], frames: list[int]) -> list[Shot]:
    """Segments with the given (sorted) frames cut out of them."""
    pieces = []
    for segment in segments:
        start = segment.start_frame
        for f in frames[bisect_left(frames, segment.start_frame) : bisect_right(frames, segment.end_frame)]:
            if f > start:
                pieces.append(Shot(start, f - 1))
            start = f + 1
        if start <= segment.end_frame:
            pieces.append(Shot(start, segment.end_frame))
    return pieces


GAP_PERIODS = 4  # a step between frames this many frame periods long (and over min_shot_s) is a gap


def max_step_s(fps: float, min_shot_s: float = DetectorParams.min_shot_s) -> float:
    """The longest step between consecutive frames' times that can lie inside a shot of a damaged
    video.

    There a longer stretch without decoded frames (packets that failed to decode up to the next
    keyframe) could hold a whole shot we never saw, and a frame-count detector sees the frames on
    either side as neighbours: after damage a decoder may even repeat the last good picture, so no
    cut shows. Steps of a few frame periods (a dropped frame, a variable rate) stay inside shots;
    so do the wide steps of very low frame rates. (In an undamaged video a long step is a still
    picture held, as a variable-rate screen recording does, and is left alone.)
    """
    return max(min_shot_s, GAP_PERIODS / fps)


def split_at_gaps(
    shots: list[Shot], times: Sequence[float], fps: float, min_shot_s: float = DetectorParams.min_shot_s
) -> list[Shot]:
    """``shots`` split where consecutive frames' times (``times``: one per decoded frame) are more
    than :func:`max_step_s` apart; pieces shorter than ``min_shot_s`` (in frames at ``fps``, as the
    detectors count it) are dropped. Shots without such a gap are returned as they are."""
    steps = np.diff(np.asarray(times, dtype=np.float64))
    gaps = np.flatnonzero(steps > max_step_s(fps, min_shot_s)).tolist()  # frame i is followed by a gap
    if not gaps:
        return shots
    min_len = max(1, round(min_shot_s * fps))
    pieces = []
    for shot in shots:
        inside = gaps[bisect_left(gaps, shot.start_frame) : bisect_left(gaps, shot.end_frame)]
        if not inside:
            pieces.append(shot)
            continue
        starts, ends = [shot.start_frame, *(g + 1 for g in inside)], [*inside, shot.end_frame]
        pieces += [Shot(a, b) for a, b in zip(starts, ends) if b - a + 1 >= min_len]
    return pieces


DETECTORS = {"histogram": DetectorParams()}  # name -> parameters; the CLI's --detector choices


def detector_params(name: str) -> DetectorParams:
    """Parameters of a named detector; an unknown name is the user's error."""
    if name not in DETECTORS:
        raise UserError(f"detector {name!r}: unknown, use one of {', '.join(DETECTORS)}")
    return DETECTORS[name]


def make_detector(name: str, fps: float) -> ShotDetector:
    """A fresh streaming detector for one video."""
    return ShotDetector(fps, detector_params(name))


def detect_shots(features: Iterable[np.ndarray], fps: float, params: DetectorParams | None = None) -> list[Shot]:
    """Shots of a whole sequence of per-frame features (see :func:`frame_features`)."""
    detector = ShotDetector(fps, params)
    for f in features:
        detector.push(f)
    return detector.shots()

