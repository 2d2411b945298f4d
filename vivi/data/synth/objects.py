"""The ten object classes: part layouts (unions of ellipsoids), articulation and instances.

A class is a function from an instance and an articulation phase [T] to parts in object
coordinates: x forward (the object faces +x at yaw 0), y down, z lateral, size about one
unit. Instances vary proportions, colours and textures; colour distributions of different
classes overlap widely, so identity must come from shape and part layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from vivi.data.synth.render import (
    CHECKER,
    PLAIN,
    STRIPES_U,
    STRIPES_V,
    Body,
    Part,
    align_x,
    hsv_to_rgb,
    rot_x,
    rot_y,
    rot_z,
)

CLASS_NAMES = (
    "snowman", "dumbbell", "mushroom", "bird", "fish",
    "quadruped", "caterpillar", "flower", "rocket", "spider",
)
NUM_CLASSES = len(CLASS_NAMES)

# Materials every instance has: 0 primary, 1 secondary, 2 accent, 3 dark, 4 glowing.
PRIMARY, SECONDARY, ACCENT, DARK, GLOW = range(5)


@dataclass
class Instance:
    """One object instance: class, proportions, materials and articulation rhythm.

    :func:`stack_instances` turns B instances of one class into one whose fields carry a
    batch axis (prop [8, B], albedo [B, 5, 3], ...): the layouts are written so that the
    same code then lays out all B at once (one view each), which is how still images batch.
    """

    cls: int
    prop: np.ndarray  # [8] proportion multipliers around 1
    albedo: np.ndarray  # [5, 3]
    pattern: np.ndarray  # [5]
    freq: np.ndarray  # [5]
    amp: np.ndarray  # [5]
    rate_hz: float | np.ndarray  # articulation frequency
    phase0: float | np.ndarray
    scale: float | np.ndarray  # overall size multiplier


@dataclass
class PartSpec:
    """A part in object coordinates; center [T,3] or [3], rot [T,3,3], [3,3] or None."""

    center: np.ndarray
    rot: np.ndarray | None
    axes: tuple[float, float, float] | np.ndarray  # [3] or [T, 3]
    material: int


def sample_instance(rng: np.random.Generator, cls: int, scale_jitter: float = 0.12) -> Instance:
    """A fresh instance of ``cls``: colours from a wide class-biased hue range (overlapping)."""
    u = rng.random(16)
    hue = cls / NUM_CLASSES + 0.05 + 0.6 * (u[0] - 0.5)
    albedo = np.stack([
        hsv_to_rgb(hue, 0.3 + 0.6 * u[1], 0.55 + 0.45 * u[2]),
        hsv_to_rgb(hue + 0.15 + 0.7 * u[3], 0.2 + 0.7 * u[4], 0.4 + 0.55 * u[5]),
        hsv_to_rgb(u[6], 0.6 + 0.4 * u[7], 0.7 + 0.3 * u[8]),
        hsv_to_rgb(u[9], 0.5 * u[10], 0.08 + 0.2 * u[11]),
        hsv_to_rgb(0.17 * u[12], 0.3 + 0.5 * u[13], 1.0),
    ])
    pattern = np.searchsorted([0.4, 0.6, 0.8], rng.random(5), side="right")  # plain 40%, 3 patterns 20% each
    pattern[DARK] = pattern[GLOW] = PLAIN
    return Instance(
        cls=cls,
        prop=rng.uniform(0.85, 1.15, size=8),
        albedo=albedo,
        pattern=pattern,
        freq=rng.uniform(1.5, 4.0, size=5),
        amp=rng.uniform(0.2, 0.45, size=5),
        rate_hz=0.3 + 0.6 * float(u[14]),
        phase0=2 * np.pi * float(u[15]),
        scale=float(np.exp(rng.uniform(-scale_jitter, scale_jitter))),
    )


def stack_instances(items: list[Instance]) -> Instance:
    """B instances of one class as one batched instance (see :class:`Instance`)."""
    assert len({i.cls for i in items}) == 1
    return Instance(
        cls=items[0].cls,
        prop=np.stack([i.prop for i in items], -1),
        albedo=np.stack([i.albedo for i in items]),
        pattern=np.stack([i.pattern for i in items]),
        freq=np.stack([i.freq for i in items]),
        amp=np.stack([i.amp for i in items]),
        rate_hz=np.array([i.rate_hz for i in items]),
        phase0=np.array([i.phase0 for i in items]),
        scale=np.array([i.scale for i in items]),
    )


def _v(*xyz: float | np.ndarray) -> np.ndarray:
    """Stack scalars/[T] arrays into points [T,3] (or [3] when all scalars)."""
    return np.stack(np.broadcast_arrays(*[np.asarray(c, np.float64) for c in xyz]), -1)


def _apply(r: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate points v ([3] or [T,3]) by r ([3,3] or [T,3,3])."""
    return np.einsum("...ij,...j->...i", r, v)


def _snowman(inst: Instance, ph: np.ndarray) -> list[PartSpec]:
    p = inst.prop
    r1, r2, r3 = 0.25 * p[0], 0.18 * p[1], 0.13 * p[2]
    y1 = 0.5 - r1
    y2 = y1 - r1 - 0.7 * r2
    y3 = y2 - r2 - 0.7 * r3
    off = (0.5 + y3 - r3 - 0.1) / 2
    y1, y2, y3 = y1 - off, y2 - off, y3 - off
    bob = 0.03 * np.sin(ph)
    parts = [
        PartSpec(_v(0, y1, 0), None, (r1, r1, r1), PRIMARY),
        PartSpec(_v(0, y2, 0), None, (r2, r2, r2), PRIMARY),
        PartSpec(_v(bob, y3, 0), None, (r3, r3, r3), PRIMARY),
        PartSpec(_v(r3 + 0.07 + bob, y3 + 0.02, 0), None, (0.1 * p[3], 0.028, 0.028), ACCENT),
        PartSpec(_v(0.75 * r3 + bob, y3 - 0.04, 0.05), None, (0.025, 0.025, 0.025), DARK),
        PartSpec(_v(0.75 * r3 + bob, y3 - 0.04, -0.05), None, (0.025, 0.025, 0.025), DARK),
        PartSpec(_v(bob, y3 - 0.8 * r3, 0), None, (0.14, 0.022, 0.14), DARK),
        PartSpec(_v(bob, y3 - r3 - 0.07, 0), None, (0.085, 0.08 * p[4], 0.085), DARK),
    ]
    for side in (-1.0, 1.0):
        wave = 0.5 + 0.45 * np.sin(ph + (side > 0) * 1.3)
        d = _v(0.25 * np.cos(ph), -wave, side * np.ones_like(ph))
        d = d / np.linalg.norm(d, axis=-1, keepdims=True)
        shoulder = _v(0.0, y2 - 0.05, side * 0.85 * r2)
        parts.append(PartSpec(shoulder + 0.15 * d, align_x(d), (0.15 * p[5], 0.022, 0.022), SECONDARY))
    return parts


def _dumbbell(inst: Instance, ph: np.ndarray) -> list[PartSpec]:
    p = inst.prop
    half = 0.3 * p[0]
    spin = rot_x(ph)
    parts = [PartSpec(_v(0, 0, 0), spin, (half + 0.05, 0.035 * p[1], 0.035 * p[1]), SECONDARY)]
    for side in (-1.0, 1.0):
        big, small = 0.2 * p[2], 0.14 * p[2]
        parts.append(PartSpec(_v(side * (half + 0.02), 0, 0), spin, (0.06 * p[3], big, big), PRIMARY))
        parts.append(PartSpec(_v(side * (half + 0.11), 0, 0), spin, (0.045, small, small), PRIMARY))
        parts.append(PartSpec(_v(side * (half - 0.08), 0, 0), None, (0.03, 0.055, 0.055), DARK))
    return parts


def _mushroom(inst: Instance, ph: np.ndarray) -> list[PartSpec]:
    p = inst.prop
    wob = rot_z(0.12 * np.sin(ph)) @ rot_x(0.08 * np.cos(ph))
    cap_c = np.array([0.0, -0.1, 0.0])
    return [
        PartSpec(_v(0, 0.2, 0), None, (0.085 * p[0], 0.25, 0.085 * p[0]), SECONDARY),
        PartSpec(cap_c + _apply(wob, np.array([0.0, 0.0, 0.0])), wob, (0.36 * p[1], 0.15 * p[2], 0.36 * p[1]), PRIMARY),
        PartSpec(cap_c + _apply(wob, np.array([0.0, 0.08, 0.0])), wob, (0.29 * p[1], 0.035, 0.29 * p[1]), DARK),
        PartSpec(_v(0.33, 0.33, 0.1), None, (0.045, 0.13 * p[3], 0.045), SECONDARY),
        PartSpec(_v(0.33, 0.21 + 0.02 * np.sin(ph + 1), 0.1), None, (0.15 * p[4], 0.07, 0.15 * p[4]), PRIMARY),
    ]


def _bird(inst: Instance, ph: np.ndarray) -> list[PartSpec]:
    p = inst.prop
    flap = 0.25 + 0.75 * np.sin(ph)
    parts = [
        PartSpec(_v(0, 0, 0), rot_z(np.full_like(ph, -0.15)), (0.27 * p[0], 0.13, 0.13), PRIMARY),
        PartSpec(_v(0.28, -0.13, 0), None, (0.1 * p[1], 0.1 * p[1], 0.1 * p[1]), PRIMARY),
        PartSpec(_v(0.41 * p[1] ** 0.5, -0.12, 0), None, (0.08 * p[2], 0.025, 0.025), ACCENT),
        PartSpec(_v(0.33, -0.16, 0.07), None, (0.025, 0.025, 0.025), DARK),
        PartSpec(_v(0.33, -0.16, -0.07), None, (0.025, 0.025, 0.025), DARK),
        PartSpec(_v(-0.36, -0.05, 0), rot_z(np.full_like(ph, 0.35)), (0.16 * p[3], 0.03, 0.08), SECONDARY),
    ]
    for side in (-1.0, 1.0):
        r = rot_x(-side * flap)
        pivot = np.array([0.02, -0.07, side * 0.1])
        parts.append(PartSpec(pivot + _apply(r, _v(0.0, 0.0, side * 0.22 * p[4])), r,
                              (0.12, 0.02, 0.22 * p[4]), SECONDARY))
    return parts


def _fish(inst: Instance, ph: np.ndarray) -> list[PartSpec]:
    p = inst.prop
    wag = 0.55 * np.sin(ph)
    body_r = rot_y(-0.12 * wag)
    tail_r = rot_y(wag)
    pivot = _v(-0.33 * p[0], 0.0, 0.0)
    return [
        PartSpec(_v(0, 0, 0), body_r, (0.37 * p[0], 0.17 * p[1], 0.08), PRIMARY),
        PartSpec(pivot + _apply(tail_r, np.array([-0.12, 0.0, 0.0])), tail_r, (0.12, 0.16 * p[2], 0.02), SECONDARY),
        PartSpec(_v(0.02, -0.17 * p[1], 0), None, (0.13 * p[3], 0.07, 0.015), SECONDARY),
        *[PartSpec(_v(0.1, 0.07, side * 0.08), rot_x(np.full_like(ph, side * 0.5)) @ rot_y(side * 0.4 * np.sin(ph + 1)),
                   (0.07, 0.02, 0.05), SECONDARY) for side in (1.0, -1.0)],
        PartSpec(_v(0.25 * p[0], -0.04, 0.065), None, (0.03, 0.03, 0.03), DARK),
        PartSpec(_v(0.25 * p[0], -0.04, -0.065), None, (0.03, 0.03, 0.03), DARK),
    ]


def _quadruped(inst: Instance, ph: np.ndarray) -> list[PartSpec]:
    p = inst.prop
    hx, leg = 0.2 * p[0], 0.17 * p[1]
    parts = [
        PartSpec(_v(0, -0.05, 0), None, (0.3 * p[0], 0.12 * p[2], 0.12), PRIMARY),
        PartSpec(_v(0.29 * p[0], -0.15, 0), rot_z(np.full_like(ph, 0.7)), (0.08, 0.11, 0.07), PRIMARY),
        PartSpec(_v(0.38 * p[0], -0.24 + 0.02 * np.sin(2 * ph), 0), None, (0.12 * p[3], 0.085, 0.085), PRIMARY),
        PartSpec(_v(0.49 * p[0] + 0.03 * (p[3] - 1), -0.21, 0), None, (0.06, 0.045, 0.045), SECONDARY),
        PartSpec(_v(0.36 * p[0], -0.33, 0.05), None, (0.03, 0.06 * p[4], 0.02), DARK),
        PartSpec(_v(0.36 * p[0], -0.33, -0.05), None, (0.03, 0.06 * p[4], 0.02), DARK),
        PartSpec(_v(-0.36 * p[0], -0.13, 0), rot_z(0.6 + 0.3 * np.sin(2 * ph)), (0.12 * p[5], 0.025, 0.025), SECONDARY),
    ]
    for (sx, sz, off) in ((1, 1, 0.0), (1, -1, np.pi), (-1, 1, np.pi), (-1, -1, 0.0)):
        r = rot_z(0.45 * np.sin(ph + off))
        hip = _v(sx * hx, 0.03, sz * 0.08)
        parts.append(PartSpec(hip + _apply(r, _v(0.0, leg, 0.0)), r, (0.04, leg, 0.04), SECONDARY))
    return parts


def _caterpillar(inst: Instance, ph: np.ndarray) -> list[PartSpec]:
    p = inst.prop
    parts = []
    n = 6
    for k in range(n):
        r = (0.09 + 0.008 * k) * p[k % 3]
        y = 0.08 * np.sin(ph - 0.9 * k)
        parts.append(PartSpec(_v(-0.45 + 0.165 * k, y, 0.02 * np.sin(ph - 0.9 * k + 1)), None, (r, r, r),
                              PRIMARY if k % 2 else SECONDARY))
    head = parts[-1].center + np.array([0.06, -0.04, 0.0])
    parts[-1] = PartSpec(head, None, (0.14 * p[3], 0.13 * p[3], 0.13 * p[3]), PRIMARY)
    for side in (-1.0, 1.0):
        d = _v(0.6 + 0.2 * np.sin(2 * ph), -1.0, side * 0.4)
        parts.append(PartSpec(head + 0.16 * d / np.linalg.norm(d, axis=-1, keepdims=True), align_x(d),
                              (0.08, 0.016, 0.016), DARK))
        parts.append(PartSpec(head + np.array([0.1, -0.02, side * 0.06]), None, (0.028, 0.028, 0.028), DARK))
    return parts


def _flower(inst: Instance, ph: np.ndarray) -> list[PartSpec]:
    p = inst.prop
    n_petals = 6  # fixed: instances of a class have the same parts, so they batch
    head_r = rot_z(0.15 * np.sin(ph)) @ rot_y(0.25 * np.sin(0.7 * ph))
    head_c = np.array([0.0, -0.16, 0.0])
    parts = [
        PartSpec(_v(0, 0.2, 0), None, (0.03, 0.3, 0.03), SECONDARY),
        PartSpec(_v(0.1, 0.26, 0), rot_z(np.full_like(ph, -0.5)), (0.12 * p[0], 0.03, 0.05), SECONDARY),
        PartSpec(_v(-0.1, 0.3, 0), rot_z(np.full_like(ph, 0.6)), (0.1 * p[0], 0.03, 0.05), SECONDARY),
        PartSpec(head_c + _apply(head_r, np.array([0.0, 0.0, -0.03])), head_r,
                 (0.08 * p[1], 0.08 * p[1], 0.05), ACCENT),
    ]
    for k in range(n_petals):
        a = 2 * np.pi * k / n_petals + 0.3 * p[6]
        rk = head_r @ rot_z(np.array(a))
        parts.append(PartSpec(head_c + _apply(rk, _v(0.17 * p[2], 0.0, 0.0)), rk,
                              (0.13 * p[2], 0.06 * p[3], 0.022), PRIMARY))
    return parts


def _rocket(inst: Instance, ph: np.ndarray) -> list[PartSpec]:
    p = inst.prop
    flame = 0.12 * p[0] * (1.0 + 0.35 * np.sin(3.1 * ph))
    parts = [
        PartSpec(_v(0, 0, 0), None, (0.12 * p[1], 0.34, 0.12 * p[1]), PRIMARY),
        PartSpec(_v(0, -0.38, 0), None, (0.09 * p[1], 0.13 * p[2], 0.09 * p[1]), ACCENT),
        PartSpec(_v(0.105 * p[1], -0.1, 0), None, (0.03, 0.05, 0.05), DARK),
        PartSpec(_v(0, 0.33 + flame, 0), None, _v(0.06, flame, 0.06), GLOW),
    ]
    for k in range(3):
        rk = rot_y(np.array(2 * np.pi * k / 3 + np.pi / 3))
        parts.append(PartSpec(_apply(rk, np.array([0.15, 0.26, 0.0])), rk, (0.08 * p[3], 0.1, 0.015), SECONDARY))
    return parts


def _spider(inst: Instance, ph: np.ndarray) -> list[PartSpec]:
    p = inst.prop
    parts = [
        PartSpec(_v(0.14, 0.0, 0), None, (0.1, 0.09, 0.1), PRIMARY),
        PartSpec(_v(-0.16, -0.04, 0), None, (0.2 * p[0], 0.15 * p[1], 0.17 * p[0]), PRIMARY),
        PartSpec(_v(0.23, -0.03, 0.035), None, (0.025, 0.025, 0.025), ACCENT),
        PartSpec(_v(0.23, -0.03, -0.035), None, (0.025, 0.025, 0.025), ACCENT),
    ]
    base = np.radians([60.0, 20.0, -20.0, -60.0])
    for side in (-1.0, 1.0):
        for i in range(4):
            a = base[i] + 0.25 * np.sin(ph + i * np.pi / 2 + (side > 0) * np.pi)
            d = _v(np.sin(a), 0.45 * np.ones_like(ph), side * np.cos(a))
            d = d / np.linalg.norm(d, axis=-1, keepdims=True)
            hip = np.array([0.15 - 0.04 * i, 0.02, side * 0.06])
            length = 0.2 * p[2 + i % 4]
            parts.append(PartSpec(hip + np.asarray(length)[..., None] * d, align_x(d), (length, 0.025, 0.025), DARK))
    return parts


LAYOUTS: tuple[Callable[[Instance, np.ndarray], list[PartSpec]], ...] = (
    _snowman, _dumbbell, _mushroom, _bird, _fish, _quadruped, _caterpillar, _flower, _rocket, _spider,
)


@dataclass
class Pose:
    """Where an object is in each of T frames (screen pixels; z in depth units x 100)."""

    x: np.ndarray
    y: np.ndarray
    depth: np.ndarray  # >= 1; apparent size ~ 1 / depth
    px_per_unit: np.ndarray  # object units -> pixels (already includes 1/depth and zoom)
    yaw: np.ndarray  # radians
    tilt: np.ndarray  # radians, positive = seen from above
    roll: np.ndarray  # radians, body pitch in its own plane
    t_s: np.ndarray  # seconds, drives the articulation


def object_rotation(pose: Pose) -> np.ndarray:
    """Camera tilt x yaw x body roll: [T, 3, 3]."""
    return rot_x(pose.tilt) @ rot_y(pose.yaw) @ rot_z(pose.roll)


def object_parts(inst: Instance, pose: Pose) -> list[Part]:
    """Parts of an instance in screen coordinates for every frame of ``pose``."""
    t = len(pose.x)
    ph = inst.phase0 + 2 * np.pi * inst.rate_hz * pose.t_s
    specs = LAYOUTS[inst.cls](inst, ph)
    r_obj = object_rotation(pose)
    s = (pose.px_per_unit * inst.scale)[:, None]
    origin = np.stack([pose.x, pose.y, pose.depth * 100.0], -1)
    parts = []
    for spec in specs:
        c = np.broadcast_to(spec.center, (t, 3))
        axes = np.broadcast_to(_v(*spec.axes) if isinstance(spec.axes, tuple) else spec.axes, (t, 3))
        r = r_obj if spec.rot is None else r_obj @ np.broadcast_to(spec.rot, (t, 3, 3))
        parts.append(Part(origin + s * _apply(r_obj, c), r, np.maximum(axes * s, 0.35), spec.material))
    return parts


def make_body(inst: Instance, pose: Pose, fog: np.ndarray, fog_color: np.ndarray, ident: int) -> Body:
    """A renderable body for an instance in a pose."""
    return Body(
        parts=object_parts(inst, pose),
        albedo=inst.albedo,
        pattern=inst.pattern,
        freq=inst.freq,
        amp=inst.amp,
        emissive=np.array([False, False, False, False, True]),
        fog=fog,
        fog_color=fog_color,
        ident=ident,
    )
