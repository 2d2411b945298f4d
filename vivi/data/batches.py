"""The V x K x F sampler: clips of K consecutive shots x F consecutive frames, read from shards.

One shard sample is one video (its index record plus its JPEG frames). Batches are indexed by
training step: the videos of step ``s`` are positions ``s*V .. s*V+V-1`` of a sequence of seeded
permutations of all usable videos (one permutation per pass), and each video's clip is drawn
from a generator seeded by ``(seed, step, slot)``. A batch is therefore a pure function of
``(seed, step)``: resuming at step ``s`` gives exactly the data an uninterrupted run sees, for
any number of loader workers, and ``N`` ranks each taking their slice of the global batch see
the same videos as one process taking all of it. Shards are read by offset (one seek per
video, only its bytes), so no shuffle buffer is needed and every video is used once per pass.
The offsets come from the index (``shard_span``, recorded at ingest), or for an index without
them from a scan of the shard headers; shards may be local files or URLs (one range request
per video, see :mod:`vivi.data.remote`).
"""

from __future__ import annotations

import os
import random
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vivi.config import DataConfig
from vivi.data.frames import FrameCache, first_member_name, load_frame, tar_members
from vivi.data.remote import LOCAL_ERRORS, is_url, read_failed, read_range, reason
from vivi.data.shards import sample_spans
from vivi.data.tasks import damaged_note, libjpeg_messages
from vivi.errors import UserError, listed, warn


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
    """Pick a clip from one video's index record, or None when the video cannot supply one
    (:func:`clip_of` on its key and the sampled frames of each shot)."""
    return clip_of(record["key"], shot_lengths(record), cfg, rng, seed)


def shot_lengths(record: dict[str, Any]) -> list[int]:
    """How many sampled frames each shot of an index record has: all the sampler needs of its shots."""
    return [len(s.get("frames", [])) for s in record.get("shots", [])]


def clip_of(key: str, lengths: Sequence[int], cfg: DataConfig, rng: random.Random, seed: int = 0) -> Clip | None:
    """Pick a clip from the video ``key`` whose shots have ``lengths`` sampled frames, or None when
    it cannot supply one.

    ``mode="shots"``: K consecutive shots, F consecutive frames in each (random offsets).
    ``mode="frame"``: one frame fixed per video for the whole run (the YT8M-frames baseline),
    repeated F times so each copy gets its own augmentation.
    ``mode="pairs"``: two frames of one shot, ``0..max_gap`` samples apart in either order (VITO's
    temporally displaced views); both lie in the shot, so a pair never crosses a boundary.
    """
    if cfg.mode == "pairs":
        return _displaced_pair(key, lengths, cfg.max_gap, rng)
    if cfg.mode == "frame":
        pool = [(s, f) for s, n in enumerate(lengths) for f in range(n)]
        if not pool:
            return None
        pick = pool[zlib.crc32(f"{seed}:{key}".encode()) % len(pool)]
        return Clip(key, ((pick,) * cfg.frames,))
    windows = shot_windows(lengths, cfg.shots, cfg.frames)
    if not windows:
        return None
    start = rng.choice(windows)
    chosen = []
    for s in range(start, start + cfg.shots):
        f0 = rng.randrange(lengths[s] - cfg.frames + 1)
        chosen.append(tuple((s, f) for f in range(f0, f0 + cfg.frames)))
    return Clip(key, tuple(chosen))


def _displaced_pair(key: str, lengths: Sequence[int], max_gap: int, rng: random.Random) -> Clip | None:
    """A shot with >= 2 samples (any shot when ``max_gap`` is 0), a gap, a first frame, an order."""
    shots = [i for i, n in enumerate(lengths) if n >= (2 if max_gap > 0 else 1)]
    if not shots:
        return None
    s = rng.choice(shots)
    gap = rng.randint(0, min(max_gap, lengths[s] - 1))
    first = rng.randrange(lengths[s] - gap)
    pair = ((s, first), (s, first + gap))
    return Clip(key, (pair if rng.random() < 0.5 else pair[::-1],))


def frame_name(shot: int, frame: int) -> str:
    """The shard member suffix of a frame (:mod:`vivi.data.shards`: ``<key>.s<shot:03d>.f<idx:03d>.jpg``)."""
    return f"s{shot:03d}.f{frame:03d}.jpg"


def step_positions(step: int, count: int, n: int, seed: int) -> np.ndarray:
    """Items (of ``n``) at slots ``step*count .. step*count+count-1`` of an endless sequence of
    seeded permutations, one per pass: every item is used once per pass, and any step's items
    are computed without replaying the steps before it (exact resume, any worker count)."""
    slots = step * count + np.arange(count, dtype=np.int64)
    passes = slots // n
    out = np.empty(count, dtype=np.int64)
    for p in np.unique(passes):
        chosen = passes == p
        out[chosen] = _permutation(n, seed, int(p))[slots[chosen] % n]
    return out


@lru_cache(maxsize=2)
def _permutation(n: int, seed: int, pass_index: int) -> np.ndarray:
    return np.random.default_rng([seed, pass_index]).permutation(n)


def rank_slice(count: int, rank: int, world: int, what: str) -> slice:
    """This rank's share of a global batch of ``count``; the global batch must split evenly."""
    if count % world:
        raise UserError(f"{what}={count} does not split evenly over {world} processes; choose a multiple of {world}")
    per = count // world
    return slice(rank * per, (rank + 1) * per)


@dataclass(frozen=True)
class VideoTable:
    """The usable videos of a training set, in a few flat arrays: each video's key, the sampled
    frames of each of its shots, and where its sample lies in its shard.

    All the sampler needs, and no more: the index records themselves (tens of kB of Python objects
    per video) would take tens of GB per process for a million videos, in every rank and every
    loader worker (a forked worker's reference counts copy the pages it reads). These arrays took
    ~270 bytes a video (benchmarks/table_memory.py) and are shared with forked workers as they are.
    """

    keys: np.ndarray  # [N] bytes: each video's sample key (ASCII: letters, digits, "_", "-")
    shot_starts: np.ndarray  # [N + 1] int64: video i's shots are shot_frames[shot_starts[i]:shot_starts[i + 1]]
    shot_frames: np.ndarray  # [shots of all videos] int32: sampled frames of each shot
    shards: list[str]
    spans: np.ndarray  # [N, 3] int64: shard number, first byte, end byte of the video's tar members

    def __len__(self) -> int:
        return len(self.keys)

    def key(self, video: int) -> str:
        return self.keys[video].decode()

    def shot_lengths(self, video: int) -> list[int]:
        return self.shot_frames[self.shot_starts[video] : self.shot_starts[video + 1]].tolist()


def _shard_path(record: dict[str, Any]) -> str:
    """The record's shard as one canonical string (a URL is kept as it is)."""
    return record["shard"] if is_url(record["shard"]) else str(Path(record["shard"]))


def recorded_span(record: dict[str, Any]) -> tuple[int, int] | None:
    """The sample's byte range that ingest stored in the record; None for an older index."""
    span = record.get("shard_span")
    if span is None:
        return None
    if not (isinstance(span, list) and len(span) == 2 and all(type(x) is int for x in span) and 0 <= span[0] < span[1]):
        raise UserError(
            f"{record['shard']}: sample {record['key']} has a malformed shard_span {span!r} in the index; "
            "re-run `vivi ingest` into a new folder"
        )
    return span[0], span[1]


class _Kept(NamedTuple):
    """What :func:`training_videos` keeps of one index record."""

    lengths: list[int]  # sampled frames of each shot
    shard: str
    span: tuple[int, int] | None  # None: an older index, found from the shard's headers


def _same_file(record: dict, key: str, by_file: dict[tuple[str, object], str], first: dict[str, _Kept]) -> str | None:
    """The key under which the file of ``record`` is already kept, if another; then the smaller key
    wins (what ``--data`` order puts first must not choose the batches): a larger one held is dropped.

    A key is made from a video's name as it was listed, so one file ingested alone, from a list (a
    curated one holds absolute paths) and in its folder has three keys; its ``location`` and
    ``size`` say it is one video. Records without a location are not compared."""
    location = record.get("location")
    if not isinstance(location, str) or not location:
        return None
    held = by_file.setdefault((location, record.get("size")), key)
    if held == key:
        return None
    if key < held:
        first.pop(held, None)
        by_file[(location, record.get("size"))] = key
    return held


def training_videos(records: Iterable[dict[str, Any]], cfg: DataConfig, where: str) -> VideoTable:
    """The videos able to supply a clip under ``cfg``, located in their shards; a clear error when none.

    ``records`` is read once and only what the sampler needs is kept of each. A video listed more
    than once (a folder given twice) is used once: its first record. Videos are ordered by key, so
    the table, and with it every batch, is a function of the videos the index holds: ingest appends
    a record as its worker finishes, and with 2+ workers the same videos came in another order from
    one ingest to the next (another data fingerprint, other batches, another model); nor does the
    order of several ``--data`` folders matter.
    """
    first: dict[str, _Kept] = {}  # key -> what its first record says
    by_file: dict[tuple[str, object], str] = {}  # (location, size) -> the key it is kept under
    canonical: dict[str, str] = {}  # a shard as the records give it -> _shard_path's string, made once
    ok = most = longest = 0
    not_ok: Counter[str] = Counter()  # status -> videos, for the message when none is ok
    for r in records:
        if r.get("status") != "ok":
            not_ok[str(r.get("status"))] += 1
            continue
        ok += 1
        try:  # an index from elsewhere, edited or of another tool: a traceback before
            lengths, key = shot_lengths(r), r["key"]
            if not isinstance(key, str):
                raise TypeError(f"its key is {key!r}, not a string")
        except (KeyError, TypeError, AttributeError) as e:
            name = r.get("key", r.get("source", "?"))
            raise UserError(f"{where}: the index record of {str(name)[:100]} is malformed ({type(e).__name__}: "
                            f"{str(e)[:100]}); re-run `vivi ingest` into a new folder") from None  # fmt: skip
        most, longest = max(most, len(lengths)), max([longest, *lengths])
        if (held := _same_file(r, key, by_file, first)) is not None and held <= key:
            continue  # this file under another key (ingested alone, in a list and in its folder): once
        if key not in first:
            if shard := r.get("shard"):
                first[key] = _Kept(lengths, canonical.get(shard) or canonical.setdefault(shard, _shard_path(r)), recorded_span(r))
            else:
                first[key] = _Kept(lengths, "", None)
    if not ok:
        if not_ok:  # ingested, but nothing came through: "run vivi ingest first" misled
            counts = ", ".join(f"{n} {status}" for status, n in sorted(not_ok.items()))
            raise UserError(f"{where}: no video was ingested with status ok ({counts}); "
                            f"`vivi ingest-stats {where}` lists the reasons")
        raise UserError(f"{where}: no ingested videos with status ok (run `vivi ingest SRC {where}` first)")
    if len(first) < ok:
        warn(f"{where}: {ok - len(first)} videos appear more than once (a folder given twice, or parts "
             "that overlap); each is used once")  # fmt: skip
    rng = random.Random(0)
    usable = [k for k in sorted(first) if clip_of(k, first[k].lengths, cfg, rng) is not None]
    need = {
        "frame": "a sampled frame",
        "pairs": "a shot with 2 sampled frames",
    }.get(cfg.mode, f"{cfg.shots} consecutive shots of >= {cfg.frames} frames" if cfg.shots > 1
          else f"a shot of >= {cfg.frames} frames")
    if usable and len(usable) < len(first):  # data.json's count was the only trace of them
        left = sorted(set(first) - set(usable))
        warn(f"{where}: {len(left)} of {len(first)} videos {'has' if len(left) == 1 else 'have'} no {need}, so "
             f"training leaves {'it' if len(left) == 1 else 'them'} out ({listed(left)})")
    if not usable:
        # both maxima: when the shots are there but too short, the shot count alone misleads
        raise UserError(
            f"{where}: none of the {ok} videos has {need} (most shots in a video: {most}, "
            f"most sampled frames in a shot: {longest}); "
            "lower data.shots/data.frames with --set or ingest longer videos"
        )
    shards = sorted({first[k].shard for k in usable})
    number = {s: i for i, s in enumerate(shards)}
    # an index written before spans were recorded: scan the headers of just the shards it needs
    located = {s: sample_spans(s) for s in sorted({first[k].shard for k in usable if first[k].span is None})}
    spans = []
    for k in usable:
        _, shard, span = first[k]
        span = span or located[shard].get(k)
        if span is None:
            raise UserError(f"{shard}: holds no sample {k!r} although the index says so; re-run `vivi ingest`")
        spans.append((number[shard], *span))
    lengths = [first[k].lengths for k in usable]
    return VideoTable(
        keys=np.array([k.encode() for k in usable], dtype=np.bytes_),
        shot_starts=np.concatenate([[0], np.cumsum([len(n) for n in lengths])]).astype(np.int64),
        shot_frames=np.fromiter((n for video in lengths for n in video), dtype=np.int32),
        shards=shards,
        spans=np.asarray(spans, dtype=np.int64).reshape(-1, 3),
    )


class StepClips(Dataset):
    """Item ``step`` -> this rank's uint8 clips ``[V / world, K, F, 3, S, S]`` of that training step."""

    def __init__(self, table: VideoTable, cfg: DataConfig, seed: int = 0, rank: int = 0, world: int = 1) -> None:
        self.table, self.cfg, self.seed = table, cfg, seed
        self.slots = rank_slice(cfg.videos, rank, world, "data.videos")
        self._files: OrderedDict[int, BinaryIO] = OrderedDict()
        self._pid = os.getpid()
        self.cache = FrameCache(cfg.cache_mb << 20)

    def __getstate__(self) -> dict[str, Any]:
        # open files stay in the process that opened them; each loader process fills its own cache
        return {**self.__dict__, "_files": OrderedDict(), "cache": FrameCache(self.cache.max_bytes)}

    def __getitem__(self, step: int) -> torch.Tensor:
        videos = step_positions(step, self.cfg.videos, len(self.table), self.seed)
        d, slots = self.cfg, range(self.slots.start, self.slots.stop)
        out = torch.empty(len(slots), d.shots, d.frames, 3, d.load_size, d.load_size, dtype=torch.uint8)
        for clip, slot in zip(out, slots):  # each frame copied once, straight into the batch
            torch.stack(self._frames(step, slot, int(videos[slot])), out=clip.view(-1, *clip.shape[2:]))
        return out

    def _frames(self, step: int, slot: int, video: int) -> list[torch.Tensor]:
        """The clip of ``slot`` at ``step``: its K x F frames in order, uint8 ``[3, S, S]`` each."""
        rng = random.Random(f"{self.seed}/{step}/{slot}")
        clip = clip_of(self.table.key(video), self.table.shot_lengths(video), self.cfg, rng, self.seed)
        assert clip is not None, "VideoTable holds only videos that can supply a clip"
        frames = []
        members: dict[str, bytes] | None = None  # read from the shard at the first frame not cached
        for sf in (sf for shot in clip.frames for sf in shot):
            frame = self.cache.get((video, sf))
            if frame is None:
                members = members if members is not None else self._read_members(video)
                frame = self.cache.put((video, sf), self._decode(video, members, frame_name(*sf)))
            frames.append(frame)
        return frames

    def _read_members(self, video: int) -> dict[str, bytes]:
        """The video's tar members by suffix (``s000.f003.jpg`` ...), from one seek + read of its span."""
        shard, start, end = (int(x) for x in self.table.spans[video])
        path = self.table.shards[shard]
        try:
            data = self._read(shard, start, end)
        except Exception as e:
            if isinstance(e, UserError) or not read_failed(path, e):
                raise
            retry = "check the connection and credentials, then re-run the same command to resume"
            then = retry if is_url(path) else "re-run `vivi ingest` on its folder"
            raise UserError(f"{self._where(video)}: unreadable ({reason(e)}); {then}") from None
        self._check_span(video, data, start, end)
        try:
            return tar_members(data)
        except LOCAL_ERRORS as e:
            raise UserError(f"{self._where(video)}: unreadable ({e}); re-run `vivi ingest` on its folder") from None

    def _check_span(self, video: int, data: bytes, start: int, end: int) -> None:
        """The span must start with a header of the video's own sample: an index that does not
        match its shards (a shard replaced, or a wrong span) is named instead of read as garbage."""
        key = self.table.key(video)
        first = first_member_name(data)
        short = len(data) != end - start
        if short or (first is not None and first.split(".", 1)[0] != key):
            found = f"{len(data)} bytes" if short else (f"member {first!r}" if first else "no tar header")
            raise UserError(
                f"{self._where(video)}: the index places it at bytes {start}-{end} of the shard, which gave "
                f"{found}; the index does not match its shards: re-run `vivi ingest` into a new folder"
            )

    def _decode(self, video: int, members: dict[str, bytes], name: str) -> torch.Tensor:
        """A frame; libjpeg's complaints about its data (printed naming nothing) name the sample."""
        messages: list[str] = []
        try:
            with libjpeg_messages(messages):
                frame = load_frame(members[name], self.cfg.load_size)
        except (KeyError, OSError, ValueError, SyntaxError) as e:
            raise UserError(f"{self._where(video)}: frame {name} missing or unreadable ({e})") from None
        if messages:  # rare (a damaged shard); the frame cache keeps it from repeating within a worker
            warn(damaged_note(f"{self._where(video)}: frame {name}", messages))
        return frame

    def _where(self, video: int) -> str:
        return f"{self.table.shards[int(self.table.spans[video, 0])]}: sample {self.table.key(video)}"

    def _read(self, shard: int, start: int, end: int) -> bytes:
        """Bytes ``start:end`` of a shard: one ranged request for a URL, one seek + read of a local file."""
        path = self.table.shards[shard]
        if is_url(path):
            return read_range(path, start, end)
        f = self._file(shard)
        f.seek(start)
        # no further than the file's end: read(n) allocates n bytes first, and an index claiming a span of
        # 2**50 bytes was a MemoryError; a short read is then "truncated", naming the shard and sample
        return f.read(max(0, min(end, os.fstat(f.fileno()).st_size) - start))

    def _file(self, shard: int, keep: int = 32) -> BinaryIO:
        """The local shard opened in this process (a forked loader worker opens its own), kept across steps."""
        if self._pid != os.getpid():
            self._files, self._pid = OrderedDict(), os.getpid()
        if shard in self._files:
            self._files.move_to_end(shard)
            return self._files[shard]
        if len(self._files) >= keep:
            self._files.popitem(last=False)[1].close()
        self._files[shard] = f = open(self.table.shards[shard], "rb")  # noqa: SIM115 - kept open across steps
        return f


def loader_workers(setting: int | str, device: torch.device) -> int:
    """The loader processes ``data.workers`` asks for: a number as given; ``auto``: one, except on a
    CPU whose cores the threads of torch (of every training process on the machine) already take.

    There a worker process preempts one of torch's threads, and every parallel op spins until that
    thread runs again, so the worker's few ms of decoding per batch cost the step several times
    their length. In the training process the loader's work costs just its own time: the real
    ``vivi pretrain`` loop at tiny scale on 2 cores took 143 ms per step against 166 with a worker
    (benchmarks/results/step-overhead). On a GPU the CPU is free while the device computes: one worker.
    """
    if setting != "auto":
        return int(setting)
    if device.type != "cpu":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun's training processes on this machine
    return 1 if cores > torch.get_num_threads() * processes else 0


def step_loader(dataset: Dataset, start: int, steps: int, workers: int, pin: bool = False) -> Iterator[Any]:
    """Items ``start .. steps-1`` of a step-indexed dataset, in order, built by ``workers`` processes;
    ``pin``: in page-locked memory (for a CUDA device: the copy then leaves the CPU free at once)."""
    loader = DataLoader(
        dataset,
        batch_size=None,
        sampler=range(start, steps),
        num_workers=workers,
        prefetch_factor=4 if workers > 0 else None,
        pin_memory=pin,
    )
    return iter(loader)


def make_loader(
    table: VideoTable,
    cfg: DataConfig,
    seed: int = 0,
    start: int = 0,
    steps: int = 1 << 62,
    rank: int = 0,
    world: int = 1,
    wrap: Callable[[Dataset], Dataset] | None = None,
    pin: bool = False,
) -> Iterator[Any]:
    """Batches of uint8 clips ``[V / world, K, F, 3, S, S]`` for steps ``start .. steps-1``; ``wrap``
    turns them into something else inside the loader workers (e.g. :class:`vivi.data.augment.StepAugment`);
    ``pin``: delivered in page-locked memory, for a copy to a CUDA device."""
    clips = StepClips(table, cfg, seed, rank, world)
    workers = loader_workers(cfg.workers, torch.device("cuda" if pin else "cpu"))  # pinned: for a CUDA device
    return step_loader(wrap(clips) if wrap else clips, start, steps, workers, pin)
