"""Shots and videos of the built-in world: what changes within a shot, across shots, across videos.

Within a shot the same object instances persist while they translate, turn (yaw tens of
degrees per second, tilt), change depth, articulate and get occluded; the camera pans and
zooms; light direction, brightness and contrast drift. Across shots of a video the scene
type stays, everything else is re-sampled (background layout and palette, instances,
camera, light). Across videos the scene type changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vivi.data.synth.objects import CLASS_NAMES, Instance, Pose, make_body, sample_instance
from vivi.data.synth.render import (
    F32,
    Body,
    Frames,
    Part,
    draw_body,
    hsv_to_rgb,
    new_frames,
    rot_y,
    rot_z,
    sample_background,
)
from vivi.data.synth.scenes import SCENE_NAMES, background, class_probs

MIN_SHOT_S = 9.0
MAX_SHOT_S = 14.0
SHOTS_PER_VIDEO = (4, 7)
GRADUAL_P = 0.22
TRANSITION_FRAMES = (4, 6)
OBJECT_UNIT = 0.42  # object size (units) -> fraction of the frame at depth 1, zoom 1
BG_MARGIN = 1.7  # background side / frame side, room for pan and zoom-out


@dataclass
class Light:
    """Per-frame lighting: direction towards the light, ambient, global tone."""

    direction: np.ndarray  # [T, 3]
    azimuth_deg: np.ndarray  # [T]
    angle_deg: np.ndarray  # [T] angle from the viewing axis
    ambient: np.ndarray  # [T]
    brightness: np.ndarray  # [T] added
    contrast: np.ndarray  # [T] multiplies around 0.5


def light_direction(azimuth_deg: np.ndarray, angle_deg: np.ndarray) -> np.ndarray:
    """Unit vectors towards the light; angle 0 = from the camera."""
    a, b = np.radians(azimuth_deg), np.radians(angle_deg)
    return np.stack([np.cos(a) * np.sin(b), np.sin(a) * np.sin(b), -np.cos(b)], -1)


def _ramp(rng: np.random.Generator, lo: float, hi: float, u: np.ndarray) -> np.ndarray:
    """A linear drift between two values drawn from [lo, hi], u in [0, 1]."""
    a, b = rng.uniform(lo, hi, 2)
    return a + (b - a) * u


def sample_light(rng: np.random.Generator, t: np.ndarray, dur: float) -> Light:
    """Light that turns (8-25 deg/s) and whose brightness and contrast drift."""
    az = rng.uniform(0, 360) + rng.choice([-1, 1]) * rng.uniform(8, 25) * t
    ang = rng.uniform(30, 65) + 10 * np.sin(2 * np.pi * rng.uniform(0.05, 0.15) * t + rng.uniform(0, 6))
    u = np.clip(t / dur, 0, 1)
    return Light(
        light_direction(az, ang), az % 360, ang,
        np.full_like(t, rng.uniform(0.25, 0.45)), _ramp(rng, -0.1, 0.1, u), _ramp(rng, 0.75, 1.15, u),
    )


def finish(frames: Frames, light: Light) -> np.ndarray:
    """Light gradient, brightness/contrast drift and quantisation: uint8 RGBA [T, H, W, 4].

    The soft gradient along the light direction makes the light's drift visible on the
    background too. Channels are scaled one at a time (strided) because broadcasting over a
    3-wide last axis is several times slower in numpy.
    """
    rgb = frames.rgb
    s = rgb.shape[1]
    g = (np.arange(s, dtype=F32) + 0.5) / s - 0.5
    lx, ly = light.direction[:, 0].astype(F32), light.direction[:, 1].astype(F32)
    gain = 1.0 + 0.35 * (lx[:, None, None] * g[None, None, :] + ly[:, None, None] * g[None, :, None])
    c = light.contrast.astype(F32)[:, None, None]
    gain *= c * 255.0
    for k in range(3):
        rgb[..., k] *= gain
    rgb += ((0.5 - 0.5 * c + light.brightness.astype(F32)[:, None, None]) * 255.0 + 0.5)[..., None]
    np.clip(rgb, 0.0, 255.0, out=rgb)
    return rgb.astype(np.uint8)  # keeping the 4th channel: slicing it off costs more than encoding it


@dataclass
class Camera:
    """View centre in background pixels and zoom, per frame."""

    cx: np.ndarray
    cy: np.ndarray
    zoom: np.ndarray


def sample_camera(rng: np.random.Generator, t: np.ndarray, dur: float, size: int, bg_side: int) -> Camera:
    """A pan across up to ~0.4 frame widths and a zoom drift of up to +-25% per shot."""
    u = t / dur
    z0 = rng.uniform(0.95, 1.2)
    zoom = z0 * np.exp(rng.uniform(-0.25, 0.25) * u)
    cx = bg_side / 2 + _ramp(rng, -0.2, 0.2, u) * size
    cy = bg_side / 2 + _ramp(rng, -0.1, 0.1, u) * size
    return Camera(cx, cy, zoom)


def sample_track(rng: np.random.Generator, t: np.ndarray, dur: float, size: int, cam: Camera) -> Pose:
    """An object's motion: drift + wobble, depth change, fast yaw, tilt sway, body roll."""
    u = t / dur
    start = rng.uniform(0.22, 0.78, 2)
    end = np.clip(start + rng.uniform(-0.3, 0.3, 2), 0.18, 0.82)
    wob = rng.uniform(0.01, 0.04) * np.sin(2 * np.pi * rng.uniform(0.1, 0.3) * t + rng.uniform(0, 6))
    zoom_rel = cam.zoom / cam.zoom[np.argmin(np.abs(t))]
    x = size / 2 + ((start[0] + (end[0] - start[0]) * u + wob) * size - size / 2) * zoom_rel
    y = size / 2 + ((start[1] + (end[1] - start[1]) * u) * size - size / 2) * zoom_rel
    d0 = rng.uniform(1.0, 2.2)
    depth = np.clip(d0 * np.exp(rng.uniform(-0.35, 0.35) * u), 0.9, 2.6)
    yaw = rng.uniform(0, 2 * np.pi) + rng.choice([-1, 1]) * np.radians(rng.uniform(25, 70)) * t
    yaw = yaw + 0.3 * np.sin(2 * np.pi * rng.uniform(0.1, 0.3) * t)
    sway = np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * t + rng.uniform(0, 6))
    tilt = np.radians(rng.uniform(0, 30) + rng.uniform(5, 20) * sway)
    roll = 0.15 * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t + rng.uniform(0, 6))
    return Pose(x, y, depth, OBJECT_UNIT * size * cam.zoom / depth, yaw, tilt, roll, t)


def depth_fog(depth: np.ndarray) -> np.ndarray:
    """Aerial perspective: farther objects fade towards the background's mean colour."""
    return np.clip(0.4 * (depth - 1.0) / 1.6, 0.0, 0.45)


OCCLUDER_KINDS = ("pole", "leaf", "ball")


def occluder_body(rng: np.random.Generator, kind: str, x: np.ndarray, y: np.ndarray, spin: np.ndarray,
                  size: int) -> Body:
    """A big, dark foreground shape passing in front of everything (z small)."""
    t = len(x)
    if kind == "pole":
        axes, r = np.array([0.07, 0.9, 0.07]), rot_z(np.full(t, rng.uniform(-0.25, 0.25))) @ rot_y(spin)
    elif kind == "leaf":
        angle = np.full(t, rng.uniform(0, np.pi)) + 0.2 * np.sin(spin)
        axes, r = np.array([0.35, 0.08, 0.12]), rot_z(angle) @ rot_y(spin)
    else:
        axes, r = np.full(3, rng.uniform(0.14, 0.2)), rot_y(spin)
    albedo = np.repeat(hsv_to_rgb(rng.uniform(), rng.uniform(0, 0.5), rng.uniform(0.15, 0.45))[None], 5, 0)
    center = np.stack([x, y, np.full(t, 10.0)], -1)
    return Body(
        parts=[Part(center, r, np.broadcast_to(axes * size, (t, 3)), 0)],
        albedo=albedo, pattern=np.array([1, 0, 0, 0, 0]), freq=np.full(5, rng.uniform(2, 5)),
        amp=np.full(5, 0.2), emissive=np.zeros(5, bool), fog=np.zeros(t), ident=99,
    )


def sample_occluder(rng: np.random.Generator, t: np.ndarray, dur: float, size: int) -> tuple[Body, str]:
    """An occluder that crosses the frame once during the shot (3-7 s crossing)."""
    kind = OCCLUDER_KINDS[rng.integers(len(OCCLUDER_KINDS))]
    cross = rng.uniform(3.0, 7.0)
    t0 = rng.uniform(0.0, max(dur - cross, 0.1))
    s = np.clip((t - t0) / cross, -0.2, 1.2)
    a, b = (-0.4, 1.4) if rng.random() < 0.5 else (1.4, -0.4)
    x = (a + (b - a) * s) * size
    y = (rng.uniform(0.2, 0.8) + rng.uniform(-0.1, 0.1) * s) * size
    spin = rng.uniform(0, 6) + rng.uniform(-1.5, 1.5) * t
    return occluder_body(rng, kind, x, np.broadcast_to(y, x.shape), spin, size), kind


def _state(inst: Instance, pose: Pose, i: int, size: int) -> dict:
    """Ground-truth attributes of an object at frame index i of its track."""
    return {
        "x": round(float(pose.x[i] / size), 4),
        "y": round(float(pose.y[i] / size), 4),
        "yaw_deg": round(float(np.degrees(pose.yaw[i]) % 360), 2),
        "tilt_deg": round(float(np.degrees(pose.tilt[i])), 2),
        "size": round(float(pose.px_per_unit[i] * inst.scale / size), 4),
        "depth": round(float(pose.depth[i]), 4),
    }


def _light_state(light: Light, i: int) -> dict:
    return {
        "azimuth_deg": round(float(light.azimuth_deg[i]), 2),
        "angle_deg": round(float(light.angle_deg[i]), 2),
        "ambient": round(float(light.ambient[i]), 3),
        "brightness": round(float(light.brightness[i]), 3),
        "contrast": round(float(light.contrast[i]), 3),
    }


def render_shot(rng: np.random.Generator, scene: int, n_own: int, pre: int, post: int, size: int,
                fps: float, prev_palette: np.ndarray | None = None) -> tuple[np.ndarray, dict, np.ndarray]:
    """One shot: ``pre + n_own + post`` frames (the extra ones feed transitions), uint8 RGBA [T,S,S,4].

    Returns the frames, the shot's ground truth (attributes at its first and last own frame)
    and its palette (the next shot's must differ from it).
    """
    t = (np.arange(pre + n_own + post) - pre) / fps
    dur = n_own / fps
    side = int(BG_MARGIN * size)
    bg, fog_color, palette = background(rng, scene, side, side, avoid=prev_palette)
    cam = sample_camera(rng, t, dur, size, side)
    light = sample_light(rng, t, dur)
    frames = new_frames(sample_background(bg, cam.cx, cam.cy, cam.zoom, size))
    n_obj = int(rng.choice([1, 2, 3, 4], p=[0.2, 0.35, 0.3, 0.15]))
    classes = rng.choice(len(CLASS_NAMES), size=n_obj, p=class_probs(scene))
    first, last = pre, pre + n_own - 1
    objects = []
    for k, cls in enumerate(classes):
        inst = sample_instance(rng, int(cls))
        pose = sample_track(rng, t, dur, size, cam)
        draw_body(frames, make_body(inst, pose, depth_fog(pose.depth), fog_color, k), light.direction, light.ambient)
        objects.append({"cls": int(cls), "cls_name": CLASS_NAMES[cls], **_state(inst, pose, first, size),
                        "end": _state(inst, pose, last, size)})
    occluder = None
    if rng.random() < 0.5:
        body, occluder = sample_occluder(rng, t, dur, size)
        draw_body(frames, body, light.direction, light.ambient)
    gt = {
        "count": n_obj,
        "objects": objects,
        "light": {**_light_state(light, first), "end": _light_state(light, last)},
        "camera": {"zoom": round(float(cam.zoom[first]), 3), "zoom_end": round(float(cam.zoom[last]), 3),
                   "pan_px": round(float(np.hypot(cam.cx[last] - cam.cx[first], cam.cy[last] - cam.cy[first])), 2)},
        "occluder": occluder,
        "palette": np.round(palette, 3).tolist(),
    }
    return finish(frames, light), gt, palette


@dataclass
class Boundary:
    """Between two shots: a hard cut (frames 0) or a gradual transition of ``frames`` frames."""

    kind: str  # "cut" | "dissolve" | "fade"
    frames: int


def plan_video(rng: np.random.Generator, fps: float) -> tuple[list[int], list[Boundary]]:
    """Shot lengths in frames (each >= 9 s) and the boundaries between them."""
    n = int(rng.integers(SHOTS_PER_VIDEO[0], SHOTS_PER_VIDEO[1] + 1))
    min_frames = int(np.ceil(MIN_SHOT_S * fps))
    lengths = [max(min_frames, int(round(rng.uniform(MIN_SHOT_S, MAX_SHOT_S) * fps))) for _ in range(n)]
    bounds = []
    for _ in range(n - 1):
        if rng.random() < GRADUAL_P:
            kind = "dissolve" if rng.random() < 0.5 else "fade"
            bounds.append(Boundary(kind, int(rng.integers(TRANSITION_FRAMES[0], TRANSITION_FRAMES[1] + 1))))
        else:
            bounds.append(Boundary("cut", 0))
    return lengths, bounds


def blend(kind: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Transition frames from the outgoing (a) and incoming (b) shot's extra frames."""
    n = len(a)
    u = ((np.arange(n) + 1) / (n + 1)).astype(F32)[:, None, None, None]
    a, b = a.astype(F32), b.astype(F32)
    if kind == "dissolve":
        out = a * (1 - u) + b * u
    else:
        out = np.where(u < 0.5, a * np.clip(1 - 2 * u, 0, 1), b * np.clip(2 * u - 1, 0, 1))
    return (out + 0.5).astype(np.uint8)


def render_video(video_seed: int, scene: int, size: int, fps: float):
    """Yield frame blocks (uint8 RGBA [n, S, S, 4]) of one video; finally return its ground truth.

    A generator so the encoder can consume shots as they are rendered (bounded memory).
    """
    rng = np.random.default_rng(video_seed)
    lengths, bounds = plan_video(rng, fps)
    shots, cuts, transitions = [], [], []
    cursor = 0
    tail = palette = None
    for i, n_own in enumerate(lengths):
        pre = bounds[i - 1].frames if i > 0 else 0
        post = bounds[i].frames if i < len(bounds) else 0
        frames, gt, palette = render_shot(rng, scene, n_own, pre, post, size, fps, palette)
        if i > 0:
            b = bounds[i - 1]
            if b.kind == "cut":
                cuts.append(cursor)
            else:
                yield blend(b.kind, tail, frames[:pre])
                transitions.append({"start_frame": cursor, "end_frame": cursor + pre - 1, "kind": b.kind})
                cursor += pre
        yield frames[pre : pre + n_own]
        shots.append({"start_frame": cursor, "end_frame": cursor + n_own - 1,
                      "start_s": round(cursor / fps, 3), "end_s": round((cursor + n_own) / fps, 3), **gt})
        cursor += n_own
        tail = frames[pre + n_own :]
    return {
        "seed": int(video_seed), "scene": int(scene), "scene_name": SCENE_NAMES[scene],
        "fps": float(fps), "num_frames": cursor, "width": size, "height": size,
        "cuts": cuts, "transitions": transitions, "shots": shots,
    }
