"""The V x K x F sampler: clips of K consecutive shots x F consecutive frames, streamed from shards.

One shard sample is one video (its index record plus its JPEG frames), so a clip is chosen
from a video's record and only the chosen frames are decoded. Shards are resampled with
replacement from a seeded generator per (seed, rank, loader worker): the stream never ends,
every rank sees the same number of steps, and the same seed gives the same data.
"""

from __future__ import annotations

import io
import json
import random
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from PIL import Image

from vivi.config import DataConfig
from vivi.errors import UserError


@dataclass(frozen=True)
class Clip:
    """Which frames of one video make a training example: ``frames[k][f] = (shot, frame idx)``."""

    key: str
    frames: tuple[tuple[tuple[int, int], ...], ...]


def shot_windows(shot_lengths: Sequence[int], shots: int, frames: int) -> list[int]:
    """Start indices of runs of ``shots`` consecutive shots that each have >= ``frames`` frames."""
    ok = [n >= frames for n in shot_lengths]
    return [i for i in range(len(ok) - shots + 1) if all(ok[i : i + shots])]


def choose_clip(record: dict[str, Any], cfg: DataConfig, rng: random.Random, seed: int = 0) -> Clip | None:
    """Pick a clip from one video's index record, or None when the video cannot supply one.

    ``mode="shots"``: K consecutive shots, F consecutive frames in each (random offsets).
    ``mode="frame"``: one frame fixed per video for the whole run (the YT8M-frames baseline),
    repeated F times so each copy gets its own augmentation.
    """
    lengths = [len(s.get("frames", [])) for s in record.get("shots", [])]
    if cfg.mode == "frame":
        pool = [(s, f) for s, n in enumerate(lengths) for f in range(n)]
        if not pool:
            return None
        pick = pool[zlib.crc32(f"{seed}:{record['key']}".encode()) % len(pool)]
        return Clip(record["key"], ((pick,) * cfg.frames,))
    windows = shot_windows(lengths, cfg.shots, cfg.frames)
    if not windows:
        return None
    start = rng.choice(windows)
    chosen = []
    for s in range(start, start + cfg.shots):
        f0 = rng.randrange(lengths[s] - cfg.frames + 1)
        chosen.append(tuple((s, f) for f in range(f0, f0 + cfg.frames)))
    return Clip(record["key"], tuple(chosen))


def frame_name(shot: int, frame: int) -> str:
    """The shard member suffix of a frame (DESIGN.md: ``<key>.s<shot:03d>.f<idx:03d>.jpg``)."""
    return f"s{shot:03d}.f{frame:03d}.jpg"


def load_frame(data: bytes, size: int) -> torch.Tensor:
    """JPEG bytes -> uint8 ``[3, size, size]``: short side resized to ``size``, centre crop.

    PIL's ``draft`` lets libjpeg decode large frames at a reduced scale directly.
    """
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (size, size))
        img = img.convert("RGB")
        w, h = img.size
        scale = size / min(w, h)
        if scale != 1:
            img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR, reducing_gap=None)
            w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def eligible(records: Sequence[dict[str, Any]], cfg: DataConfig) -> list[dict[str, Any]]:
    """Index records of ok videos that can supply a clip under ``cfg``."""
    rng = random.Random(0)
    return [r for r in records if r.get("status") == "ok" and choose_clip(r, cfg, rng) is not None]


class ClipStream(IterableDataset):
    """Endless stream of uint8 clips ``[K, F, 3, S, S]`` with their exemplar labels."""

    def __init__(self, shards: Sequence[str], cfg: DataConfig, seed: int = 0, rank: int = 0) -> None:
        super().__init__()
        self.shards = list(shards)
        self.cfg = cfg
        self.seed = seed
        self.rank = rank

    def _rng(self) -> random.Random:
        info = get_worker_info()
        return random.Random(f"{self.seed}/{self.rank}/{info.id if info else 0}")

    def __iter__(self) -> Iterator[torch.Tensor]:
        rng = self._rng()
        urls = ({"url": rng.choice(self.shards)} for _ in iter(int, 1))
        samples = wds.tarfile_to_samples()(urls)
        samples = wds.shuffle(self.cfg.shuffle_buffer, initial=min(64, self.cfg.shuffle_buffer), rng=rng)(samples)
        for sample in samples:
            record = json.loads(sample["json"])
            clip = choose_clip(record, self.cfg, rng, self.seed)
            if clip is None:
                continue
            decoded = {sf: load_frame(sample[frame_name(*sf)], self.cfg.load_size) for shot in clip.frames for sf in shot}
            yield torch.stack([torch.stack([decoded[sf] for sf in shot]) for shot in clip.frames])


def make_loader(shards: Sequence[str], cfg: DataConfig, seed: int = 0, rank: int = 0) -> Iterator[torch.Tensor]:
    """Batches of uint8 clips ``[V, K, F, 3, S, S]``; loader workers each stream their own shards."""
    loader = DataLoader(
        ClipStream(shards, cfg, seed, rank),
        batch_size=cfg.videos,
        num_workers=cfg.workers,
        persistent_workers=cfg.workers > 0,
        prefetch_factor=4 if cfg.workers > 0 else None,
    )
    return iter(loader)


def training_shards(records: Sequence[dict[str, Any]], cfg: DataConfig, where: str) -> list[str]:
    """The shards holding at least one usable video; a clear error when there are none."""
    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        raise UserError(f"{where}: no ingested videos with status ok (run `vivi ingest SRC {where}` first)")
    usable = eligible(ok, cfg)
    if not usable:
        need = (
            "a sampled frame" if cfg.mode == "frame" else f"{cfg.shots} consecutive shots of >= {cfg.frames} frames"
        )
        most = max(len(r.get("shots", [])) for r in ok)
        raise UserError(
            f"{where}: none of the {len(ok)} videos has {need} (most shots in a video: {most}); "
            "lower data.shots/data.frames with --set or ingest longer videos"
        )
    return sorted({str(Path(r["shard"])) for r in usable})
