"""`vivi synth`: the built-in world as real H.264 mp4 files plus ground truth.

Videos are rendered in parallel processes; every video's randomness comes from a seed
derived from (seed, index) with numpy's SeedSequence, and its scene type from a per-block
permutation, so the output does not depend on the number of workers.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import av
import numpy as np
from tqdm import tqdm

from vivi.data.synth.scenes import NUM_SCENES
from vivi.data.synth.world import render_video
from vivi.errors import UserError

CODEC_PREFERENCE = ("libx264", "libopenh264", "mpeg4")
CORPUS_DOMAIN = 0  # SeedSequence spawn-key domains keep corpus and suite streams disjoint
SCENE_DOMAIN = 1


def video_seed(seed: int, index: int) -> int:
    """The 32-bit seed of video ``index``; it alone re-renders that video."""
    return int(np.random.SeedSequence(seed, spawn_key=(CORPUS_DOMAIN, index)).generate_state(1)[0])


def video_scene(seed: int, index: int) -> int:
    """Scene type of video ``index``: each block of 8 videos holds every scene type once."""
    block = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SCENE_DOMAIN, index // NUM_SCENES)))
    return int(block.permutation(NUM_SCENES)[index % NUM_SCENES])


@lru_cache(maxsize=1)
def video_codec() -> str:
    """libx264 when PyAV has it; else another H.264 encoder; else MPEG-4 part 2."""
    for name in CODEC_PREFERENCE:
        try:
            av.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - PyAV raises several kinds for a missing codec
            continue
    raise UserError("PyAV: no usable video encoder (tried " + ", ".join(CODEC_PREFERENCE) + ")")


def encode(path: Path, blocks: Iterable[np.ndarray], size: int, fps: float) -> int:
    """Write RGBA uint8 frame blocks as yuv420p video; returns the number of frames.

    Written to a temporary name and renamed, so a killed run leaves no truncated mp4.
    """
    tmp = path.with_name(path.name + ".part")
    codec = video_codec()
    n = 0
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "18", "threads": "1"}
        for block in blocks:
            for rgba in block:
                frame = av.VideoFrame.from_ndarray(rgba, format="rgba")
                frame.pts = n
                container.mux(stream.encode(frame))
                n += 1
        container.mux(stream.encode())
    os.replace(tmp, path)
    return n


def _drain(gen: Iterator[np.ndarray], sink: dict) -> Iterator[np.ndarray]:
    """Pass a generator's blocks through and keep its return value in ``sink``."""
    sink["value"] = yield from gen


def render_one(out: Path, index: int, seed: int, size: int, fps: float) -> dict:
    """Render and encode one video; returns its ground-truth record."""
    name = f"videos/video_{index:05d}.mp4"
    vseed = video_seed(seed, index)
    sink: dict = {}
    n = encode(out / name, _drain(render_video(vseed, video_scene(seed, index), size, fps), sink), size, fps)
    record = {"video": name, **sink["value"], "codec": video_codec()}
    assert record["num_frames"] == n
    return record


def _job(args: tuple[str, int, int, int, float]) -> dict:
    """Pool entry point (picklable)."""
    out, index, seed, size, fps = args
    return render_one(Path(out), index, seed, size, fps)


def _check(videos: int, size: int, fps: float) -> None:
    if videos < 1:
        raise UserError(f"--videos {videos}: need at least one video")
    if size < 32 or size % 2:
        raise UserError(f"size {size}: must be an even number >= 32 (yuv420p)")
    if not fps > 0:
        raise UserError(f"fps {fps}: must be positive")


def render_corpus(
    out: Path,
    videos: int = 160,
    seed: int = 0,
    workers: int | None = None,
    size: int = 96,
    fps: float = 4.0,
    progress: bool = True,
) -> Path:
    """Render ``videos`` videos to ``out/videos/`` and their ground truth to ``out/ground_truth.jsonl``.

    Deterministic given ``seed`` whatever ``workers`` is (default: all cores). Returns ``out``.
    """
    _check(videos, size, fps)
    out = Path(out)
    try:
        (out / "videos").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out}: cannot create output folder ({e.strerror})") from e
    workers = max(1, min(workers or os.cpu_count() or 1, videos))
    jobs = [(str(out), i, seed, size, float(fps)) for i in range(videos)]
    gt_tmp = out / "ground_truth.jsonl.part"
    with open(gt_tmp, "w") as f, tqdm(total=videos, desc="vivi synth", unit="video", disable=not progress) as bar:
        for record in _run(jobs, workers):
            f.write(json.dumps(record) + "\n")
            bar.update(1)
    os.replace(gt_tmp, out / "ground_truth.jsonl")
    return out


def _run(jobs: list[tuple[str, int, int, int, float]], workers: int) -> Iterator[dict]:
    """Records in video order; a process pool when workers > 1 (spawned: safe next to torch)."""
    if workers == 1:
        yield from map(_job, jobs)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_job, jobs, chunksize=1)
