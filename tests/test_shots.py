"""Shot detection on synthetic frame sequences with known cuts, dissolves and fades (no video I/O)."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest

from vivi.data.shots import Shot, detect_shots, distance, frame_features, make_detector
from vivi.errors import UserError

SIZE = 64


def texture(rng: np.random.Generator, hue: float) -> np.ndarray:
    """A blocky two-tone texture of one hue, larger than a frame so a view can pan over it."""
    mix = np.kron(rng.random((12, 12)), np.ones((16, 16)))[..., None]
    light = np.array(colorsys.hsv_to_rgb(hue, 0.8, 0.95)) * 255
    dark = np.array(colorsys.hsv_to_rgb(hue, 0.9, 0.45)) * 255
    return mix * light + (1 - mix) * dark


def segment(rng: np.random.Generator, hue: float, n: int) -> list[np.ndarray]:
    """``n`` frames panning over a texture at a random speed of up to 3 px per frame."""
    image = texture(rng, hue).astype(np.uint8)
    vx, vy = rng.uniform(-3, 3, 2)
    corners = [(int(64 + vy * i), int(64 + vx * i)) for i in range(n)]
    return [image[y : y + SIZE, x : x + SIZE] for y, x in corners]


def blend(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    return ((1 - alpha) * a.astype(np.float32) + alpha * b.astype(np.float32)).round().astype(np.uint8)


def clip(seed: int, lengths: tuple[int, ...] = (18, 22, 16, 20), dissolve_before: int = 2, dissolve: int = 5):
    """Frames of segments with distinct hues: hard cuts, except a dissolve into one segment.

    Returns the frames and the true shots (the dissolve's frames belong to no shot).
    """
    rng = np.random.default_rng(seed)
    frames: list[np.ndarray] = []
    shots: list[Shot] = []
    for i, n in enumerate(lengths):
        seg = segment(rng, (seed * 0.13 + i * 0.2) % 1.0, n)
        if i == dissolve_before:
            frames += [blend(frames[-1], seg[0], (j + 1) / (dissolve + 1)) for j in range(dissolve)]
        shots.append(Shot(len(frames), len(frames) + n - 1))
        frames += seg
    return frames, shots


def shots_of(frames: list[np.ndarray], fps: float = 10.0) -> list[Shot]:
    return detect_shots((frame_features(f) for f in frames), fps)


def assert_matches(found: list[Shot], truth: list[Shot], tolerance: int = 1) -> None:
    assert len(found) == len(truth), (found, truth)
    for f, t in zip(found, truth):
        assert abs(f.start_frame - t.start_frame) <= tolerance, (found, truth)
        assert abs(f.end_frame - t.end_frame) <= tolerance, (found, truth)


def test_features_are_a_normalised_histogram():
    rng = np.random.default_rng(0)
    red, blue = segment(rng, 0.0, 1)[0], segment(rng, 0.6, 1)[0]
    f = frame_features(red)
    assert f.dtype == np.float32 and f.ndim == 1 and abs(float(f.sum()) - 1) < 1e-5
    assert distance(f, f) == 0.0
    assert distance(f, frame_features(blue)) > 0.9


@pytest.mark.parametrize("seed", range(4))
def test_cuts_and_dissolve_found_within_one_frame(seed):
    frames, truth = clip(seed)
    found = shots_of(frames)
    assert_matches(found, truth)
    dissolve = range(truth[1].end_frame + 2, truth[2].start_frame - 1)  # the inner dissolve frames
    assert not any(s.start_frame <= i <= s.end_frame for s in found for i in dissolve)


def test_motion_and_lighting_changes_are_not_cuts():
    rng = np.random.default_rng(7)
    frames = segment(rng, 0.3, 40)
    gain = 1.0 + 0.15 * np.sin(np.arange(40) / 3.0)  # slow flicker of the light
    frames = [np.clip(f * g, 0, 255).astype(np.uint8) for f, g in zip(frames, gain)]
    assert shots_of(frames) == [Shot(0, 39)]


def test_a_dark_scene_brightening_is_one_shot():
    rng = np.random.default_rng(11)
    night = [np.clip(f * 0.12 + i * 0.6, 0, 255).astype(np.uint8) for i, f in enumerate(segment(rng, 0.7, 40))]
    assert shots_of(night) == [Shot(0, 39)]  # dark pixels' hue and saturation swing with the light


def test_fade_through_black_leaves_black_frames_out():
    rng = np.random.default_rng(3)
    a, b = segment(rng, 0.1, 20), segment(rng, 0.6, 20)
    black = np.zeros_like(a[0])
    out = [blend(a[-1], black, (j + 1) / 5) for j in range(4)]  # ends on black
    inn = [blend(black, b[0], (j + 1) / 5) for j in range(4)]
    frames = a + out + [black] * 2 + inn + b
    assert_matches(shots_of(frames), [Shot(0, 19), Shot(30, 49)])


def test_black_frames_belong_to_no_shot():
    rng = np.random.default_rng(4)
    black = np.full((SIZE, SIZE, 3), 12, np.uint8)
    frames = [black] * 10 + segment(rng, 0.2, 30) + [black] * 10  # a black intro and outro
    assert_matches(shots_of(frames), [Shot(10, 39)])


def test_a_one_frame_flash_belongs_to_no_shot():
    rng = np.random.default_rng(5)
    frames = segment(rng, 0.5, 30)
    frames[15] = np.full_like(frames[15], 255)
    found = shots_of(frames)
    assert not any(s.start_frame <= 15 <= s.end_frame for s in found)
    assert sum(len(s) for s in found) == 29


def test_streaming_detector_matches_whole_sequence():
    frames, _ = clip(1)
    detector = make_detector("histogram", 10.0)
    for f in frames:
        detector.push(frame_features(f))
    assert detector.shots() == shots_of(frames)


def test_unknown_detector_is_a_user_error():
    with pytest.raises(UserError, match="nope"):
        make_detector("nope", 10.0)


def test_frame_features_match_the_per_pixel_computation():
    """The colour table (quantised colours, weights in 1/255) against the soft histogram computed
    from each pixel's own HSV: the table may move a frame's histogram only a little next to the
    detector's thresholds (cut_min 0.3, low_min 0.06)."""
    from vivi.data.shots import HIST_SIZE, _pixel_bins

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:36, 0:64]
    for rgb in (rng.integers(0, 256, (36, 64, 3)), np.stack([xx * 4, yy * 7, (xx + yy) * 2], -1) + rng.integers(0, 9, (36, 64, 3))):
        rgb = rgb.clip(0, 255).astype(np.uint8)
        codes, weights, black = _pixel_bins(rgb.reshape(-1, 3))
        reference = np.bincount(codes.ravel(), weights.ravel(), HIST_SIZE)
        reference /= reference.sum()
        features = frame_features(rgb)
        assert features.shape == (HIST_SIZE + 1,) and abs(features[:HIST_SIZE].sum() - 1) < 1e-5
        assert 0.5 * np.abs(features[:HIST_SIZE] - reference).sum() < 0.02
        assert abs(features[-1] - black.mean()) < 0.02


def table_reference(rgb: np.ndarray) -> np.ndarray:
    """:func:`frame_features` the slow way: every pixel's bucket centre through the per-pixel
    computation, rounded to 1/255 as the table stores it; no table, no batch."""
    from vivi.data.shots import HIST_SIZE, LUT_BITS, _pixel_bins

    step = 256 >> LUT_BITS
    centres = ((rgb.reshape(-1, 3) >> (8 - LUT_BITS)) * step + step // 2).astype(np.uint8)
    codes, weights, black = _pixel_bins(centres)
    hist = np.bincount(codes.ravel(), np.round(weights * 255).ravel(), HIST_SIZE)
    return np.append(hist / hist.sum(), black.mean()).astype(np.float32)


def test_a_batch_gets_exactly_each_frames_features():
    """Batched features (the decode loop's path) equal, to the last bit, the per-pixel reference
    of each image alone: a slip in a table row, a pixel's index or an image's place shows."""
    from vivi.data.shots import batch_features

    rng = np.random.default_rng(4)
    frames, _ = clip(2)
    noise = [rng.integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8) for _ in range(3)]
    dark = [np.zeros((SIZE, SIZE, 3), np.uint8), np.full((SIZE, SIZE, 3), 12, np.uint8)]  # black, near-black
    images = np.stack(frames[:11] + noise + dark)
    reference = np.stack([table_reference(image) for image in images])
    assert np.array_equal(batch_features(images), reference)
    assert np.array_equal(frame_features(images[4]), reference[4])
    assert reference[-2, -1] == 1.0 and reference[-1, -1] == 1.0 and reference[0, -1] == 0.0


def test_distances_of_rows_are_the_pairs_distances():
    from vivi.data.shots import HIST_SIZE, distances

    rng = np.random.default_rng(5)
    a, b = rng.random((2, 30, HIST_SIZE + 1)).astype(np.float32)
    assert distances(a, b) == [0.5 * float(np.abs(x[:HIST_SIZE] - y[:HIST_SIZE]).sum()) for x, y in zip(a, b)]


def mixtures(rng: np.random.Generator, n: int) -> np.ndarray:
    """Features of frames mixing two bins, so consecutive distances are the mixture's steps:
    quiet stretches with noise, cuts, single jolts, and ramps of steps just above the low
    threshold's floor (gradual transitions), with black frames among them."""
    from vivi.data.shots import HIST_SIZE

    steps: list[float] = []
    while len(steps) < n:
        steps += list(rng.uniform(0, 0.04, int(rng.integers(8, 30))))  # a quiet stretch
        kind = rng.integers(3)
        steps += [0.6] if kind == 0 else [float(rng.uniform(0.1, 0.25))] if kind == 1 else [0.075] * 6
    share = np.abs((np.cumsum(np.array(steps[:n]) * rng.choice([-1, 1])) + 1) % 2 - 1)  # folded into [0, 1]
    features = np.zeros((n, HIST_SIZE + 1), np.float32)
    features[:, 0], features[:, 1] = 1 - share, share
    features[rng.random(n) < 0.05, HIST_SIZE] = 1.0
    return features


def test_pushing_in_batches_finds_what_pushing_frame_by_frame_finds():
    rng = np.random.default_rng(6)
    features = mixtures(rng, 400)
    one = make_detector("histogram", 10.0)
    for f in features:
        one.push(f)
    many = make_detector("histogram", 10.0)
    start = 0
    while start < len(features):
        size = int(rng.integers(1, 20))
        many.push_many(features[start : start + size])
        start += size
    assert len(one.shots()) > 5 and many.shots() == one.shots()


def test_quiet_frames_need_no_thresholds():
    """A change below ``_quiet`` is below every threshold the detector can compute: skipping
    them changes nothing (against a detector that computes them for every frame)."""
    rng = np.random.default_rng(7)
    for _ in range(5):
        features = mixtures(rng, 300)
        fast, slow = make_detector("histogram", 10.0), make_detector("histogram", 10.0)
        slow._quiet = -1.0
        fast.push_many(features)
        slow.push_many(features)
        assert fast.shots() == slow.shots()
