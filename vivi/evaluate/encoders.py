"""Resolve what ``vivi evaluate`` is asked to evaluate into a frozen encoder and its resolution."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vivi.config import preset
from vivi.errors import UserError
from vivi.models.backbone import build_backbone, load_backbone_and_metadata


@dataclass
class Encoder:
    name: str
    model: nn.Module
    image_size: int


def load_encoder(spec: str, device: str = "cpu", seed: int = 0) -> Encoder:
    """``RUN`` folder, ``*.safetensors`` file, or ``random[:tiny|paper]`` (an untrained encoder baseline)."""
    if spec.startswith("random"):
        scale = spec.partition(":")[2] or "tiny"
        cfg = preset("VIVI-Ex(4)", scale)
        torch.manual_seed(seed)
        model = build_backbone(cfg.model.backbone).to(device).eval()
        return Encoder(f"random-{scale}", model, cfg.augment.image_size)
    path = Path(spec)
    if not path.exists():
        raise UserError(f"{spec}: no such run folder or backbone file (or use random[:tiny|paper])")
    model, meta = load_backbone_and_metadata(path, device=device)
    name = path.name if path.is_dir() else path.stem
    return Encoder(name, model, int(meta.get("image_size", 224)))
