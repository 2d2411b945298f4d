"""``vivi pretrain``: one explicit training loop, for one process or many (torchrun).

Read top to bottom: process group -> data -> model (DDP) -> optimiser and precomputed
schedule -> resume -> steps (augment on device, forward, loss, backward, step, log,
checkpoint) -> export the backbone. Co-trained presets draw one labelled image batch per step
beside the video batch (:class:`LabelledBatches`); the image baselines read an image folder
in place of videos.

Resuming is exact: every batch is a function of ``(seed, step)`` (see :mod:`vivi.data.batches`)
and a checkpoint holds the model, the optimiser and every random generator of every rank, so
a run stopped at step s and resumed matches an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import math
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, nullcontext
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from vivi.atomic import write_text_atomic
from vivi.config import RunConfig, batch_lr_note
from vivi.data.augment import StepAugment, augment, hsv_jitter
from vivi.data.batches import VideoTable, loader_workers, make_loader, rank_slice, training_videos
from vivi.data.images import ImageFolder, check_batch, check_decodes, image_batches, open_labelled, scan_images
from vivi.data.remote import is_url
from vivi.data.shards import iter_index
from vivi.data.table_cache import cache_key, load_table, save_table
from vivi.errors import JobError, UserError, warn
from vivi.folder_lock import check_not_locked
from vivi.models.backbone import save_run_backbone
from vivi.models import build_model
from vivi.models.ema import momentum_schedule
from vivi.models.vito import VITOModel
from vivi.models.vivi import param_groups
from vivi.provenance import record_start
from vivi.train.checkpoint import (
    checkpoint_path, list_checkpoints, load_resumable, remove_partial_checkpoints, save_checkpoint,
)
from vivi.train.data_record import check_same_data, data_record, write_data_record
from vivi.train.distributed import (
    DistContext, all_gather_objects, all_reduce_mean, barrier, init_distributed, peer_stopped, peer_timed_out,
    process_device, shutdown,
)
from vivi.train.host_memory import reuse_freed_memory
from vivi.train.objective import VIVIObjective
from vivi.train.optimizer import sgd
from vivi.train.prefetch import DevicePrefetcher
from vivi.train.run_folder import check_processes_agree, check_resume_config, hold_run_folder, trim_metrics
from vivi.train.schedule import lr_schedule


def amp_mode(cfg: RunConfig, device: torch.device) -> str:
    """``bf16``, ``fp16`` or ``off``: what ``amp=auto`` means on this device (bf16 on CUDA, off on CPU)."""
    return cfg.amp if cfg.amp != "auto" else ("bf16" if device.type == "cuda" else "off")


def loss_scaler(cfg: RunConfig, device: torch.device) -> torch.amp.GradScaler:
    """fp16's 5 exponent bits flush small gradients to zero: the loss is scaled up before the backward
    and the gradients down before the step, which is skipped (and the scale halved) on inf/NaN. bf16
    has float32's range and needs no scaling: the scaler is then a pass-through."""
    return torch.amp.GradScaler(device.type, enabled=amp_mode(cfg, device) == "fp16")


def autocast_context(cfg: RunConfig, device: torch.device):
    """bf16 autocast on CUDA by default; full precision on CPU, where bf16 is faster only on CPUs with
    bf16 matrix units (e.g. AMX: ~1.6x for the tiny model) and slower on the others: ask for it with amp=bf16."""
    mode = amp_mode(cfg, device)
    if mode == "off":
        return nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]
    return torch.autocast(device_type=device.type, dtype=dtype)


def _frame_source(cfg: RunConfig, data: list[Path | str]) -> VideoTable | ImageFolder:
    """The shards of the ingested folders ``data``, or the image folder of the image baselines."""
    if cfg.data.mode == "images":
        if len(data) != 1:
            raise UserError(f"preset {cfg.preset} trains on one image folder (--images DIR), got {len(data)}")
        if cfg.loss.frame_loss != "supervised":
            folder = scan_images(data[0], labelled=False)
        else:
            folder = open_labelled(f"imagefolder:{data[0]}", cfg.data.labelled_fraction, cfg.seed, cfg.data.load_size)
            cfg.model.classes, cfg.model.class_names = len(folder.classes), list(folder.classes)  # saved in config.json
        check_batch(folder, cfg.data.videos, "data.videos")  # before the run folder is written
        check_decodes(folder, cfg.data.load_size, per_class=cfg.loss.frame_loss == "supervised")
        return folder
    for folder in data:
        if not is_url(str(folder)):
            check_not_locked(Path(folder), "ingest", "written", "train on it once that ingest has finished (a run on "
                             "the videos indexed so far could not resume once more were added)")  # fmt: skip
    return training_videos(iter_index(data), cfg.data, ", ".join(str(d) for d in data))


def augment_in_loader(cfg: RunConfig) -> bool:
    """Whether the loader augments (``augment.where=loader``) rather than the training process.
    The default is the device: batched on a GPU it costs next to nothing, and on a 2-core CPU the
    loader worker (one thread, and a 4x larger float batch to hand over) took more of the cores than
    the batched augmentation in the training process does (benchmarks/results/step-overhead,
    session 6). ``loader`` suits a CPU with cores to spare beyond torch's threads; its draws come
    from ``(seed, step, rank)``, so a resumed run, with any worker count, sees the same ones."""
    return cfg.augment.where == "loader"


def _clip_batches(
    cfg: RunConfig, source: VideoTable | ImageFolder, start: int, ctx: DistContext, augment_seed: int | None = None,
    pin: bool = False,
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """This rank's uint8 ``[V / world, K, F, 3, S, S]`` for steps ``start ..`` (with no labels); from an
    image folder ``[V / world, 1, F, ...]``, each image repeated F times, so Ex-/Rot-ImageNet run
    through the same model and objective as Ex-/Rot-YT-F, and the folder's labels (used by the
    supervised baseline). With ``augment_seed`` the loader workers augment: float frames
    ``[V / world * K * F, 3, s, s]``, each step's draws from ``(augment_seed, step)``. ``pin``: in
    page-locked memory (for a CUDA device)."""
    d, steps = cfg.data, cfg.optim.steps
    images = isinstance(source, ImageFolder)
    wrap = None
    if augment_seed is not None:
        def wrap(items: Dataset) -> Dataset:
            return StepAugment(items, cfg.augment, augment_seed, cfg.channels_last, repeat=d.frames if images else 1)
    if images:
        batches = image_batches(
            source, d.videos, d.load_size, cfg.seed, d.workers, start, steps, ctx.rank, ctx.world, wrap, pin,
            "data.videos",
        )
        if wrap:
            return batches
        return ((x[:, None, None].expand(-1, 1, d.frames, -1, -1, -1), y) for x, y in batches)
    return ((clips, None) for clips in make_loader(source, d, cfg.seed, start, steps, ctx.rank, ctx.world, wrap, pin))


def _labelled_source(cfg: RunConfig, world: int = 1) -> ImageFolder | None:
    """The labelled images of a co-trained preset; their classes size the head (saved in ``cfg``)."""
    d = cfg.data
    if d.labelled_batch < 1:
        return None
    if not d.labelled:
        raise UserError(
            f"preset {cfg.preset} co-trains with labelled images: pass --labelled imagefolder:DIR "
            "(sets data.labelled)"
        )
    folder = open_labelled(d.labelled, d.labelled_fraction, cfg.seed, d.load_size)
    check_batch(folder, d.labelled_batch, "data.labelled_batch", world)  # fills and splits: before the run folder is written
    check_decodes(folder, d.load_size, per_class=True)  # a class none of whose kept images decodes: alike on every rank
    cfg.model.classes, cfg.model.class_names = len(folder.classes), list(folder.classes)
    return folder


class LabelledBatches:
    """Co-training (paper 3.1): one augmented batch of labelled images and their labels per step."""

    def __init__(self, cfg: RunConfig, folder: ImageFolder, start: int, ctx: DistContext, pin: bool = False) -> None:
        d = cfg.data
        self.batches = image_batches(
            folder, d.labelled_batch, d.load_size, cfg.seed + 1, d.workers, start, cfg.optim.steps, ctx.rank, ctx.world,
            pin=pin, setting="data.labelled_batch",
        )
        self.augment = hsv_jitter(cfg.augment)
        self.channels_last = cfg.channels_last

    def next(self, device: torch.device, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        images, labels = next(self.batches)
        x = augment(images.to(device, non_blocking=True), self.augment, gen)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, labels.to(device, non_blocking=True)


class _StopRequest:
    """SIGTERM/SIGINT set a flag; the loop checkpoints at the end of the step and stops (the flag is
    agreed on by all ranks, so they stop at the same step)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class TrainingStopped(JobError):
    """The run was asked to stop (SIGTERM, SIGINT) and saved a checkpoint to resume from."""

    prefix = ""  # a requested stop, not an error
    # EX_TEMPFAIL (sysexits.h), "try again later": a job script or a retry loop can tell a stop to
    # resume from (same command again) from bad input (2), which re-running would not mend
    exit_code = 75


def _rng_state(gen: torch.Generator, device: torch.device) -> dict[str, Tensor]:
    state = {"aug": gen.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Tensor], gen: torch.Generator, device: torch.device) -> None:
    gen.set_state(state["aug"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _wrap(model: torch.nn.Module, cfg: RunConfig, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    """SyncBatchNorm, DDP and torch.compile as configured; the plain model when alone and uncompiled."""
    net: torch.nn.Module = model
    if ctx.enabled:
        if cfg.sync_batchnorm:
            if device.type != "cuda":
                raise UserError("sync_batchnorm=true needs CUDA (torch's SyncBatchNorm); set it to false on CPU")
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    return net


def pretrain(cfg: RunConfig, data: list[Path | str], out: Path, progress: bool = True) -> Path:
    """Train ``cfg`` on the ingested folders ``data`` (paths or URLs; an image folder for ``data.mode=images``);
    resumes exactly from the newest checkpoint in ``out``. Under torchrun each process trains its
    share of the global batch; rank 0 writes the run folder."""
    cfg = copy.deepcopy(cfg)  # the labelled folder sets model.classes
    ctx = init_distributed(cfg.device, cfg.dist_timeout_s)
    try:
        with ExitStack() as held:  # rank 0's lock on the run folder, from when _pretrain takes it to the end
            try:
                run = _pretrain(cfg, data, out, progress, ctx, held)
            except JobError:  # raised alike by every rank (a stop, a NaN): they can still meet
                barrier()
                raise
            barrier()
            return run
    except RuntimeError as e:  # another rank stopped, or stopped answering, while this one was in a collective
        newest = list_checkpoints(out)  # rank 0 may have saved one just before the others learnt of it
        resume = f"last good checkpoint: {newest[-1]}" if newest else "no checkpoint was written yet"
        stopped = (peer_stopped(e, resume) or peer_timed_out(e, cfg.dist_timeout_s, resume)) if ctx.enabled else None
        if stopped is None:
            raise
        raise stopped from None
    finally:
        # after the barrier no rank tears the process group down while rank 0 still writes its last
        # files; a gloo rank that destroyed it early once aborted ("terminate called without an
        # active exception", exit -6) in the CI's torchrun test. A rank's own error skips the
        # barrier: the others may be inside a collective, and torchrun stops them.
        shutdown(ctx)


def _pretrain(
    cfg: RunConfig, data: list[Path | str], out: Path, progress: bool, ctx: DistContext, held: ExitStack
) -> Path:
    device = process_device(ctx, cfg.device)
    if device.type == "cpu":  # before the loader forks its workers: they inherit it
        reuse_freed_memory()
    labelled = _labelled_source(cfg, ctx.world)
    # a restart reads the table it saved instead of every index record (minutes for millions of videos)
    key = cache_key(data, cfg.data) if cfg.data.mode != "images" else None
    cached = load_table(out, key)
    source = cached if cached is not None else _frame_source(cfg, data)
    note = batch_lr_note(cfg) if ctx.main else None
    if note:
        warn(note)
    if ctx.main and isinstance(source, VideoTable) and len(source) < cfg.data.videos:
        warn(f"{', '.join(map(str, data))}: {len(source)} usable videos for data.videos={cfg.data.videos} per batch, "
             "so batches repeat videos and some negatives are a positive's own video; add videos or lower data.videos")
    v = rank_slice(cfg.data.videos, ctx.rank, ctx.world, "data.videos")
    v = v.stop - v.start  # videos per rank
    k, f = cfg.data.shots, cfg.data.frames
    record = data_record(data, source, labelled, cfg.data.labelled)
    # after the errors in the arguments and data, before the folder is read to resume or written:
    # a second run on it stops here, changing nothing
    hold_run_folder(out, ctx.main, held)
    if ctx.main:  # a checkpoint write cut short by a kill left its .pt.tmp behind
        remove_partial_checkpoints(out)
    ckpts = list_checkpoints(out)
    if ctx.enabled:
        check_processes_agree(out, cfg, record, ckpts)
    if ckpts:  # every rank reads the same files here, so every rank stops alike or none does
        check_resume_config(out, cfg)
        check_same_data(out, record, ctx.main)
    barrier()  # every rank has read the run folder before rank 0 rewrites it
    if ctx.main:
        write_text_atomic(out / "config.json", cfg.to_json() + "\n")
        write_data_record(out, record)
        if cached is None:
            save_table(out, key, source)
    cfg.data.workers = loader_workers(cfg.data.workers, device)  # for this machine ("auto" stays in config.json)

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_model(cfg).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = sgd(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr, momentum=cfg.optim.momentum)
    scaler = loss_scaler(cfg, device)
    schedule = lr_schedule(cfg.optim)
    momentum = momentum_schedule(cfg.optim.ema_momentum, cfg.optim.steps)  # VITO's target network
    objective = VIVIObjective(cfg.loss)
    rank_seed = cfg.seed + 1_000_003 * ctx.rank  # augmentation and any global draws differ per rank
    gen = torch.Generator(device=device).manual_seed(rank_seed)
    torch.manual_seed(rank_seed)

    start, last_ckpt = 0, None
    if ckpts:
        last_ckpt, state = load_resumable(ckpts, ctx.main)  # the newest readable one: a cut file is skipped
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start = int(state["step"])
        rngs = state.get("rng", [])
        if len(rngs) == ctx.world:
            _set_rng_state(rngs[ctx.rank], gen, device)
        elif ctx.main:  # the data is still exact (a function of the step); the augmentations are not
            print(
                f"vivi: warning: {last_ckpt} was written by {len(rngs)} process{'es' if len(rngs) != 1 else ''}, "
                f"this run has {ctx.world}: "
                "the data order continues exactly, the augmentation random streams restart",
                file=sys.stderr,
            )
    net = _wrap(model, cfg, ctx, device)
    if ctx.main:
        record_start(out, start, ctx.world, str(device))

    in_loader = augment_in_loader(cfg)
    pin = device.type == "cuda"
    batches = DevicePrefetcher(_clip_batches(cfg, source, start, ctx, rank_seed if in_loader else None, pin), device)
    sup = LabelledBatches(cfg, labelled, start, ctx, pin) if labelled else None
    writer = SummaryWriter(str(out / "tb"), purge_step=start) if ctx.main else None
    if ctx.main:
        trim_metrics(out / "metrics.jsonl", start)
    bar = tqdm(
        total=cfg.optim.steps, initial=start, desc=f"pretrain {cfg.preset}", unit="step",
        disable=not (progress and ctx.main),
    )
    held.callback(bar.close)  # on any error too: the line saying it then starts a line of its own, not the bar's
    net.train()
    tick, seen, step = time.perf_counter(), 0, start
    try:
        with _StopRequest() as stop, (out / "metrics.jsonl").open("a") if ctx.main else nullcontext() as metrics:
            for step in range(start, cfg.optim.steps):
                for group in opt.param_groups:
                    group["lr"] = float(schedule[step])
                # uint8 [V/world, K, F, 3, S, S] (float [V/world*K*F, 3, s, s] augmented by the loader);
                # labels of a labelled image folder
                clips, labels = _next(batches)  # on the device already (DevicePrefetcher): copied in the last step
                frames = clips if in_loader else augment(clips.flatten(0, 2), cfg.augment, gen)
                if cfg.channels_last:
                    frames = frames.contiguous(memory_format=torch.channels_last)
                images = None
                if sup:  # co-training: the labels are those of the extra labelled batch
                    images, labels = sup.next(device, gen)
                with autocast_context(cfg, device):
                    output = net(frames.view(v, k, f, *frames.shape[1:]), generator=gen, images=images)
                terms = objective(output, v, k, f, labels)
                opt.zero_grad(set_to_none=True)
                scaler.scale(terms["loss"]).backward()
                batches.prefetch()  # the next step's batch: loaded and copied while the device runs this backward
                # one collective per step: the loss terms averaged over ranks, and whether any rank must stop
                stop_flag = torch.tensor(float(stop.requested), device=device)
                shared = all_reduce_mean(torch.stack([t.detach().float() for t in terms.values()] + [stop_flag])).cpu()
                values = dict(zip(terms, shared[:-1].tolist()))
                if not all(math.isfinite(x) for x in values.values()):
                    where = f"last good checkpoint: {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
                    listed = ", ".join(f"{n}={x:.4g}" for n, x in values.items())
                    raise JobError(f"step {step}: non-finite loss ({listed}); {where}")
                if cfg.optim.grad_clip > 0:
                    scaler.unscale_(opt)  # clip the true gradients (a no-op without fp16)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                scaler.step(opt)  # opt.step(), unless fp16's scaled gradients overflowed
                scaler.update()
                if isinstance(model, VITOModel):
                    model.update_target(float(momentum[step]))
                seen += frames.shape[0] * ctx.world
                done = step + 1
                if ctx.main and (done % cfg.log_every == 0 or done == cfg.optim.steps):
                    now = time.perf_counter()
                    row = {n: round(x, 6) for n, x in values.items()}
                    row.update(step=done, lr=float(schedule[step]), frames_per_s=round(seen / (now - tick), 1))
                    metrics.write(json.dumps(row) + "\n")
                    metrics.flush()
                    for n, val in row.items():
                        if n != "step":
                            writer.add_scalar(f"train/{n}", val, done)
                    bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.3g}", fps=row["frames_per_s"], refresh=False)
                    tick, seen = now, 0
                bar.update(1)
                stopping = shared[-1].item() > 0
                if done % cfg.ckpt_every == 0 or done == cfg.optim.steps or stopping:
                    rngs = all_gather_objects(_rng_state(gen, device))
                    failed = None
                    if ctx.main:
                        state = {"step": done, "model": model.state_dict(), "optimizer": opt.state_dict(), "rng": rngs,
                                 "scaler": scaler.state_dict()}
                        try:
                            save_checkpoint(out, done, state, cfg.keep_checkpoints)
                        except UserError as e:  # a full disk: rank 0's one line, said once
                            failed = str(e)
                    # every rank learns it, and all stop alike instead of the others waiting in the next step
                    failed = all_gather_objects(failed)[0]
                    if failed:
                        bar.close()
                        raise JobError(failed)
                    last_ckpt = checkpoint_path(out, done)  # named alike on every rank, for the lines below
                if stopping and done < cfg.optim.steps:
                    bar.close()
                    raise TrainingStopped(
                        f"stopped at step {done} of {cfg.optim.steps} on request; checkpoint "
                        f"{last_ckpt}; run the same command again to continue"
                    )
    except torch.OutOfMemoryError:
        bar.close()
        raise UserError(_out_of_memory(cfg, device, ctx, step, last_ckpt)) from None
    bar.close()
    if writer is not None:
        writer.close()
    if ctx.main:
        save_run_backbone(model, cfg, out / "backbone.safetensors")
    return out


def _out_of_memory(cfg: RunConfig, device: torch.device, ctx: DistContext, step: int, last_ckpt: Path | None) -> str:
    """The one-line reason and the way out when a step does not fit the device's memory."""
    d = cfg.data
    frames = d.videos // ctx.world * d.shots * d.frames
    where = f"last good checkpoint: {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
    return (
        f"step {step}: out of {device.type.upper()} memory with {frames} frames of {cfg.augment.image_size} px per "
        f"process (data.videos={d.videos} over {ctx.world} process(es), x {d.shots} shots x {d.frames} frames); "
        f"lower data.videos (and optim.lr with it) or add processes; {where}"
    )


def _next(batches: Iterator[tuple[Tensor, Tensor | None]]) -> tuple[Tensor, Tensor | None]:
    """The next batch; an error raised in a loader worker keeps its one-line message."""
    try:
        return next(batches)
    except UserError as e:  # DataLoader re-raises worker errors with the worker's traceback appended
        raise UserError(str(e).strip().splitlines()[-1].removeprefix("vivi.errors.UserError: ")) from None
