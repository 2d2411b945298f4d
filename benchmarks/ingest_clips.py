"""Test videos for the ingest benchmarks: "real-like" clips assembled from photographs.

There is no real video on the benchmark machine and no internet, so shots are made from the
three natural photographs that ship with scikit-learn and matplotlib (china.jpg, flower.jpg,
grace_hopper.jpg): each shot is a window on one photo that pans and zooms slowly (sub-pixel,
so the camera motion is smooth), with sensor noise and a slow flicker of the light. Shots
are joined by hard cuts, dissolves and fades through black at known frames, and the result is
encoded with libx264. Consecutive shots may show far-apart regions of the same photo (as
shot/reverse-shot does), which makes some cuts subtle. This is NOT real video: no object
motion, no motion blur, no compression history, only three source images.

Ground truth is written like the built-in world's (``ground_truth.jsonl``): ``cuts`` are the
first frames of new shots after hard cuts; ``transitions`` give inclusive frame ranges that
belong to no shot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
from matplotlib import cbook
from sklearn.datasets import load_sample_images

PHOTO_NAMES = ("china.jpg", "flower.jpg", "grace_hopper.jpg")


def photos() -> list[np.ndarray]:
    """The three natural RGB photographs available offline."""
    images = list(load_sample_images().images)  # china.jpg, flower.jpg (427 x 640)
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        from PIL import Image

        images.append(np.asarray(Image.open(f).convert("RGB")))
    return images


@dataclass(frozen=True)
class ShotPlan:
    photo: int
    center: tuple[float, float]  # window centre, fractions of the photo
    scale: float  # window height as a fraction of the photo height
    velocity: tuple[float, float]  # centre drift per frame, fractions of the photo
    zoom: float  # multiplicative scale change per frame
    frames: int


def plan_shots(rng: np.random.Generator, seconds: float, fps: float) -> list[ShotPlan]:
    """Shots of 2-8 s; a new shot is another photo or a window at least 0.3 away on the same one."""
    plans: list[ShotPlan] = []
    total = 0
    while total < seconds * fps:
        n = int(rng.uniform(2.0, 8.0) * fps)
        while True:
            photo = int(rng.integers(len(PHOTO_NAMES)))
            center = (float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7)))
            prev = plans[-1] if plans else None
            if prev is None or photo != prev.photo or np.hypot(*np.subtract(center, prev.center)) >= 0.3:
                break
        speed = rng.uniform(0.0, 0.0015)
        angle = rng.uniform(0, 2 * np.pi)
        plans.append(ShotPlan(
            photo, center, float(rng.uniform(0.35, 0.6)),
            (float(speed * np.cos(angle)), float(speed * np.sin(angle))),
            float(1 + rng.uniform(-0.002, 0.002)), n,
        ))
        total += n
    return plans


def render_shot(photo: np.ndarray, plan: ShotPlan, size: tuple[int, int], rng: np.random.Generator) -> list[np.ndarray]:
    """The frames of one shot: an affine window on the photo, noise, slow flicker."""
    width, height = size
    ph, pw = photo.shape[:2]
    flicker_phase = rng.uniform(0, 2 * np.pi)
    noises = noise_bank(size)
    frames = []
    for i in range(plan.frames):
        scale = plan.scale * plan.zoom**i
        window_h = scale * ph
        window_w = window_h * width / height
        window_w = min(window_w, 0.95 * pw)
        window_h = window_w * height / width
        cx = np.clip((plan.center[0] + plan.velocity[0] * i) * pw, window_w / 2, pw - window_w / 2)
        cy = np.clip((plan.center[1] + plan.velocity[1] * i) * ph, window_h / 2, ph - window_h / 2)
        s = window_w / width  # photo pixels per output pixel
        matrix = np.array([[s, 0, cx - window_w / 2], [0, s, cy - window_h / 2]], np.float32)
        frame = cv2.warpAffine(photo, matrix, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REFLECT)
        frame = cv2.convertScaleAbs(frame, alpha=1 + 0.04 * np.sin(flicker_phase + i / 9))
        up, down = noises[int(rng.integers(len(noises)))]
        frames.append(cv2.subtract(cv2.add(frame, up), down))
    return frames


_NOISE: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray]]] = {}


def noise_bank(size: tuple[int, int], n: int = 12, sigma: float = 3.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Gaussian sensor noise as (positive, negative) uint8 parts, drawn once per size: drawing
    fresh noise for every HD frame would dominate the rendering time."""
    if size not in _NOISE:
        rng = np.random.default_rng(12345)
        bank = []
        for _ in range(n):
            noise = np.rint(rng.normal(0, sigma, (size[1], size[0], 3)))
            bank.append((np.clip(noise, 0, 255).astype(np.uint8), np.clip(-noise, 0, 255).astype(np.uint8)))
        _NOISE[size] = bank
    return _NOISE[size]


def blend(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    return ((1 - alpha) * a.astype(np.float32) + alpha * b.astype(np.float32)).astype(np.uint8)


def write_clip(path: Path, seed: int, seconds: float, size: tuple[int, int], fps: int = 25,
               preset: str = "veryfast") -> dict:
    """Render, encode and return the ground-truth record of one assembled clip.

    Frames are streamed to the encoder shot by shot, so long HD clips need little memory.
    """
    rng = np.random.default_rng(seed)
    images = photos()
    cuts: list[int] = []
    transitions: list[dict] = []
    shots: list[dict] = []
    count = 0
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"preset": preset}

        def emit(frames: list[np.ndarray]) -> None:
            nonlocal count
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            count += len(frames)

        previous: np.ndarray | None = None
        for plan in plan_shots(rng, seconds, fps):
            frames = render_shot(images[plan.photo], plan, size, rng)
            if previous is not None:
                kind = rng.choice(["cut", "dissolve", "fade"], p=[0.65, 0.2, 0.15])
                start = count
                if kind == "cut":
                    cuts.append(count)
                elif kind == "dissolve":
                    n = int(rng.integers(6, 16))
                    emit([blend(previous, frames[0], (j + 1) / (n + 1)) for j in range(n)])
                else:
                    out, black, inn = int(rng.integers(5, 11)), int(rng.integers(0, 4)), int(rng.integers(5, 11))
                    dark = np.zeros_like(frames[0])
                    emit([blend(previous, dark, (j + 1) / (out + 1)) for j in range(out)] + [dark] * black
                         + [blend(dark, frames[0], (j + 1) / (inn + 1)) for j in range(inn)])
                if kind != "cut":
                    transitions.append({"start_frame": start, "end_frame": count - 1, "kind": str(kind)})
            shots.append({"start_frame": count, "end_frame": count + len(frames) - 1})
            emit(frames)
            previous = frames[-1]
        container.mux(stream.encode())
    return {"video": path.name, "seed": seed, "fps": fps, "num_frames": count, "width": size[0],
            "height": size[1], "cuts": cuts, "transitions": transitions, "shots": shots}


def write_clips(out: Path, videos: int, seconds: float, size: tuple[int, int], seed: int = 0,
                preset: str = "veryfast") -> Path:
    """``videos`` clips in ``out/videos/`` plus ``out/ground_truth.jsonl``; reused if present."""
    truth = out / "ground_truth.jsonl"
    if truth.exists():
        return out
    (out / "videos").mkdir(parents=True, exist_ok=True)
    records = [
        write_clip(out / "videos" / f"clip_{i:03d}.mp4", seed * 1000 + i, seconds, size, preset=preset)
        for i in range(videos)
    ]
    for r in records:
        r["video"] = f"videos/{r['video']}"
    tmp = truth.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.rename(truth)
    return out
