"""``vivi attention RUN FRAMES -o DIR``: what a trained attention pooling looks at (VITO Fig. B.1).

Each frame is encoded on its own and each stage's attention weights (a softmax over that
frame's positions) are upsampled to the frame and overlaid, next to the frame itself and the
mean over stages (what VITO's Figure 3 shows).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vivi.data.augment import network_input
from vivi.data.files import walk_files
from vivi.data.images import load_readable
from vivi.data.tasks import IMAGE_EXTENSIONS
from vivi.errors import UserError, warn
from vivi.models.pooling import MultiScaleAttentionPool
from vivi.train.checkpoint import load_run_model


def _pooling(model: nn.Module) -> tuple[nn.Module, MultiScaleAttentionPool, list[int]]:
    """(backbone, attention pooling, stages) of a VIVI or VITO network with attention pooling."""
    owner = getattr(model, "online", model)  # VITO keeps its pooling in the online encoder
    pool = getattr(owner, "pool", None)
    if not isinstance(pool, MultiScaleAttentionPool):
        raise UserError("this run pools without attention (model.pooling=mean); train VITO or a +Attn preset")
    return owner.backbone, pool, list(owner.stages)


@torch.no_grad()
def attention_maps(model: nn.Module, images: Tensor) -> list[Tensor]:
    """Per stage, ``[N, h, w]`` weights of each frame's own positions (summing to one per frame)."""
    backbone, pool, stages = _pooling(model)
    _, maps = backbone.forward_intermediates(images, indices=stages, norm=True)
    return [w[:, 0] for w in pool.attention([m[:, None] for m in maps])]


def frame_files(spec: Sequence[Path], limit: int) -> list[Path]:
    """Image files given directly or found (sorted, recursively) in folders; at most ``limit``.
    What is left out is said: a folder's other files, and the frames past ``limit``."""
    files: list[Path] = []
    others: list[Path] = []
    for p in spec:
        if p.is_dir():  # hidden files (e.g. macOS ._name.png) left out quietly, as in image folders
            found = walk_files(p)
            files += [f for f in found if f.suffix.lower() in IMAGE_EXTENSIONS]
            others += [f for f in found if f.suffix.lower() not in IMAGE_EXTENSIONS]
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p}: no such file or folder")
    if others:
        more = f", with {len(others) - 1} more file(s) of other extensions" if len(others) > 1 else ""
        warn(f"{others[0]}: not an image (extensions: {' '.join(IMAGE_EXTENSIONS)}); left out{more}")
    if not files:
        raise UserError(f"{', '.join(map(str, spec))}: no images (extensions: {' '.join(IMAGE_EXTENSIONS)})")
    if len(files) > limit:
        warn(f"showing {limit} of {len(files)} frames (--max {limit}; the first {limit} in name order)")
    return files[:limit]


def write_attention(run: Path, frames: Sequence[Path], out: Path, limit: int = 16) -> list[Path]:
    """One PNG per frame (frame | each stage's attention | their mean) and ``attention.png`` with all rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, cfg = load_run_model(run)
    if cfg.model.pooling != "attention":  # said here, where the run's name is known
        raise UserError(f"{run}: this run pools without attention (model.pooling={cfg.model.pooling}); "
                        "train VITO or a +Attn preset")  # fmt: skip
    files = frame_files(frames, limit)
    size = cfg.augment.image_size
    pixels, kept = load_readable(files, size, "vivi attention")  # uint8 [N, 3, s, s]
    files = [files[i] for i in kept]
    weights = attention_maps(model, network_input(pixels))
    up = [F.interpolate(w[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0] for w in weights]
    panels = [*up, torch.stack(up).mean(0)]
    titles = [f"stage {s}" for s in _pooling(model)[2]] + ["mean"]
    out.mkdir(parents=True, exist_ok=True)

    def draw(axes, i: int) -> None:
        image = pixels[i].permute(1, 2, 0).numpy()
        axes[0].imshow(image)
        axes[0].set_title(files[i].name[:24], fontsize=8)
        for ax, panel, title in zip(axes[1:], panels, titles):
            ax.imshow(image)
            ax.imshow(panel[i].numpy(), cmap="inferno", alpha=0.6)
            ax.set_title(title, fontsize=8)
        for ax in axes:
            ax.axis("off")

    written = []
    for i, f in enumerate(files):
        fig, axes = plt.subplots(1, len(panels) + 1, figsize=(2.2 * (len(panels) + 1), 2.4))
        draw(axes, i)
        path = out / f"{i:03d}-{f.stem}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    fig, grid = plt.subplots(len(files), len(panels) + 1, figsize=(2.2 * (len(panels) + 1), 2.4 * len(files)), squeeze=False)
    for i in range(len(files)):
        draw(grid[i], i)
    fig.savefig(out / "attention.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return [out / "attention.png", *written]
