"""``vivi pretrain``: one explicit training loop.

Read top to bottom: data -> model -> optimiser and precomputed schedule -> (resume) -> steps
(augment on device, forward, loss, backward, step, log, checkpoint) -> export the backbone.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from vivi.config import RunConfig, from_dict
from vivi.data.augment import augment
from vivi.data.batches import make_loader, training_shards
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


def pretrain(cfg: RunConfig, data: list[Path], out: Path, progress: bool = True) -> Path:
    """Train ``cfg`` on the ingested folders ``data``; resumes from the newest checkpoint in ``out``."""
    device = resolve_device(cfg.device)
    records = read_index(data)
    shards = training_shards(records, cfg.data, ", ".join(str(d) for d in data))
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
    batches = make_loader(shards, cfg.data, seed=cfg.seed * 1_000_003 + start)
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
            with autocast_context(cfg, device):
                output = model(frames.view(v, k, f, *frames.shape[1:]), generator=gen)
            terms = objective(output, v, k, f)
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
