"""Batched frame augmentation on the device: Inception-style crop, flip and colour distortion.

Exemplar SSL needs every frame augmented independently. Doing it per image in loader
workers costs more than the tiny backbone on a laptop, so the whole batch is augmented at
once: a separable bilinear crop + flip + resize straight from the uint8 frames, and one batched
matmul for the colour ops; the same code runs on the GPU at paper scale. Random draws come from an explicit generator so a
run is reproducible and resumable.

With ``autoaugment`` (the paper's ``-AA`` models) AutoAugment's ImageNet policy replaces the
colour distortion: it runs per uint8 frame (torchvision, not batched: slower, but simple),
then the same batched crop and flip.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from vivi.config import AugmentConfig

# Inputs are scaled to [0, 1] and then to [-1, 1]: the same constants are used for evaluation.
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)

_TRIES = 10


@functools.lru_cache(maxsize=64)
def _constant(values: tuple, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A constant tensor on ``device``, made once: ``torch.tensor(..., device=cuda)`` copies from
    pageable memory and waits for the GPU to drain its queue each time, a stall in every step."""
    return torch.tensor(values, dtype=dtype, device=device)


def _uniform(n: int, low: float, high: float, g: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(n, generator=g, device=device) * (high - low) + low


def crop_boxes(
    n: int, scale: tuple[float, float], ratio: tuple[float, float], g: torch.Generator, device: torch.device
) -> Tensor:
    """Inception crops as ``[n, 4]`` (centre x, centre y, width, height), fractions of a square frame.

    Same sampling as torchvision's RandomResizedCrop: area uniform in ``scale``, log aspect
    ratio uniform in ``ratio``, up to 10 tries, else the largest centred crop within ``ratio``.
    """
    area = _uniform(n * _TRIES, scale[0], scale[1], g, device).view(n, _TRIES)
    logr = _uniform(n * _TRIES, math.log(ratio[0]), math.log(ratio[1]), g, device).view(n, _TRIES)
    r = logr.exp()
    w, h = (area * r).sqrt(), (area / r).sqrt()
    ok = (w <= 1) & (h <= 1)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1, device=device))
    pick = first.clamp_min(0)[:, None]
    w, h = w.gather(1, pick).squeeze(1), h.gather(1, pick).squeeze(1)
    fallback = first < 0
    w = torch.where(fallback, torch.ones_like(w), w)
    h = torch.where(fallback, torch.ones_like(h), h)
    cx = w / 2 + torch.rand(n, generator=g, device=device) * (1 - w)
    cy = h / 2 + torch.rand(n, generator=g, device=device) * (1 - h)
    return torch.stack([cx, cy, w, h], 1)


def _taps(centre: Tensor, extent: Tensor, size: int, src: int) -> tuple[Tensor, Tensor, Tensor]:
    """Bilinear taps along one axis for ``[n]`` boxes: ``(i0, i1, weight of i1)``, each ``[n, size]``.

    The output pixel centres map to source coordinates as in ``grid_sample`` with
    ``align_corners=False``; the clamp to the edge pixels is its "border" padding. A negative
    ``extent`` mirrors the axis.
    """
    base = (torch.arange(size, device=centre.device, dtype=torch.float32) * 2 + 1) / size - 1
    normalised = extent.float()[:, None] * base + (2 * centre.float() - 1)[:, None]  # [-1, 1]
    pixel = (((normalised + 1) * src - 1) / 2).clamp_(0, src - 1)
    i0 = pixel.floor()
    weight = pixel - i0
    i0 = i0.long()
    return i0, (i0 + 1).clamp_max_(src - 1), weight


def crop_resize(images: Tensor, boxes: Tensor, size: int, flip: Tensor | None = None) -> Tensor:
    """Crop each image (uint8 or float ``[n, C, H, W]``) to its box and resize to ``size`` (bilinear),
    optionally mirrored: float32 ``[n, C, size, size]``.

    Bilinear sampling on an axis-aligned grid is separable, so it runs as two 1-D passes: the
    source rows each output row needs (``index_select`` of whole rows, straight from uint8), then
    the columns (a ``gather`` along the last dim). The values are ``grid_sample``'s with border
    padding up to rounding (< 2e-3 on the 0-255 scale), in about 0.65x its time on a CPU (256
    frames, 96 -> 64 px, one thread: ~9.5 vs ~14.4 ms) and with no float copy of the full frames.
    """
    n, c, h, w = images.shape
    cx, cy, bw, bh = boxes.unbind(1)
    x0, x1, wx = _taps(cx, bw if flip is None else torch.where(flip, -bw, bw), size, w)
    y0, y1, wy = _taps(cy, bh, size, h)
    rows = images.reshape(n * c * h, w)
    first = (torch.arange(n * c, device=images.device) * h).view(n, c, 1)  # row 0 of each image plane
    top = rows.index_select(0, (first + y0[:, None]).flatten()).float()
    bottom = rows.index_select(0, (first + y1[:, None]).flatten()).float()
    vertical = top.lerp_(bottom, wy[:, None].expand(n, c, size).reshape(-1, 1)).view(n, c, size, w)
    left = vertical.gather(3, x0[:, None, None].expand(n, c, size, size))
    right = vertical.gather(3, x1[:, None, None].expand(n, c, size, size))
    return left.lerp_(right, wx[:, None, None])


_GRAY = (0.299, 0.587, 0.114)
_RGB2YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))
# its inverse, once on the CPU in float64 (torch.linalg.inv on a GPU waits for its error check)
_YIQ2RGB = tuple(map(tuple, torch.linalg.inv(torch.tensor(_RGB2YIQ, dtype=torch.float64)).tolist()))


def _hue_matrices(angle: Tensor) -> Tensor:
    """``[n, 3, 3]`` RGB matrices rotating chroma in YIQ space: a linear stand-in for an HSV hue shift."""
    yiq = _constant(_RGB2YIQ, angle.device, angle.dtype)
    rot = torch.zeros(len(angle), 3, 3, dtype=angle.dtype, device=angle.device)
    c, s = angle.cos(), angle.sin()
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = c, -s, s, c
    return _constant(_YIQ2RGB, angle.device, angle.dtype) @ rot @ yiq


def color_distort(x: Tensor, cfg: AugmentConfig, g: torch.Generator) -> Tensor:
    """[0, 1] images -> colour-distorted [0, 1] images (see :func:`color_matrices`)."""
    matrix, offset = color_matrices(x, cfg, g)
    y = torch.baddbmm(offset, matrix, x.flatten(2))
    return y.clamp_(0, 1).view_as(x)


def color_matrices(x: Tensor, cfg: AugmentConfig, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Brightness, contrast, saturation and hue jitter (prob ``color_prob``), then random grayscale.

    Every one of these is affine in RGB, so they are composed into one ``3x3`` matrix and
    offset per image and applied with a single batched matmul (one clamp at the end,
    where torchvision clamps after each op).
    """
    n, dev, dt = x.shape[0], x.device, x.dtype

    def factor(strength: float) -> Tensor:
        return _uniform(n, max(0.0, 1 - strength), 1 + strength, g, dev).view(n, 1, 1)

    eye = torch.eye(3, dtype=dt, device=dev).expand(n, 3, 3)
    gray = _constant(_GRAY, dev, dt).view(1, 1, 3).expand(n, 3, 3)  # rows: luma weights
    b, c, s = factor(cfg.brightness), factor(cfg.contrast), factor(cfg.saturation)
    angle = _uniform(n, -cfg.hue, cfg.hue, g, dev) * 2 * math.pi
    # The mean luma of the input, [n, 1, 1]: luma is linear in RGB, so it is the luma of the channel means.
    luma_mean = (x.flatten(2).mean(2) @ gray[0, 0]).view(n, 1, 1)
    sat = s * eye + (1 - s) * gray
    post = _hue_matrices(angle) @ sat if cfg.hue > 0 else sat
    matrix = post @ (c * b * eye)
    offset = post @ ((1 - c) * b * luma_mean).expand(n, 3, 1)
    apply = (torch.rand(n, generator=g, device=dev) < cfg.color_prob).view(n, 1, 1)
    matrix = torch.where(apply, matrix, eye)
    offset = torch.where(apply, offset, torch.zeros_like(offset))
    to_gray = (torch.rand(n, generator=g, device=dev) < cfg.gray_prob).view(n, 1, 1)
    matrix = torch.where(to_gray, gray @ matrix, matrix)
    offset = torch.where(to_gray, gray @ offset, offset)
    return matrix, offset


def normalize(x: Tensor) -> Tensor:
    """[0, 1] -> the network's input range (see MEAN/STD)."""
    mean = _constant(MEAN, x.device, x.dtype).view(1, 3, 1, 1)
    std = _constant(STD, x.device, x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def network_input(images: Tensor) -> Tensor:
    """uint8 images -> float in the network's input range, with no augmentation (evaluation).

    Batches come out channels-last: a convolution given such an input runs in that layout
    whatever its weights' layout, and it is oneDNN's and the tensor cores' fast path.
    """
    x = normalize(images.float().div_(255.0))
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def autoaugment(frames: Tensor, g: torch.Generator) -> Tensor:
    """AutoAugment (ImageNet policy) drawn independently for each uint8 ``[3, S, S]`` frame.

    torchvision draws from the global CPU generator, so it is reseeded from ``g`` inside a
    forked RNG state: the draws stay reproducible and the global state is left untouched.
    """
    policy = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
    seed = int(torch.randint(2**62, (1,), generator=g, device=g.device).item())
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return torch.stack([policy(frame) for frame in frames])


def hsv_jitter(cfg: AugmentConfig) -> AugmentConfig:
    """Co-training's labelled-image augmentation: the HSV-space colour randomisation of S4L [64]
    (hue, saturation and value jitter on every image, no contrast or grayscale), expressed with the
    batched colour distortion; crop, flip and ``autoaugment`` stay as configured."""
    return dataclasses.replace(cfg, contrast=0.0, color_prob=1.0, gray_prob=0.0)


def augment(frames: Tensor, cfg: AugmentConfig, g: torch.Generator) -> Tensor:
    """uint8 ``[N, 3, S, S]`` frames -> float ``[N, 3, s, s]`` normalised, each frame augmented once.

    The crop runs on the 0-255 values; the scaling to [0, 1], the colour distortion and the
    normalisation are affine, so they are one batched matmul and one clamp on the small output.
    """
    if cfg.autoaugment:
        frames = autoaugment(frames, g)
    n = frames.shape[0]
    boxes = crop_boxes(n, tuple(cfg.crop_scale), tuple(cfg.crop_ratio), g, frames.device)
    flip = torch.rand(n, generator=g, device=frames.device) < 0.5 if cfg.flip else None
    x = crop_resize(frames, boxes, cfg.image_size, flip)
    if cfg.autoaugment:
        return normalize(x.div_(255.0))
    matrix, offset = color_matrices(x, cfg, g)  # x in 0-255 units: the offset scales with it
    mean = _constant(MEAN, x.device, x.dtype).view(1, 3, 1)
    std = _constant(STD, x.device, x.dtype).view(1, 3, 1)
    y = torch.baddbmm((offset / 255.0 - mean) / std, matrix / (255.0 * std), x.flatten(2))
    return _clamp_unit_(y).view_as(x)


def _clamp_unit_(y: Tensor) -> Tensor:
    """The [0, 1] clamp in the normalised range, in place on ``[n, 3, pixels]``: with python-float
    bounds, ~10x faster than ``torch.clamp`` with per-channel bound tensors (5.9 vs 0.5 ms for 256
    frames of 64 px on one thread), the same values."""
    low = [(0 - m) / s for m, s in zip(MEAN, STD)]
    high = [(1 - m) / s for m, s in zip(MEAN, STD)]
    if len(set(low)) == 1 and len(set(high)) == 1:
        return y.clamp_(low[0], high[0])
    for c in range(3):
        y[:, c].clamp_(low[c], high[c])
    return y


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator that is a pure function of ``(seed, step)``: augmentation drawn in a loader
    worker is then the same for any worker count and after a resume, with no state to save."""
    state = np.random.SeedSequence([seed, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class StepAugment(Dataset):
    """Item ``step`` of a step-indexed dataset of uint8 frames (``[..., 3, S, S]``, or an
    ``(images, labels)`` pair), augmented in the loader process: float ``[N, 3, s, s]``.

    The alternative to augmenting in the training process (``augment.where``): on a CPU with
    cores to spare beyond torch's threads, a loader worker's idle time can take the augmentation's
    cost off the step (on 2 cores it did not: benchmarks/results/step-overhead, session 6). ``repeat`` copies each image that many times before augmenting
    (an image folder standing in for shots of F frames: every copy gets its own draw).
    """

    def __init__(self, items: Dataset, cfg: AugmentConfig, seed: int, channels_last: bool, repeat: int = 1) -> None:
        self.items, self.cfg, self.seed, self.channels_last, self.repeat = items, cfg, seed, channels_last, repeat

    def __getitem__(self, step: int) -> Any:
        item = self.items[step]
        frames, rest = (item[0], item[1:]) if isinstance(item, tuple) else (item, None)
        frames = frames.flatten(0, -4)
        if self.repeat > 1:
            frames = frames.repeat_interleave(self.repeat, 0)
        x = augment(frames, self.cfg, step_generator(self.seed, step))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x if rest is None else (x, *rest)
