"""Synthetic corruptions at severities 1-5 (ImageNet-C's definitions and parameters, Hendrycks &
Dietterich 2019), for VITO-style robustness curves: a probe fitted on clean images is tested on
corrupted ones, severity by severity.

Blur radii are given for 224 px in ImageNet-C; they are scaled to the evaluated resolution so a
severity means the same loss of detail at 64 px as at 224 px (the kernel is cut at 3 sigma where
ImageNet-C's scikit-image blur cuts at 4: the tails differ by under 0.3% of the weight). Noise
and JPEG quality are per pixel and are not scaled: at a small resolution they hide more of the
object than at 224 px. Only the test images are corrupted; the probe is fitted on clean ones.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from vivi.data.tasks import ImageSplit

SEVERITIES = (1, 2, 3, 4, 5)
_NOISE_SIGMA = (0.08, 0.12, 0.18, 0.26, 0.38)
_BLUR_SIGMA_224 = (1.0, 2.0, 3.0, 4.0, 6.0)
_CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)
_JPEG_QUALITY = (25, 18, 15, 10, 7)


def gaussian_noise(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    sigma = _NOISE_SIGMA[severity - 1]
    return (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    sigma = _BLUR_SIGMA_224[severity - 1] * x.shape[-1] / 224
    kernel = 2 * int(np.ceil(3 * sigma)) + 1
    return TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma])


def contrast(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Deviations from each channel's mean scaled by c, as ImageNet-C does (``np.mean(x, axis=(0, 1))``
    of an H x W x 3 image): one mean over all channels pulled every colour towards grey, a
    colour cue ImageNet-C keeps."""
    c = _CONTRAST[severity - 1]
    mean = x.mean(dim=(-2, -1), keepdim=True)
    return ((x - mean) * c + mean).clamp(0, 1)


def jpeg(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    quality = _JPEG_QUALITY[severity - 1]
    out = []
    for img in (x * 255).round().to(torch.uint8):
        buf = io.BytesIO()
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=quality)
        out.append(torch.from_numpy(np.array(Image.open(buf).convert("RGB"))).permute(2, 0, 1))
    return torch.stack(out).float() / 255


CORRUPTIONS: dict[str, Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]] = {
    "gaussian_noise": gaussian_noise,
    "gaussian_blur": gaussian_blur,
    "contrast": contrast,
    "jpeg": jpeg,
}


class CorruptedSplit(ImageSplit):
    """A split whose images are corrupted on the fly (after resizing to the evaluated size); each
    image's random draws are seeded by its own index, so its corruption does not depend on the
    batch it is read in (seeding a batch by its first index gave another noise for another
    batch size, and a different one to an image read alone)."""

    def __init__(self, base: ImageSplit, name: str, severity: int) -> None:
        super().__init__(base.labels)
        self.base, self.name, self.severity = base, name, severity
        self.broken = base.broken  # broken files are the base's, and dropped with it

    def readable(self) -> np.ndarray:
        return self.base.readable()

    def images(self, indices, size: int | None = None) -> torch.Tensor:
        indices = np.asarray(indices, dtype=np.int64)
        images = self.base.images(indices, size)
        if len(indices) == 0:
            return images
        return torch.cat([corrupt(images[j : j + 1], self.name, self.severity, int(i)) for j, i in enumerate(indices)])

    def subset(self, indices) -> CorruptedSplit:
        return CorruptedSplit(self.base.subset(indices), self.name, self.severity)


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` -> the same images corrupted by ``name`` at ``severity`` (1-5), uint8."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; available: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity}: expected 1-5")
    gen = torch.Generator().manual_seed(seed * 1000 + severity)
    x = CORRUPTIONS[name](images.float() / 255, severity, gen)
    return (x * 255).round().clamp(0, 255).to(torch.uint8)
