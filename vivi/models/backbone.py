"""The frame encoder f: timm's pre-activation ResNet v2, and its portable export.

``backbone.safetensors`` holds the weights plus, in its metadata, the timm constructor
arguments, so ``vivi.load_backbone(path)`` rebuilds a plain timm model with no vivi code in
the loop and no pickle anywhere (weights are loaded with safetensors only).
"""

from __future__ import annotations

import dataclasses
import json
import math
from functools import partial
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from timm.layers import BatchNormAct2d, GroupNormAct, StdConv2d, create_conv2d
from timm.models.resnetv2 import ResNetV2
from torch import nn

from vivi.config import BackboneConfig
from vivi.errors import UserError

FORMAT = "vivi-backbone/1"


def _group_norm_act(num_channels: int, **kwargs) -> GroupNormAct:
    """BiT's 32 groups, fewer where a tiny model has fewer channels than that."""
    return GroupNormAct(num_channels, num_groups=math.gcd(32, num_channels), **kwargs)


def build_backbone(spec: BackboneConfig) -> ResNetV2:
    """A headless ResNet v2: ``model(x)`` returns pooled pre-logits ``[N, model.num_features]``.

    ``norm="batchnorm"`` is the paper's self-supervised encoder; ``"groupnorm_ws"`` is the BiT
    variant (GroupNorm + weight standardisation) the paper uses when co-training with images.
    """
    if spec.norm == "batchnorm":
        layers = dict(conv_layer=create_conv2d, norm_layer=BatchNormAct2d)
    elif spec.norm == "groupnorm_ws":
        layers = dict(conv_layer=partial(StdConv2d, eps=1e-8), norm_layer=_group_norm_act)
    else:
        raise UserError(f"model.backbone.norm={spec.norm!r}: expected 'batchnorm' or 'groupnorm_ws'")
    return ResNetV2(
        layers=list(spec.layers),
        channels=tuple(spec.channels),
        stem_chs=spec.stem_chs,
        width_factor=spec.width_factor,
        basic=spec.basic,
        num_classes=0,
        **layers,
    )


def save_backbone(model: nn.Module, spec: BackboneConfig, path: Path, extra: dict[str, str] | None = None) -> None:
    """Write weights + constructor arguments, atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "backbone": json.dumps(dataclasses.asdict(spec))}
    meta.update(extra or {})
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)


def _resolve(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        if not (p / "backbone.safetensors").is_file() and list(p.glob("checkpoints/*")):
            raise UserError(f"{p}: the run has checkpoints but no backbone.safetensors yet: it has not finished "
                            "(run its `vivi pretrain` command again to continue it)")  # fmt: skip
        p = p / "backbone.safetensors"
    if not p.is_file():
        raise UserError(f"{p}: no such backbone file (expected a run folder or a .safetensors file)")
    return p


def load_backbone(path: str | Path, device: str | torch.device = "cpu") -> ResNetV2:
    """Load a vivi backbone (a run folder or its ``backbone.safetensors``) as a timm model.

    >>> model = vivi.load_backbone("runs/vivi-ex4")     # timm ResNetV2, eval mode
    >>> feats = model(images)                           # [N, model.num_features]
    """
    return load_backbone_and_metadata(path, device)[0]


def load_backbone_and_metadata(path: str | Path, device: str | torch.device = "cpu") -> tuple[ResNetV2, dict[str, str]]:
    """:func:`load_backbone` plus the file's metadata (image size, preset), read in the same pass."""
    p = _resolve(path)
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(p), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{p}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    if meta.get("format") != FORMAT or "backbone" not in meta:
        raise UserError(f"{p}: not a vivi backbone (metadata lacks format={FORMAT!r})")
    spec = BackboneConfig(**json.loads(meta["backbone"]))
    model = build_backbone(spec)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"{p}: weights do not match the stored architecture ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), meta
