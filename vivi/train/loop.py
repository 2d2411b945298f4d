"""``vivi pretrain``: one explicit training loop.

Read top to bottom: data -> model -> optimiser and precomputed schedule -> (resume) -> steps
(augment on device, forward, loss, backward, step, log, checkpoint) -> export the backbone.
Co-trained presets draw one labelled image batch per step beside the video batch
(:class:`LabelledBatches`); the image baselines read an image folder in place of videos.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from vivi.config import RunConfig, from_dict
from vivi.data.augment import augment, hsv_jitter
from vivi.data.batches import make_loader, training_shards
from vivi.data.images import ImageFolder, image_batches, open_labelled, scan_images
from vivi.data.shards import read_index
from vivi.errors import UserError
from vivi.models.backbone import save_backbone
from vivi.models.vivi import VIVIModel, param_groups
from vivi.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from vivi.train.objective import VIVIObjective
from vivi.train.schedule import lr_schedule


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name!r} requested but CUDA is not available on this machine")
    return torch.device(name)


def autocast_context(cfg: RunConfig, device: torch.device):
    """bf16 autocast on CUDA by default; full precision on CPU (bf16 there is slower, not faster)."""
    mode = cfg.amp if cfg.amp != "auto" else ("bf16" if device.type == "cuda" else "off")
    if mode == "off":
        return nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]
    return torch.autocast(device_type=device.type, dtype=dtype)


def _check_resume_config(run: Path, cfg: RunConfig) -> None:
    saved = run / "config.json"
    if saved.is_file():
        old = from_dict(json.loads(saved.read_text()))
        if old.to_dict() != cfg.to_dict():
            raise UserError(
                f"{run}: holds a run with a different config (see {saved}); use a new --out folder to start afresh"
            )


def _frame_source(cfg: RunConfig, data: list[Path]) -> list[str] | ImageFolder:
    """The shards of the ingested folders ``data``, or the image folder of the image baselines."""
    if cfg.data.mode == "images":
        if len(data) != 1:
            raise UserError(f"preset {cfg.preset} trains on one image folder (--images DIR), got {len(data)}")
        return scan_images(data[0], labelled=False)
    return training_shards(read_index(data), cfg.data, ", ".join(str(d) for d in data))


def _clip_batches(cfg: RunConfig, source: list[str] | ImageFolder, seed: int) -> Iterator[Tensor]:
    """uint8 ``[V, K, F, 3, S, S]``; from an image folder ``[V, 1, F, ...]``, each image repeated F times,
    so Ex-/Rot-ImageNet run through the same model and objective as Ex-/Rot-YT-F."""
    if isinstance(source, ImageFolder):
        d = cfg.data
        images = image_batches(source, d.videos, d.load_size, seed, d.workers)
        return (x[:, None, None].expand(-1, 1, d.frames, -1, -1, -1) for x, _ in images)
    return make_loader(source, cfg.data, seed=seed)


def _labelled_source(cfg: RunConfig) -> ImageFolder | None:
    """The labelled images of a co-trained preset; their classes size the head (saved in ``cfg``)."""
    d = cfg.data
    if d.labelled_batch < 1:
        return None
    if not d.labelled:
        raise UserError(
            f"preset {cfg.preset} co-trains with labelled images: pass --labelled imagefolder:DIR "
            "(sets data.labelled)"
        )
    folder = open_labelled(d.labelled, d.labelled_fraction, cfg.seed)
    cfg.model.classes = len(folder.classes)
    return folder


class LabelledBatches:
    """Co-training (paper 3.1): one augmented batch of labelled images and their labels per step."""

    def __init__(self, cfg: RunConfig, folder: ImageFolder, seed: int) -> None:
        d = cfg.data
        self.batches = image_batches(folder, d.labelled_batch, d.load_size, seed, d.workers)
        self.augment = hsv_jitter(cfg.augment)
        self.channels_last = cfg.channels_last

    def next(self, device: torch.device, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        images, labels = next(self.batches)
        x = augment(images.to(device, non_blocking=True), self.augment, gen)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, labels.to(device, non_blocking=True)


def pretrain(cfg: RunConfig, data: list[Path], out: Path, progress: bool = True) -> Path:
    """Train ``cfg`` on the ingested folders ``data`` (an image folder for ``data.mode=images``);
    resumes from the newest checkpoint in ``out``."""
    cfg = copy.deepcopy(cfg)  # the labelled folder sets model.classes
    labelled = _labelled_source(cfg)
    device = resolve_device(cfg.device)
    source = _frame_source(cfg, data)
    out.mkdir(parents=True, exist_ok=True)
    if list_checkpoints(out):
        _check_resume_config(out, cfg)
    (out / "config.json").write_text(cfg.to_json() + "\n")

    torch.manual_seed(cfg.seed)
    model = VIVIModel(cfg).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr, momentum=cfg.optim.momentum)
    schedule = lr_schedule(cfg.optim)
    objective = VIVIObjective(cfg.loss)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)

    start, last_ckpt = 0, None
    if ckpts := list_checkpoints(out):
        last_ckpt = ckpts[-1]
        state = load_checkpoint(last_ckpt)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["aug_rng"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["step"])

    v, k, f = cfg.data.videos, cfg.data.shots, cfg.data.frames
    seed = cfg.seed * 1_000_003 + start
    batches = _clip_batches(cfg, source, seed)
    sup = LabelledBatches(cfg, labelled, seed + 1) if labelled else None
    writer = SummaryWriter(str(out / "tb"), purge_step=start)
    bar = tqdm(total=cfg.optim.steps, initial=start, desc=f"pretrain {cfg.preset}", unit="step", disable=not progress)
    model.train()
    tick, seen = time.perf_counter(), 0
    with (out / "metrics.jsonl").open("a") as metrics:
        for step in range(start, cfg.optim.steps):
            for group in opt.param_groups:
                group["lr"] = float(schedule[step])
            clips = next(batches).to(device, non_blocking=True)  # uint8 [V, K, F, 3, S, S]
            frames = augment(clips.flatten(0, 2), cfg.augment, gen)
            if cfg.channels_last:
                frames = frames.contiguous(memory_format=torch.channels_last)
            images, labels = sup.next(device, gen) if sup else (None, None)
            with autocast_context(cfg, device):
                output = model(frames.view(v, k, f, *frames.shape[1:]), generator=gen, images=images)
            terms = objective(output, v, k, f, labels)
            loss = terms["loss"]
            if not math.isfinite(loss.item()):
                values = ", ".join(f"{n}={t.item():.4g}" for n, t in terms.items())
                where = f"last good checkpoint: {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
                raise UserError(f"step {step}: non-finite loss ({values}); {where}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            opt.step()
            seen += clips.shape[0] * k * f
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.optim.steps:
                now = time.perf_counter()
                row = {n: round(t.item(), 6) for n, t in terms.items()}
                row.update(step=done, lr=float(schedule[step]), frames_per_s=round(seen / (now - tick), 1))
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                for n, val in row.items():
                    if n != "step":
                        writer.add_scalar(f"train/{n}", val, done)
                bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.3g}", fps=row["frames_per_s"])
                tick, seen = now, 0
            bar.update(1)
            if done % cfg.ckpt_every == 0 or done == cfg.optim.steps:
                state = {
                    "step": done,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "aug_rng": gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                }
                last_ckpt = save_checkpoint(out, done, state, cfg.keep_checkpoints)
    bar.close()
    writer.close()
    backbone = model.backbone.to(memory_format=torch.contiguous_format)
    save_backbone(
        backbone,
        cfg.model.backbone,
        out / "backbone.safetensors",
        extra={"image_size": str(cfg.augment.image_size), "preset": cfg.preset, "scale": cfg.scale},
    )
    return out
