"""A small numpy rasteriser: unions of ellipsoids, ray cast orthographically, z-buffered.

Everything is vectorised: one call casts one part into every frame of a shot at once (or
many parts into many still images), inside boxes that follow each ellipsoid. That keeps the
Python overhead per frame tiny, which is what lets a 40k-frame corpus render in tens of
seconds on two cores.

Screen coordinates: x right, y down, z away from the camera (larger z = farther), all in
pixels; frames are square. A part is an ellipsoid ``(p - c)^T M (p - c) = 1`` with ``M = R diag(1/a^2) R^T``;
the columns of ``R`` are the part's own axes, so textures defined in part coordinates turn
with the object.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np

F32 = np.float32

# Pattern kinds of a material: flat colour, stripes across local axis 0 or 1, a checker.
PLAIN, STRIPES_U, STRIPES_V, CHECKER = 0, 1, 2, 3


def rot_x(a: np.ndarray) -> np.ndarray:
    """Rotations about the screen x axis (positive tilts the top away: seen from above)."""
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([o, z, z, z, c, -s, z, s, c], -1).reshape(*np.shape(a), 3, 3)


def rot_y(a: np.ndarray) -> np.ndarray:
    """Rotations about the vertical axis (yaw)."""
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([c, z, s, z, o, z, -s, z, c], -1).reshape(*np.shape(a), 3, 3)


def rot_z(a: np.ndarray) -> np.ndarray:
    """Rotations in the image plane (about the viewing axis)."""
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([c, -s, z, s, c, z, z, z, o], -1).reshape(*np.shape(a), 3, 3)


def align_x(d: np.ndarray) -> np.ndarray:
    """Rotations whose first column is the unit vector ``d`` ([..., 3]); for limbs."""
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    helper = np.where(np.abs(d[..., 1:2]) < 0.9, [0.0, 1.0, 0.0], [1.0, 0.0, 0.0])
    e2 = np.cross(d, helper)
    e2 /= np.linalg.norm(e2, axis=-1, keepdims=True)
    e1 = np.cross(e2, d)
    return np.stack([d, e1, e2], -1)


@dataclass
class Part:
    """One ellipsoid over T frames (or T batched views), already in screen coordinates."""

    center: np.ndarray  # [T, 3]
    rot: np.ndarray  # [T, 3, 3]
    axes: np.ndarray  # [T, 3] semi-axes
    material: int


@dataclass
class Body:
    """An object over T frames: parts plus materials ([P] or per frame [T, P])."""

    parts: list[Part]
    albedo: np.ndarray  # [P, 3] or [T, P, 3] in [0, 1]
    pattern: np.ndarray  # [P] or [T, P] pattern kind
    freq: np.ndarray  # pattern cycles over the part
    amp: np.ndarray  # pattern contrast
    emissive: np.ndarray  # [P] bool: ignores light
    fog: np.ndarray  # [T] blend towards the fog colour (aerial perspective)
    fog_color: np.ndarray = field(default_factory=lambda: np.zeros(3, F32))  # [3] or [T, 3]
    ident: int | np.ndarray = 0  # written to the id buffer; int or [T]


@dataclass
class Frames:
    """Rendered frames plus the buffers other modalities (thermal, masks) derive from."""

    rgb: np.ndarray  # [T, H, W, 4] float32 RGB + padding (16-byte pixels move fast)
    depth: np.ndarray  # [T, H, W] float32, inf where background
    ident: np.ndarray  # [T, H, W] int8, -1 where background


@dataclass
class Ellipsoids:
    """A flat batch of N ellipsoids, each drawn into frame ``frame[n]`` with its own material."""

    frame: np.ndarray  # [N] int
    center: np.ndarray  # [N, 3]
    rot: np.ndarray  # [N, 3, 3]
    axes: np.ndarray  # [N, 3]
    albedo: np.ndarray  # [N, 3]
    pattern: np.ndarray  # [N] int
    freq: np.ndarray  # [N]
    amp: np.ndarray  # [N]
    emissive: np.ndarray  # [N] bool
    fog: np.ndarray  # [N]
    fog_color: np.ndarray  # [N, 3]
    ambient: np.ndarray  # [N]
    light: np.ndarray  # [N, 3] unit vector towards the light
    ident: np.ndarray  # [N] int

    def take(self, idx: np.ndarray) -> Ellipsoids:
        """The sub-batch ``idx``."""
        return Ellipsoids(**{k: v[idx] for k, v in vars(self).items()})

    @staticmethod
    def concat(batches: list[Ellipsoids]) -> Ellipsoids:
        return Ellipsoids(**{k: np.concatenate([vars(b)[k] for b in batches]) for k in vars(batches[0])})


def part_ellipsoids(p: Part, body: Body, frame: np.ndarray, light: np.ndarray, ambient: np.ndarray) -> Ellipsoids:
    """One part of a body as a batch: ellipsoid t goes to frame ``frame[t]``; light/ambient per t."""
    t, k = len(frame), p.material

    def per_t(x: np.ndarray | int | float, tail: tuple[int, ...] = ()) -> np.ndarray:
        return np.broadcast_to(np.asarray(x), (t, *tail))

    return Ellipsoids(
        frame, p.center, p.rot, p.axes,
        per_t(body.albedo[..., k, :], (3,)), per_t(body.pattern[..., k]), per_t(body.freq[..., k]),
        per_t(body.amp[..., k]), per_t(body.emissive[k]), per_t(body.fog), per_t(body.fog_color, (3,)),
        per_t(ambient), per_t(light, (3,)), per_t(body.ident),
    )


def _extent(center: np.ndarray, rot: np.ndarray, axes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Half widths of the screen bounding boxes of ellipsoids."""
    ra = rot * axes[:, None, :]
    return np.sqrt((ra[:, 0] ** 2).sum(-1)), np.sqrt((ra[:, 1] ** 2).sum(-1))


def draw_ellipsoids(frames: Frames, e: Ellipsoids, unique_frames: bool = False) -> None:
    """Ray cast a batch of ellipsoids and merge them through the z-buffer, in place.

    Each ellipsoid is evaluated in a box of one common size whose origin follows it (tight,
    contiguous arrays); visible pixels are scattered into the flat frame buffers. Where two
    ellipsoids of the batch cover the same pixel the nearer wins (skipped when every
    ellipsoid has its own frame, as for one part over the frames of a shot).
    """
    size = frames.depth.shape[1]
    ex, ey = _extent(e.center, e.rot, e.axes)
    cx, cy, cz = e.center[:, 0], e.center[:, 1], e.center[:, 2]
    x0, y0 = np.floor(cx - ex).astype(np.int64), np.floor(cy - ey).astype(np.int64)
    w = int(np.max(np.ceil(cx + ex) - x0)) + 1
    h = int(np.max(np.ceil(cy + ey) - y0)) + 1
    xs, ys = x0[:, None] + np.arange(w), y0[:, None] + np.arange(h)
    in_x, in_y = (xs >= 0) & (xs < size), (ys >= 0) & (ys < size)
    if not (in_x.any() and in_y.any()):
        return
    dx = (xs + 0.5 - cx[:, None]).astype(F32)[:, None, :]
    dy = (ys + 0.5 - cy[:, None]).astype(F32)[:, :, None]
    m = np.einsum("nik,nk,njk->nij", e.rot, 1.0 / e.axes**2, e.rot).astype(F32)[:, :, :, None, None]
    b = m[:, 0, 2] * dx + m[:, 1, 2] * dy
    cq = (m[:, 0, 0] * dx * dx - 1.0) + m[:, 1, 1] * dy * dy
    cq += (2.0 * m[:, 0, 1] * dx) * dy
    disc = b * b
    disc -= m[:, 2, 2] * cq
    hit = disc > 0
    hit &= in_x[:, None, :]
    hit &= in_y[:, :, None]
    sel = np.flatnonzero(hit)
    if not sel.size:
        return
    n, i, j = sel // (h * w), (sel // w) % h, sel % w
    dz = -(b.ravel()[sel] + np.sqrt(disc.ravel()[sel])) / m[:, 2, 2, 0, 0][n]
    z = dz + cz[n].astype(F32)
    f = (e.frame[n] * size + y0[n] + i) * size + x0[n] + j
    depth = frames.depth.reshape(-1)
    keep = np.flatnonzero(z < depth[f])
    if not unique_frames and keep.size:
        order = keep[np.lexsort((z[keep], f[keep]))]
        first = np.ones(order.size, bool)
        first[1:] = f[order[1:]] != f[order[:-1]]
        keep = order[first]
    n, f = n[keep], f[keep]
    dxs = (x0[n] + j[keep] + 0.5 - cx[n]).astype(F32)
    dys = (y0[n] + i[keep] + 0.5 - cy[n]).astype(F32)
    depth[f] = z[keep]
    frames.ident.reshape(-1)[f] = e.ident[n]
    frames.rgb.reshape(-1, 4)[f, :3] = _colors(e, n, dxs, dys, dz[keep])


def _dot(coef: np.ndarray, n: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray) -> np.ndarray:
    """Per-pixel coef[n] . (dx, dy, dz) for per-ellipsoid coefficient vectors coef [N, 3]."""
    c = coef.astype(F32)
    return c[:, 0][n] * dx + c[:, 1][n] * dy + c[:, 2][n] * dz


def _colors(e: Ellipsoids, n: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray) -> np.ndarray:
    """Shaded, textured, fogged colours of surface points d = p - c of ellipsoids n, [m, 3].

    Shading uses the parametric normal R q, with q = diag(1/a) R^T d on the unit sphere: a
    unit vector without a normalisation pass, exact for spheres and close for ellipsoids;
    n.L = d . (R diag(1/a) R^T L) is linear in d. Textures live in the same part coordinates
    q, so they turn with the part.
    """
    local = np.swapaxes(e.rot, 1, 2) / e.axes[:, :, None]  # [N, k, xyz]: q_k = local[k] . d
    lam = _dot(np.einsum("nkj,nik,ni->nj", local, e.rot, e.light), n, dx, dy, dz)
    amb, fog = e.ambient.astype(F32), e.fog.astype(F32)
    gain = np.where(e.emissive, 0.0, 1.0 - amb) * (1.0 - fog)
    tone = np.where(e.emissive, 1.0, amb) * (1.0 - fog)
    shade = tone[n] + gain[n] * np.maximum(lam, 0.0)
    pat = np.flatnonzero(e.pattern[n] != PLAIN)
    if pat.size:
        kind, npat = e.pattern[n[pat]], n[pat]
        phase = (np.pi * e.freq).astype(F32)[npat]
        u = [np.sin(phase * _dot(local[:, k], npat, dx[pat], dy[pat], dz[pat])) > 0 for k in range(3)]
        tex = np.select([kind == STRIPES_U, kind == STRIPES_V], [u[0], u[1]], u[0] == u[2])
        shade[pat] *= 1.0 - e.amp.astype(F32)[npat] * tex
    base = e.albedo.astype(F32)
    haze = e.fog_color.astype(F32) * fog[:, None]
    return base[n] * shade[:, None] + haze[n]


def draw_body(frames: Frames, body: Body, light: np.ndarray, ambient: np.ndarray) -> None:
    """Rasterise a body over all T frames, in place. light: [T, 3] unit vectors towards the light."""
    frame = np.arange(frames.depth.shape[0])
    for p in body.parts:
        draw_ellipsoids(frames, part_ellipsoids(p, body, frame, light, ambient), unique_frames=True)


_BOX_SIDES = np.array([2, 3, 4, 6, 8, 11, 16, 22, 32, 45, 64, 90, 128, 181, 256, 362, 512])


def draw_batch(frames: Frames, e: Ellipsoids) -> None:
    """Draw many ellipsoids of many frames (still images): grouped by box size, few numpy calls."""
    ex, ey = _extent(e.center, e.rot, e.axes)
    key = np.searchsorted(_BOX_SIDES, 2 * ex + 2) * len(_BOX_SIDES) + np.searchsorted(_BOX_SIDES, 2 * ey + 2)
    for k in np.unique(key):
        draw_ellipsoids(frames, e.take(np.flatnonzero(key == k)))


def sample_background(bg: np.ndarray, cx: np.ndarray, cy: np.ndarray, zoom: np.ndarray, size: int) -> np.ndarray:
    """Per-frame pan/zoom of a precomputed background: nearest-neighbour crops, [T, S, S, 4].

    (cx, cy) is the view centre in background pixels; zoom > 1 magnifies. Pixels are moved
    as single 16-byte items (RGBA float32 viewed as complex128): one flat ``take`` instead of
    a gather over a 3-wide channel axis, which numpy does slowly.
    """
    hb, wb = bg.shape[:2]
    u = (np.arange(size) + 0.5 - size / 2.0)[None, :] / zoom[:, None]
    ix = np.clip(np.floor(u + cx[:, None]).astype(np.intp), 0, wb - 1)
    iy = np.clip(np.floor(u + cy[:, None]).astype(np.intp), 0, hb - 1)
    rgba = np.zeros((hb, wb, 4), F32)
    rgba[..., :3] = bg
    flat = iy[:, :, None] * wb + ix[:, None, :]
    return rgba.view(np.complex128).reshape(-1).take(flat).view(F32).reshape(len(zoom), size, size, 4)


def new_frames(background: np.ndarray) -> Frames:
    """Frames initialised to an RGBA background [T, H, W, 4] (A unused) with an empty z-buffer."""
    t, h, w = background.shape[:3]
    return Frames(
        np.ascontiguousarray(background, dtype=F32),
        np.full((t, h, w), np.inf, F32),
        np.full((t, h, w), -1, np.int8),
    )


def hsv_to_rgb(h: np.ndarray | float, s: np.ndarray | float, v: np.ndarray | float) -> np.ndarray:
    """HSV -> RGB (hue wraps), float32 [..., 3]; scalars take a fast pure-Python path."""
    if np.ndim(h) == np.ndim(s) == np.ndim(v) == 0:
        return np.array(colorsys.hsv_to_rgb(float(h) % 1.0, float(s), float(v)), F32)
    h = np.asarray(h, np.float64) % 1.0
    s, v = np.asarray(s, np.float64), np.asarray(v, np.float64)
    k = (np.array([5.0, 3.0, 1.0]) + h[..., None] * 6.0) % 6.0
    rgb = v[..., None] - v[..., None] * s[..., None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return rgb.astype(F32)
