"""mini-VTAB: ten downstream tasks rendered by the video world's generator, as single images.

Groups follow VTAB. *natural*: object and scene recognition in ordinary views.
*specialized*: the same world through another imaging modality (thermal false colour,
overhead views, grayscale microscopy). *structured*: geometric properties (count, position,
orientation, distance). Every image comes from its own seed in a SeedSequence domain the
video corpus never uses, so instances and views are held out from pre-training.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from vivi.data.synth.objects import (
    CLASS_NAMES,
    NUM_CLASSES,
    Instance,
    Pose,
    make_body,
    sample_instance,
    stack_instances,
)
from vivi.data.synth.render import (
    F32,
    PLAIN,
    Ellipsoids,
    Frames,
    draw_batch,
    new_frames,
    part_ellipsoids,
)
from vivi.data.synth.scenes import NUM_SCENES, SCENE_NAMES, background, class_probs, smooth_noise, topdown_background
from vivi.data.synth.world import (
    Light,
    OBJECT_UNIT,
    OCCLUDER_KINDS,
    depth_fog,
    finish,
    light_direction,
    occluder_body,
    sample_light,
)
from vivi.errors import UserError

SUITE_VERSION = 2  # bump when the generator changes, so cached suites are rebuilt
IMAGE_DOMAIN, LABEL_DOMAIN = 2, 3  # SeedSequence spawn-key domains (corpus uses 0 and 1)
SPLITS = ("train", "val", "test")
HEADED = (0, 3, 4, 5)  # snowman (nose), bird, fish, quadruped: yaw is unambiguous over 0-180
CHUNK = 100


# ---- building blocks: still views through the same renderer as the videos


@dataclass
class Placed:
    """An object instance and where it sits in a still view (fractions of the frame)."""

    inst: Instance
    x: float
    y: float
    depth: float
    yaw: float  # radians
    tilt: float
    roll: float
    t_s: float  # articulation time


def random_placed(rng: np.random.Generator, cls: int, depth: tuple[float, float],
                  xy: tuple[float, float] = (0.25, 0.75), tilt_deg: tuple[float, float] = (-10.0, 40.0),
                  scale_jitter: float = 0.12) -> Placed:
    """An instance of ``cls`` in a random pose (any yaw, some tilt and roll, any limb phase)."""
    return Placed(
        sample_instance(rng, cls, scale_jitter), rng.uniform(*xy), rng.uniform(*xy), rng.uniform(*depth),
        rng.uniform(0, 2 * np.pi), np.radians(rng.uniform(*tilt_deg)), rng.uniform(-0.2, 0.2), rng.uniform(0, 10),
    )


Post = Callable[["View", np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class View:
    """Everything one still image needs, sampled from its own generator before any drawing.

    Sampling first and drawing later lets a chunk of views render in a few batched calls
    while every image stays a function of its own seed only.
    """

    rng: np.random.Generator
    background: np.ndarray  # [S, S, 4]
    fog_color: np.ndarray
    light: Light  # T = 1
    zoom: float
    objects: list[Placed]
    occluder: Ellipsoids | None
    post: Post | None = None  # (view, float rgba [S,S,4], ident [S,S], uint8 rgb) -> output image


def plan_view(rng: np.random.Generator, scene: int | None, objects: list[Placed], size: int, *, top: bool = False,
              occluder: bool = False, zoom: float | None = None, headlight: bool = False,
              post: Post | None = None) -> View:
    """Sample the background (none when ``scene`` is None), zoom, light and occluder of one view.

    A still needs no pan margin: its background is rendered at image size (layouts are random
    anyway); the zoom scales the objects.
    """
    if scene is None:
        bg, fog = np.full((size, size, 3), 0.5, F32), np.full(3, 0.5, F32)
    else:
        bg, fog = (topdown_background if top else background)(rng, scene, size, size)[:2]
    zoom = rng.uniform(0.95, 1.2) if zoom is None else zoom
    crop = np.zeros((size, size, 4), F32)
    crop[..., :3] = bg
    light = sample_light(rng, np.zeros(1), 1.0)
    if headlight:
        light.direction = light_direction(light.azimuth_deg, rng.uniform(0, 20, 1))
    occ = None
    if occluder:
        kind = OCCLUDER_KINDS[rng.integers(len(OCCLUDER_KINDS))]
        x = objects[0].x + rng.choice([-1, 1]) * rng.uniform(0.15, 0.35) if objects else rng.uniform(0.1, 0.9)
        body = occluder_body(rng, kind, np.array([x * size]), np.array([rng.uniform(0.2, 0.8) * size]),
                             np.array([rng.uniform(0, 6)]), size)
        occ = part_ellipsoids(body.parts[0], body, np.zeros(1, int), light.direction, light.ambient)
    return View(rng, crop, fog, light, zoom, objects, occ, post)


def _object_ellipsoids(views: list[View], size: int) -> list[Ellipsoids]:
    """All objects of all views, laid out one batched call per class."""
    groups: dict[int, list[tuple[int, int, Placed]]] = {}
    for t, v in enumerate(views):
        for k, p in enumerate(v.objects):
            groups.setdefault(p.inst.cls, []).append((t, k, p))
    out = []
    for items in groups.values():
        frame = np.array([t for t, _, _ in items])
        ps = [p for _, _, p in items]
        col = {f: np.array([getattr(p, f) for p in ps]) for f in ("x", "y", "depth", "yaw", "tilt", "roll", "t_s")}
        zoom = np.array([views[t].zoom for t in frame])
        pose = Pose(col["x"] * size, col["y"] * size, col["depth"], OBJECT_UNIT * size * zoom / col["depth"],
                    col["yaw"], col["tilt"], col["roll"], col["t_s"])
        fog_color = np.stack([views[t].fog_color for t in frame])
        body = make_body(stack_instances([p.inst for p in ps]), pose, depth_fog(pose.depth), fog_color,
                         np.array([k for _, k, _ in items]))
        direction = np.concatenate([views[t].light.direction for t in frame])
        ambient = np.concatenate([views[t].light.ambient for t in frame])
        out += [part_ellipsoids(part, body, frame, direction, ambient) for part in body.parts]
    return out


def render_views(views: list[View]) -> list[np.ndarray]:
    """Draw a batch of same-size views; returns each view's image (after its ``post``)."""
    frames = new_frames(np.stack([v.background for v in views]))
    size = frames.depth.shape[1]
    ells = _object_ellipsoids(views, size)
    for t, v in enumerate(views):
        if v.occluder is not None:
            ells.append(replace(v.occluder, frame=np.array([t])))
    if ells:
        draw_batch(frames, Ellipsoids.concat(ells))
    light = Light(*[np.concatenate([getattr(v.light, f.name) for v in views]) for f in fields(Light)])
    rgb = finish(Frames(frames.rgb.copy(), frames.depth, frames.ident), light)[..., :3]
    return [v.post(v, frames.rgb[t], frames.ident[t], rgb[t]) if v.post else rgb[t] for t, v in enumerate(views)]


def _scene_objects(rng: np.random.Generator, scene: int, n: int, depth: tuple[float, float], **kw) -> list[Placed]:
    """n objects drawn from the scene's class distribution."""
    classes = rng.choice(NUM_CLASSES, size=n, p=class_probs(scene))
    return [random_placed(rng, int(c), depth, **kw) for c in classes]


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a uint8 image with PIL."""
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def _blur(x: np.ndarray, passes: int = 2) -> np.ndarray:
    """Separable 3-tap box blur, ``passes`` times (about a Gaussian), edges replicated."""
    for _ in range(passes):
        p = np.pad(x, [(1, 1), (1, 1)] + [(0, 0)] * (x.ndim - 2), mode="edge")
        x = (p[:-2] + p[1:-1] + p[2:]) / 3
        x = (x[:, :-2] + x[:, 1:-1] + x[:, 2:]) / 3
    return x


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)


# ---- the tasks: (rng, label, size) -> View; the View's image is the example


MAIN_DEPTH = (0.6, 0.9)  # the main object of object-centric tasks fills about a third of the view


def _main_object(rng: np.random.Generator, cls: int) -> tuple[int, list[Placed], bool]:
    """A central main object of class ``cls`` (largest), 0-2 smaller far distractors, maybe an occluder."""
    scene = int(rng.integers(NUM_SCENES))
    main = random_placed(rng, cls, MAIN_DEPTH, xy=(0.38, 0.62))
    far = _scene_objects(rng, scene, int(rng.integers(0, 3)), (1.8, 2.6), xy=(0.1, 0.9))
    return scene, [main, *far], bool(rng.random() < 0.3)


def task_object(rng: np.random.Generator, label: int, size: int) -> View:
    scene, objs, occ = _main_object(rng, label)
    return plan_view(rng, scene, objs, size, occluder=occ)


def task_object_lowres(rng: np.random.Generator, label: int, size: int) -> View:
    scene, objs, occ = _main_object(rng, label)
    return plan_view(rng, scene, objs, max(16, size // 3), occluder=occ,
                     post=lambda v, f, i, rgb: _resize(rgb, size))


def task_scene(rng: np.random.Generator, label: int, size: int) -> View:
    objs = _scene_objects(rng, label, int(rng.integers(1, 5)), (1.0, 2.4), xy=(0.15, 0.85))
    return plan_view(rng, label, objs, size, occluder=bool(rng.random() < 0.3))


IRON = np.array([[0.0, 0.0, 0.05], [0.3, 0.0, 0.5], [0.8, 0.1, 0.3], [1.0, 0.6, 0.0], [1.0, 1.0, 0.85]], F32)


def _thermal_post(v: View, rgba: np.ndarray, ident: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """Heat image: warm objects (facing surfaces warmer), cool background, blur, noise, false colour."""
    lum = rgba[:, :, :3].mean(-1)
    heat = np.where(ident >= 0, lum, 0.15 + 0.3 * lum)
    heat = _blur(heat, 1) + v.rng.normal(0, 0.035, heat.shape)
    heat = np.clip((heat - heat.min()) / max(np.ptp(heat), 1e-3) * v.rng.uniform(0.8, 1.0), 0, 1)
    xs = np.linspace(0, 1, len(IRON))
    return _to_uint8(np.stack([np.interp(heat, xs, IRON[:, c]) for c in range(3)], -1))


def task_thermal(rng: np.random.Generator, label: int, size: int) -> View:
    """Heat, not colour: objects are warm by class-independent amounts, facing surfaces warmer."""
    scene, objs, _ = _main_object(rng, label)
    for p in objs:
        p.inst.albedo = np.full((5, 3), rng.uniform(0.65, 1.0), F32)
        p.inst.pattern = np.full(5, PLAIN)
    return plan_view(rng, scene, objs, size, headlight=True, post=_thermal_post)


def task_topdown(rng: np.random.Generator, label: int, size: int) -> View:
    """Overhead view (like remote sensing): ground texture of the scene type, objects from above."""
    objs = _scene_objects(rng, label, int(rng.integers(1, 4)), (1.4, 2.2), xy=(0.15, 0.85), tilt_deg=(60, 90))
    return plan_view(rng, label, objs, size, top=True, zoom=1.0)


def _microscopy_post(v: View, rgba: np.ndarray, ident: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """Grayscale brightfield: dark specimen on a bright blotchy field, blurred, noisy."""
    size = ident.shape[0]
    shade = rgba[:, :, :3].mean(-1)
    field = v.rng.uniform(0.7, 0.9) + 0.12 * (smooth_noise(v.rng, size, size, 6) - 0.5)
    img = np.where(ident >= 0, shade, field)
    img = _blur(img, 2) + v.rng.normal(0, 0.04, img.shape)
    img = (img - img.mean()) * v.rng.uniform(0.7, 1.2) + img.mean()
    return np.repeat(_to_uint8(img)[..., None], 3, -1)


def task_microscopy(rng: np.random.Generator, label: int, size: int) -> View:
    """Grayscale brightfield-like images of one specimen."""
    main = random_placed(rng, label, MAIN_DEPTH, xy=(0.38, 0.62))
    main.inst.albedo = np.full((5, 3), rng.uniform(0.1, 0.4), F32) * rng.uniform(0.7, 1.3, (5, 1)).astype(F32)
    return plan_view(rng, None, [main], size, post=_microscopy_post)


def _spread_positions(rng: np.random.Generator, n: int, min_dist: float) -> list[tuple[float, float]]:
    """n positions in [0.12, 0.88]^2 at least ``min_dist`` apart (rejection sampling)."""
    while True:
        pts: list[tuple[float, float]] = []
        for _ in range(200):
            x, y = rng.uniform(0.12, 0.88, 2)
            if all(np.hypot(x - a, y - b) >= min_dist for a, b in pts):
                pts.append((float(x), float(y)))
                if len(pts) == n:
                    return pts


def task_count(rng: np.random.Generator, label: int, size: int) -> View:
    """label + 1 objects of random classes, spread so none hides another."""
    scene = int(rng.integers(NUM_SCENES))
    objs = []
    for x, y in _spread_positions(rng, label + 1, 0.28):
        p = random_placed(rng, int(rng.integers(NUM_CLASSES)), (1.3, 1.7))
        p.x, p.y = x, y
        objs.append(p)
    return plan_view(rng, scene, objs, size)


def _in_bin(rng: np.random.Generator, label: int, n: int, lo: float, hi: float) -> float:
    """A value inside bin ``label`` of n equal bins over [lo, hi], away from the bin edges."""
    return lo + (hi - lo) * (label + rng.uniform(0.1, 0.9)) / n


def task_position_x(rng: np.random.Generator, label: int, size: int) -> View:
    p = random_placed(rng, int(rng.integers(NUM_CLASSES)), (1.3, 2.0))
    p.x, p.y = _in_bin(rng, label, 5, 0.1, 0.9), rng.uniform(0.3, 0.7)
    return plan_view(rng, int(rng.integers(NUM_SCENES)), [p], size, zoom=1.0)


def task_orientation(rng: np.random.Generator, label: int, size: int) -> View:
    """Yaw in 30-degree bins over [0, 180): 0 faces right, 90 faces the camera, 180 faces left."""
    p = random_placed(rng, int(rng.choice(HEADED)), (0.7, 1.0), xy=(0.4, 0.6), tilt_deg=(5, 25))
    p.yaw, p.roll = np.radians(_in_bin(rng, label, 6, 0.0, 180.0)), 0.0
    return plan_view(rng, int(rng.integers(NUM_SCENES)), [p], size)


DEPTH_RANGE = (0.8, 4.0)


def task_distance(rng: np.random.Generator, label: int, size: int) -> View:
    """Depth in 5 log-spaced bins; apparent size (instance scale +-5%) and haze are the cues."""
    p = random_placed(rng, int(rng.integers(NUM_CLASSES)), (1.0, 1.0), xy=(0.3, 0.7), scale_jitter=0.05)
    lo, hi = np.log(DEPTH_RANGE[0]), np.log(DEPTH_RANGE[1])
    p.depth = float(np.exp(_in_bin(rng, label, 5, lo, hi)))
    return plan_view(rng, int(rng.integers(NUM_SCENES)), [p], size, zoom=1.0)


@dataclass(frozen=True)
class TaskSpec:
    """One mini-VTAB task: its group, class names, what it measures, and its view sampler."""

    name: str
    group: str  # natural | specialized | structured
    classes: tuple[str, ...]
    description: str
    plan: Callable[[np.random.Generator, int, int], View]

    def render(self, rng: np.random.Generator, label: int, size: int = 64) -> np.ndarray:
        """One example image (uint8 [size, size, 3]) of class ``label``."""
        return render_views([self.plan(rng, label, size)])[0]


def _bins(prefix: str, edges: list[float], fmt: str = "{:g}") -> tuple[str, ...]:
    return tuple(f"{prefix}{fmt.format(a)}-{fmt.format(b)}" for a, b in zip(edges[:-1], edges[1:]))


_DEPTH_EDGES = list(np.round(np.geomspace(*DEPTH_RANGE, 6), 2))
TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("object", "natural", CLASS_NAMES,
             "class of the large central object, any pose and light, random scene, small distractors, "
             "sometimes a foreground occluder", task_object),
    TaskSpec("object_lowres", "natural", CLASS_NAMES,
             "as `object` but rendered at a quarter of the resolution and upscaled (like CIFAR/SVHN)",
             task_object_lowres),
    TaskSpec("scene", "natural", SCENE_NAMES,
             "scene type of a view with 1-4 objects drawn from that scene's class distribution", task_scene),
    TaskSpec("thermal", "specialized", CLASS_NAMES,
             "object class in false-colour 'heat' images: shape and shading only, no surface colour or "
             "texture, blur and sensor noise", task_thermal),
    TaskSpec("topdown", "specialized", SCENE_NAMES,
             "scene type from an overhead view (ground texture seen from above, objects from above), "
             "like remote sensing", task_topdown),
    TaskSpec("microscopy", "specialized", CLASS_NAMES,
             "object class in grayscale brightfield-like images: dark blurred specimen, blotchy field, noise",
             task_microscopy),
    TaskSpec("count", "structured", tuple(str(k) for k in range(1, 7)),
             "number of objects (1-6), random classes, none hidden", task_count),
    TaskSpec("position_x", "structured", _bins("x", [0.1, 0.26, 0.42, 0.58, 0.74, 0.9]),
             "horizontal position of the only object, 5 bins", task_position_x),
    TaskSpec("orientation", "structured", _bins("yaw", list(range(0, 181, 30))),
             "yaw of the only object (snowman, bird, fish or quadruped: a clear head), 6 bins over 0-180 degrees",
             task_orientation),
    TaskSpec("distance", "structured", _bins("d", _DEPTH_EDGES),
             "depth of the only object, 5 log-spaced bins over 0.8-4", task_distance),
)}


# ---- building and caching the suite


def _labels(seed: int, task_index: int, split: int, n: int, classes: int) -> np.ndarray:
    """Balanced labels (counts differ by at most one), shuffled."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(LABEL_DOMAIN, task_index, split)))
    return rng.permutation(np.arange(n) % classes).astype(np.int64)


def image_seed(seed: int, task_index: int, split: int, index: int) -> np.random.SeedSequence:
    """The seed of one suite image: a domain of its own, never used by the video corpus."""
    return np.random.SeedSequence(seed, spawn_key=(IMAGE_DOMAIN, task_index, split, index))


def _chunk(args: tuple[str, int, int, int, int, list[int], int]) -> tuple[str, int, int, np.ndarray]:
    """Render images [start, start + len(labels)) of one split (pool entry point)."""
    name, task_index, split, seed, start, labels, size = args
    spec = TASKS[name]
    views = []
    for k, label in enumerate(labels):
        rng = np.random.default_rng(image_seed(seed, task_index, split, start + k))
        views.append(spec.plan(rng, int(label), size))
    return name, split, start, np.stack(render_views(views))


def _params(seed: int, n: dict[str, int], size: int) -> dict:
    return {"name": "mini-vtab", "version": SUITE_VERSION, "seed": seed, "size": size,
            "n_train": n["train"], "n_val": n["val"], "n_test": n["test"]}


def _cached(out_dir: Path, params: dict) -> bool:
    """True when suite.json matches ``params`` and every task file is present."""
    try:
        meta = json.loads((out_dir / "suite.json").read_text())
    except (OSError, ValueError):
        return False
    same = all(meta.get(k) == v for k, v in params.items())
    names = [t.get("name") for t in meta.get("tasks", [])]
    return same and names == list(TASKS) and all((out_dir / f"{t}.npz").exists() for t in names)


def build_suite(
    out_dir: Path,
    seed: int = 0,
    n_train: int = 800,
    n_val: int = 200,
    n_test: int = 1000,
    size: int = 64,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write ``out_dir/suite.json`` and ``out_dir/<task>.npz`` (uint8 NHWC, int64 labels); returns out_dir.

    A cache: when suite.json already records the same parameters, nothing is rendered. Each
    file is written under a temporary name and renamed; suite.json comes last, so an
    interrupted build never looks complete.
    """
    n = {"train": n_train, "val": n_val, "test": n_test}
    if min(n.values()) < 1 or size < 16:
        raise UserError(f"mini-vtab: need n_train, n_val, n_test >= 1 and size >= 16 (got {n}, size {size})")
    out_dir = Path(out_dir)
    params = _params(seed, n, size)
    if _cached(out_dir, params):
        return out_dir
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "suite.json").unlink(missing_ok=True)
    except OSError as e:
        raise UserError(f"{out_dir}: cannot write the task suite ({e.strerror})") from e
    arrays = _render_all(seed, n, size, workers, progress)
    for name, spec in TASKS.items():
        _write_npz(out_dir / f"{name}.npz", arrays[name])
    meta = {**params, "tasks": [{"name": s.name, "group": s.group, "classes": list(s.classes),
                                 "description": s.description} for s in TASKS.values()]}
    tmp = out_dir / "suite.json.part"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, out_dir / "suite.json")
    return out_dir


def _render_all(seed: int, n: dict[str, int], size: int, workers: int | None,
                progress: bool) -> dict[str, dict[str, np.ndarray]]:
    """All images and labels, per task and split, rendered in chunks over a process pool."""
    arrays: dict[str, dict[str, np.ndarray]] = {}
    jobs = []
    for ti, (name, spec) in enumerate(TASKS.items()):
        arrays[name] = {}
        for si, split in enumerate(SPLITS):
            labels = _labels(seed, ti, si, n[split], len(spec.classes))
            arrays[name][f"y_{split}"] = labels
            arrays[name][f"x_{split}"] = np.empty((n[split], size, size, 3), np.uint8)
            for start in range(0, n[split], CHUNK):
                jobs.append((name, ti, si, seed, start, labels[start : start + CHUNK].tolist(), size))
    total = sum(len(j[5]) for j in jobs)
    with tqdm(total=total, desc="mini-vtab", unit="img", disable=not progress) as bar:
        for name, si, start, images in _run(jobs, workers):
            arrays[name][f"x_{SPLITS[si]}"][start : start + len(images)] = images
            bar.update(len(images))
    return arrays


def _run(jobs: list, workers: int | None) -> Iterator[tuple[str, int, int, np.ndarray]]:
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    if workers == 1:
        yield from map(_chunk, jobs)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap_unordered(_chunk, jobs)


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez to a temporary name, then rename (atomic on one filesystem)."""
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


LABELLED_DOMAIN = 4  # the labelled images of co-training: a seed domain of their own (see IMAGE_DOMAIN)


def render_labelled(out_dir: Path, per_class: int = 100, size: int = 64, seed: int = 0) -> Path:
    """A labelled image folder ``out_dir/<class>/<i>.png`` of the world's object classes (the
    ``object`` task's rendering, from seeds neither the corpus nor mini-VTAB use): the stand-in
    for ImageNet when co-training (``VIVI-Ex(4)-Co(10%)``) or training ``Sup-ImageNet`` on it."""
    from PIL import Image

    spec = TASKS["object"]
    done = out_dir / ".complete"
    if done.is_file() and done.read_text() == f"{per_class} {size} {seed}":
        return out_dir
    for label, name in enumerate(spec.classes):
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        views = [
            spec.plan(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(LABELLED_DOMAIN, label, i))), label, size)
            for i in range(per_class)
        ]
        for i, image in enumerate(render_views(views)):
            Image.fromarray(image).save(folder / f"{i:05d}.png")
    done.write_text(f"{per_class} {size} {seed}")
    return out_dir
