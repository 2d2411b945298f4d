"""vivi: learn image representations from the hierarchy of unlabeled video (frames -> shots -> videos)."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from timm.models.resnetv2 import ResNetV2


def load_backbone(path, device="cpu") -> "ResNetV2":
    """A trained backbone (run folder or ``backbone.safetensors``) as a timm ``ResNetV2`` in eval mode."""
    from vivi.models.backbone import load_backbone as _load

    return _load(path, device=device)


__all__ = ["__version__", "load_backbone"]
