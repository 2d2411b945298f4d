"""The eight scene types: a background family (structure), a palette, typical object classes.

A scene type is meant to be recognisable only from several cues together: palettes of
different types overlap (hues are drawn from wide ranges around shared centres, brightness
ranges overlap), object classes are shared across types with different frequencies, and
the background structure is re-sampled for every shot (horizon height, corner position,
number of trunks, ...). Backgrounds are rendered once per shot, larger than the frame, and
panned/zoomed per frame by :func:`vivi.data.synth.render.sample_background`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from vivi.data.synth.objects import NUM_CLASSES
from vivi.data.synth.render import F32, hsv_to_rgb

SCENE_NAMES = ("meadow", "room", "reef", "plaza", "forest", "desert", "night", "city")
NUM_SCENES = len(SCENE_NAMES)

# Each scene type favours three classes (75% of its objects); the other seven share 25%.
# Every class is favoured by two or three scene types.
TYPICAL_CLASSES: tuple[tuple[int, int, int], ...] = (
    (5, 7, 3),  # meadow: quadruped, flower, bird
    (1, 9, 0),  # room: dumbbell, spider, snowman
    (4, 6, 2),  # reef: fish, caterpillar, mushroom
    (0, 3, 1),  # plaza: snowman, bird, dumbbell
    (2, 9, 5),  # forest: mushroom, spider, quadruped
    (6, 8, 7),  # desert: caterpillar, rocket, flower
    (8, 3, 2),  # night: rocket, bird, mushroom
    (8, 1, 4),  # city: rocket, dumbbell, fish
)
TYPICAL_MASS = 0.75


@dataclass(frozen=True)
class PaletteSpec:
    """Hue centres of the roles (a: sky/wall/water, b: ground/floor, c: structure) + ranges."""

    hues: tuple[float, float, float]
    sat: tuple[float, float]
    val: tuple[float, float]


PALETTES = (
    PaletteSpec((0.58, 0.28, 0.15), (0.15, 0.7), (0.4, 0.95)),
    PaletteSpec((0.08, 0.07, 0.55), (0.1, 0.6), (0.35, 0.9)),
    PaletteSpec((0.52, 0.12, 0.50), (0.2, 0.8), (0.3, 0.9)),
    PaletteSpec((0.05, 0.60, 0.10), (0.1, 0.6), (0.35, 0.9)),
    PaletteSpec((0.35, 0.10, 0.07), (0.15, 0.6), (0.3, 0.85)),
    PaletteSpec((0.56, 0.10, 0.08), (0.15, 0.7), (0.4, 0.95)),
    PaletteSpec((0.65, 0.70, 0.14), (0.15, 0.6), (0.12, 0.55)),
    PaletteSpec((0.58, 0.08, 0.13), (0.1, 0.6), (0.3, 0.9)),
)
# Hues are drawn within +-0.4 of the centres (80% of the hue circle): colour is a weak hint, the
# structure of the background and the typical objects carry the scene type.
HUE_SPREAD = 0.4


def class_probs(scene: int) -> np.ndarray:
    """Object class distribution of a scene type."""
    p = np.full(NUM_CLASSES, (1.0 - TYPICAL_MASS) / (NUM_CLASSES - 3))
    p[list(TYPICAL_CLASSES[scene])] = TYPICAL_MASS / 3
    return p


MIN_PALETTE_CHANGE = 0.15  # mean |RGB| change of the two large roles between consecutive shots


def sample_palette(rng: np.random.Generator, scene: int, avoid: np.ndarray | None = None) -> np.ndarray:
    """Three role colours [3, 3] drawn from the scene's (overlapping) ranges.

    With ``avoid`` (the previous shot's palette) the large roles must change visibly, so that
    every hard cut is a clear change of content, as in real edited video.
    """
    spec = PALETTES[scene]
    for _ in range(100):
        hues = np.array(spec.hues) + rng.uniform(-HUE_SPREAD, HUE_SPREAD, 3)
        pal = hsv_to_rgb(hues, rng.uniform(*spec.sat, 3), rng.uniform(*spec.val, 3))
        if avoid is None or np.abs(pal[:2] - avoid[:2]).mean() >= MIN_PALETTE_CHANGE:
            break
    return pal


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates, y [h, 1] and x [1, w] in [0, 1]."""
    return ((np.arange(h, dtype=F32) + 0.5) / h)[:, None], ((np.arange(w, dtype=F32) + 0.5) / w)[None, :]


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Bilinear value noise in [0, 1], ``cells`` lattice cells across, [h, w].

    Interpolated with gathers, not matrix products: tiny BLAS calls cost milliseconds when
    several processes share the cores.
    """
    g = rng.random((cells + 1, cells + 1), dtype=F32)

    def weights(n: int) -> tuple[np.ndarray, np.ndarray]:
        pos = np.linspace(0, cells, n, dtype=F32)
        i = np.minimum(pos.astype(int), cells - 1)
        return i, pos - i

    iy, fy = weights(h)
    ix, fx = weights(w)
    rows = g[iy] * (1 - fy)[:, None] + g[iy + 1] * fy[:, None]
    return rows[:, ix] * (1 - fx) + rows[:, ix + 1] * fx


def _paint(color: np.ndarray, field: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
    """color * field (+ offset) as an [h, w, 3] image, one channel at a time.

    numpy broadcasts over a 3-wide last axis slowly; per-channel strided writes are fast.
    """
    field = np.asarray(field, F32)
    out = np.empty((*field.shape, 3), F32)
    for c in range(3):
        np.multiply(field, color[c], out=out[..., c])
        if offset is not None:
            out[..., c] += offset[c]
    return out


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-pixel blend of two colours by t [h, w] -> [h, w, 3]."""
    return _paint(b - a, t, a)


def _disc(img: np.ndarray, cy: float, cx: float, r: float) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Normalised distance to (cy, cx) / r inside the disc's bounding box, and that box."""
    h, w = img.shape[:2]
    y0, y1 = max(0, int((cy - r) * h)), min(h, int(np.ceil((cy + r) * h)) + 1)
    x0, x1 = max(0, int((cx - r) * w)), min(w, int(np.ceil((cx + r) * w)) + 1)
    yy = ((np.arange(y0, y1, dtype=F32) + 0.5) / h - cy)[:, None]
    xx = ((np.arange(x0, x1, dtype=F32) + 0.5) / w - cx)[None, :]
    return np.sqrt(yy * yy + xx * xx) / r, (slice(y0, y1), slice(x0, x1))


def _fill(img: np.ndarray, mask: np.ndarray, color: np.ndarray | float) -> None:
    """Paint ``color`` (or colour image) where ``mask``."""
    img[mask] = color if np.ndim(color) <= 1 else color[mask]


def _meadow(rng: np.random.Generator, pal: np.ndarray, h: int, w: int) -> np.ndarray:
    """Horizon: sky gradient with clouds above a textured ground."""
    y, x = _grid(h, w)
    horizon = rng.uniform(0.35, 0.6) + rng.uniform(-0.12, 0.12) * (x - 0.5)
    sky = _lerp(pal[0] * 0.8, np.minimum(pal[0] * 1.25 + 0.1, 1), np.broadcast_to(y / horizon, (h, w)))
    clouds = smooth_noise(rng, h, w, 6) > rng.uniform(0.6, 0.75)
    sky[clouds] = sky[clouds] * 0.4 + 0.6
    grass = 0.75 + 0.5 * smooth_noise(rng, h, w, 24) * (0.5 + y)
    ground = _paint(pal[1], np.clip(grass, 0, 1.4))
    img = ground
    _fill(img, np.broadcast_to(y < horizon, (h, w)), sky)
    dots = (rng.random((h, w)) < 0.01) & (y > horizon + 0.05)
    img[dots] = pal[2]
    return img


def _room(rng: np.random.Generator, pal: np.ndarray, h: int, w: int) -> np.ndarray:
    """Indoor corner: two walls meeting at a vertical edge, a window, converging floorboards."""
    y, x = _grid(h, w)
    xc, yf = rng.uniform(0.3, 0.7), rng.uniform(0.55, 0.75)
    floor_y = yf + rng.uniform(0.1, 0.3) * np.abs(x - xc)
    img = _paint(pal[0], np.broadcast_to(np.where(x < xc, rng.uniform(0.6, 0.8), 1.0), (h, w)))
    wx0 = rng.uniform(0.05, 0.75)
    wy0, ww, wh = rng.uniform(0.12, 0.3), rng.uniform(0.12, 0.22), rng.uniform(0.15, 0.25)
    window = (x > wx0) & (x < wx0 + ww) & (y > wy0) & (y < wy0 + wh)
    bars = (np.abs(x - wx0 - ww / 2) < 0.008) | (np.abs(y - wy0 - wh / 2) < 0.008)
    _fill(img, window & ~bars, np.minimum(pal[2] * 1.3 + 0.2, 1))
    ang = np.arctan2(y - floor_y.min(), x - xc)
    boards = (np.sin(ang * rng.uniform(18, 30)) > 0).astype(F32)
    floor = _paint(pal[1], 0.75 + 0.2 * boards)
    _fill(img, np.broadcast_to(y > floor_y, (h, w)), floor)
    _fill(img, np.abs(y - floor_y) < 0.012, pal[1] * 0.4)
    _fill(img, (np.abs(x - xc) < 0.004) & (y < floor_y), pal[0] * 0.5)
    return img


def _reef(rng: np.random.Generator, pal: np.ndarray, h: int, w: int) -> np.ndarray:
    """Underwater: light-to-dark gradient, caustic network, sandy floor, bubbles."""
    y, x = _grid(h, w)
    f = rng.uniform(12, 22, 4)
    ph = rng.uniform(0, 2 * np.pi, 4)
    v = np.sin(f[0] * x + 1.6 * np.sin(f[1] * y + ph[0]) + ph[1])
    v = v + np.sin(f[2] * y + 1.6 * np.sin(f[3] * x + ph[2]) + ph[3])
    caustic = np.clip(1 - 3 * np.abs(v), 0, 1) * np.clip(1.2 - y, 0, 1)
    water = _paint(pal[2] * 0.3 + 0.15, caustic) + _paint(pal[0], np.broadcast_to(1.15 - 0.6 * y, (h, w)))
    floor_y = rng.uniform(0.7, 0.88) + 0.04 * np.sin(rng.uniform(6, 14) * x + rng.uniform(0, 6))
    sand = _paint(pal[1], 0.8 + 0.3 * smooth_noise(rng, h, w, 16))
    img = water
    _fill(img, np.broadcast_to(y > floor_y, (h, w)), sand)
    for _ in range(rng.integers(3, 8)):
        by, bx, r = rng.uniform(0.05, 0.7), rng.uniform(0, 1), rng.uniform(0.01, 0.03)
        d, box = _disc(img, by, bx, r + 0.006)
        _fill(img[box], np.abs(d * (r + 0.006) - r) < 0.006, np.minimum(pal[0] + 0.4, 1))
    return img


def _plaza(rng: np.random.Generator, pal: np.ndarray, h: int, w: int) -> np.ndarray:
    """Tiled floor in perspective below a plain wall with a band."""
    y, x = _grid(h, w)
    yh, xv = rng.uniform(0.25, 0.45), rng.uniform(0.3, 0.7)
    wall = np.broadcast_to(pal[0], (h, w, 3)).copy()
    band = np.abs(y - rng.uniform(0.08, yh - 0.05)) < 0.025
    _fill(wall, np.broadcast_to(band, (h, w)), pal[2] * 0.7)
    depth = rng.uniform(0.25, 0.45) / np.maximum(y - yh, 1e-3)
    tiles = ((np.floor(depth * 2.0) + np.floor((x - xv) * depth * rng.uniform(3, 5))) % 2).astype(F32)
    fade = np.clip((y - yh) * 6, 0, 1)
    t = 0.5 + (tiles - 0.5) * fade
    floor = _lerp(pal[1], pal[2], t)
    _fill(wall, np.broadcast_to(y > yh, (h, w)), floor)
    return wall


def _forest(rng: np.random.Generator, pal: np.ndarray, h: int, w: int) -> np.ndarray:
    """Forest: vertical trunks of several widths in front of misty light, a canopy, ground."""
    y, x = _grid(h, w)
    img = _lerp(np.minimum(pal[0] * 1.2 + 0.1, 1), pal[0] * 0.8, np.broadcast_to(y, (h, w)))
    canopy = smooth_noise(rng, h, w, 8) * (1 - y * 3) > 0.2
    _fill(img, canopy, pal[0] * 0.45)
    ground_y = rng.uniform(0.75, 0.9)
    img[int(ground_y * h):] = pal[1] * 0.8
    bark = 0.8 + 0.4 * smooth_noise(rng, 4, w, 40)[0]
    for _ in range(rng.integers(6, 13)):
        cx, half = rng.uniform(0, 1), rng.uniform(0.012, 0.06)
        c0, c1 = max(0, int((cx - half) * w)), min(w, int(np.ceil((cx + half) * w)))
        if c1 <= c0:
            continue
        u = (x[0, c0:c1] - cx) / half
        shade = (0.55 + 0.45 * np.sqrt(np.clip(1 - u * u, 0, 1)) * bark[c0:c1]) * rng.uniform(0.45, 1.0)
        bottom = int((ground_y + rng.uniform(0.0, 0.08)) * h)
        img[:bottom, c0:c1] = (shade[:, None] * pal[2][None, :])[None]
    return img


def _desert(rng: np.random.Generator, pal: np.ndarray, h: int, w: int) -> np.ndarray:
    """Dunes: stacked smooth ridges with lit and shaded flanks under a pale sky."""
    y, x = _grid(h, w)
    img = _lerp(pal[0] * 0.85, np.minimum(pal[0] + 0.25, 1), np.broadcast_to(y * 2, (h, w)).clip(0, 1))
    if rng.random() < 0.5:
        d, box = _disc(img, rng.uniform(0.05, 0.25), rng.uniform(0.1, 0.9), 0.05)
        _fill(img[box], d < 1, np.minimum(pal[2] + 0.5, 1))
    base = np.sort(rng.uniform(0.3, 0.85, rng.integers(3, 5)))
    for k, b in enumerate(base):
        om, phs = rng.uniform(5, 12), rng.uniform(0, 2 * np.pi)
        a = rng.uniform(0.03, 0.08)
        crest = b + a * np.sin(om * x + phs)
        slope = np.cos(om * x + phs)
        tone = 0.7 + 0.1 * k + 0.25 * (slope > 0)
        below = y > crest
        for c in range(3):  # per channel: a 3-wide broadcast would be slow
            np.copyto(img[..., c], np.minimum(tone * pal[1][c], 1), where=below)
    return img


def _night(rng: np.random.Generator, pal: np.ndarray, h: int, w: int) -> np.ndarray:
    """Night: dark sky with sparse stars and sometimes a moon, dark hill silhouettes."""
    y, x = _grid(h, w)
    img = _lerp(pal[0] * 0.6, pal[0], np.broadcast_to(y, (h, w)))
    stars = rng.random((h, w)) < 0.008
    img[stars] = (np.minimum(pal[2] * 0.5 + 0.5, 1) * rng.uniform(0.5, 1.0, (stars.sum(), 1))).astype(F32)
    if rng.random() < 0.6:
        d, box = _disc(img, rng.uniform(0.1, 0.35), rng.uniform(0.1, 0.9), rng.uniform(0.03, 0.07))
        _fill(img[box], d < 1, np.minimum(pal[2] * 0.5 + 0.55, 1))
    hills = rng.uniform(0.6, 0.8) + 0.06 * np.sin(rng.uniform(4, 9) * x + rng.uniform(0, 6)) \
        + 0.03 * np.sin(rng.uniform(15, 25) * x)
    _fill(img, np.broadcast_to(y > hills, (h, w)), pal[1] * 0.35)
    return img


def _city(rng: np.random.Generator, pal: np.ndarray, h: int, w: int) -> np.ndarray:
    """Skyline: rectangular buildings with window grids above a street."""
    y, x = _grid(h, w)
    img = _lerp(pal[0] * 0.8, np.minimum(pal[0] * 1.2 + 0.1, 1), np.broadcast_to(y, (h, w)))
    street = rng.uniform(0.8, 0.9)
    left = -rng.uniform(0, 0.1)
    while left < 1:
        bw, top = rng.uniform(0.08, 0.2), rng.uniform(0.2, 0.6)
        body = (x >= left) & (x < left + bw - 0.01) & (y > top) & (y < street)
        tone = pal[1] * rng.uniform(0.55, 1.1)
        _fill(img, body, np.minimum(tone, 1))
        gx, gy = rng.uniform(0.02, 0.035), rng.uniform(0.03, 0.05)
        win = body & (((x - left) % gx) < gx * 0.5) & (((y - top) % gy) < gy * 0.5) & (y > top + 0.02)
        _fill(img, win, np.minimum(pal[2] * rng.uniform(0.6, 1.3), 1))
        left += bw
    _fill(img, np.broadcast_to(y >= street, (h, w)), pal[1] * 0.3)
    _fill(img, (np.abs(y - (street + 1) / 2) < 0.006) & (np.sin(x * 60) > 0), np.array([0.8, 0.8, 0.7], F32))
    return img


SIDE_VIEWS: tuple[Callable[[np.random.Generator, np.ndarray, int, int], np.ndarray], ...] = (
    _meadow, _room, _reef, _plaza, _forest, _desert, _night, _city,
)


def background(rng: np.random.Generator, scene: int, h: int, w: int,
               avoid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A side-view background image [h, w, 3], its fog colour (mean colour) and its palette."""
    pal = sample_palette(rng, scene, avoid)
    img = np.clip(SIDE_VIEWS[scene](rng, pal, h, w), 0, 1).astype(F32)
    return img, img.mean((0, 1)), pal


# ---- overhead views (the `topdown` task: a different imaging modality, like remote sensing)


def _td_meadow(rng: np.random.Generator, pal: np.ndarray, h: int, w: int) -> np.ndarray:
    y, x = _grid(h, w)
    img = _paint(pal[1], 0.7 + 0.5 * smooth_noise(rng, h, w, 20))
    path = np.abs(y - 0.5 - 0.2 * np.sin(rng.uniform(3, 7) * x + rng.uniform(0, 6))) < rng.uniform(0.02, 0.05)
    _fill(img, path, pal[0] * 0.7 + 0.2)
    _fill(img, rng.random((h, w)) < 0.015, pal[2])
    return img


def _td_room(rng: np.random.Generator, pal: np.ndarray, h: int, w: int) -> np.ndarray:
    y, x = _grid(h, w)
    n = rng.uniform(8, 14)
    row = np.floor(y * n)
    joint = ((x + 0.37 * row) % rng.uniform(0.3, 0.5)) < 0.012
    img = _paint(pal[1], np.broadcast_to(0.75 + 0.25 * (row % 2), (h, w)))
    _fill(img, np.broadcast_to((y * n % 1) < 0.08, (h, w)) | joint, pal[1] * 0.45)
    r0, c0 = rng.uniform(0.1, 0.5, 2)
    rug = (y > r0) & (y < r0 + rng.uniform(0.2, 0.4)) & (x > c0) & (x < c0 + rng.uniform(0.2, 0.4))
    _fill(img, rug, pal[0])
    return img


def _td_reef(rng: np.random.Generator, pal: np.ndarray, h: int, w: int) -> np.ndarray:
    y, x = _grid(h, w)
    f = rng.uniform(12, 22, 4)
    v = np.sin(f[0] * x + 1.6 * np.sin(f[1] * y)) + np.sin(f[2] * y + 1.6 * np.sin(f[3] * x))
    img = _paint(pal[0] * 0.25 + 0.15, np.clip(1 - 3 * np.abs(v), 0, 1), pal[1] * 0.8)
    rocks = smooth_noise(rng, h, w, 7) > 0.72
    _fill(img, rocks, pal[2] * 0.5)
    return img


def _td_plaza(rng: np.random.Generator, pal: np.ndarray, h: int, w: int) -> np.ndarray:
    y, x = _grid(h, w)
    a, n = rng.uniform(0, np.pi / 2), rng.uniform(5, 9)
    u, v = x * np.cos(a) - y * np.sin(a), x * np.sin(a) + y * np.cos(a)
    t = ((np.floor(u * n) + np.floor(v * n)) % 2).astype(F32)
    return _lerp(pal[1], pal[2], t)


def _td_forest(rng: np.random.Generator, pal: np.ndarray, h: int, w: int) -> np.ndarray:
    y, x = _grid(h, w)
    img = np.broadcast_to(pal[1] * 0.5, (h, w, 3)).copy()
    for _ in range(rng.integers(12, 25)):
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.06, 0.14)
        d, box = _disc(img, cy, cx, r)
        _fill(img[box], d < 1, _paint(pal[0] * rng.uniform(0.6, 1.0), 1.0 - 0.5 * d))
    return img


def _td_desert(rng: np.random.Generator, pal: np.ndarray, h: int, w: int) -> np.ndarray:
    y, x = _grid(h, w)
    a = rng.uniform(0, np.pi)
    u = x * np.cos(a) + y * np.sin(a)
    v = -x * np.sin(a) + y * np.cos(a)
    s = np.sin(rng.uniform(20, 35) * u + 0.8 * np.sin(rng.uniform(4, 9) * v))
    return _paint(pal[1], 0.75 + 0.3 * (s > 0.3) + 0.1 * s)


def _td_night(rng: np.random.Generator, pal: np.ndarray, h: int, w: int) -> np.ndarray:
    img = _paint(pal[1], 0.4 + 0.3 * smooth_noise(rng, h, w, 5))
    lights = rng.random((h, w)) < 0.012
    img[lights] = np.minimum(pal[2] * 0.5 + 0.5, 1)
    return img


def _td_city(rng: np.random.Generator, pal: np.ndarray, h: int, w: int) -> np.ndarray:
    y, x = _grid(h, w)
    gx, gy = rng.uniform(0.15, 0.3), rng.uniform(0.15, 0.3)
    street = ((x % gx) < 0.035) | ((y % gy) < 0.035)
    block = (np.floor(x / gx) * 7 + np.floor(y / gy) * 13) % 5
    img = _paint(pal[1], 0.6 + 0.1 * block)
    _fill(img, street, pal[0] * 0.4)
    return img


TOP_VIEWS: tuple[Callable[[np.random.Generator, np.ndarray, int, int], np.ndarray], ...] = (
    _td_meadow, _td_room, _td_reef, _td_plaza, _td_forest, _td_desert, _td_night, _td_city,
)


def topdown_background(rng: np.random.Generator, scene: int, h: int,
                       w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An overhead background [h, w, 3], its mean colour and its palette."""
    pal = sample_palette(rng, scene)
    img = np.clip(TOP_VIEWS[scene](rng, pal, h, w), 0, 1).astype(F32)
    return img, img.mean((0, 1)), pal
