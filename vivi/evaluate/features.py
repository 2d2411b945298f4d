"""Frozen-backbone features for the probes: VTAB preprocessing, no augmentation."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from vivi.data.augment import MEAN, STD, network_input
from vivi.data.tasks import ImageSplit
from vivi.errors import UserError

# MEAN/STD are re-exported: one definition, in the trainer's augmentation, serves both.
__all__ = ["MEAN", "STD", "extract_features"]


def extract_features(
    model: torch.nn.Module,
    split: ImageSplit,
    image_size: int,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "features",
) -> np.ndarray:
    """Pooled features float32 ``[n, d]`` of every image in ``split``, in split order.

    Images are resized to image_size x image_size (antialiased bilinear), scaled to [0, 1]
    and normalised with the trainer's MEAN/STD, so the probe sees inputs in the range the
    backbone was trained on. The model runs in eval mode (BatchNorm uses its running
    statistics) and is moved to ``device``; its train/eval mode is restored afterwards.
    """
    if len(split) == 0:
        raise ValueError("cannot extract features of an empty split")
    was_training = model.training
    model.eval().to(device)
    chunks = []
    try:
        with torch.inference_mode(), tqdm(total=len(split), desc=desc, unit="img", disable=not progress) as bar:
            for start in range(0, len(split), batch_size):
                indices = np.arange(start, min(start + batch_size, len(split)))
                batch = split.images(indices, size=image_size).to(device, non_blocking=True)
                out = model(network_input(batch))
                if out.ndim != 2:
                    raise ValueError(f"model must return pooled features [n, d], got {tuple(out.shape)}")
                chunks.append(out.float().cpu().numpy())
                bar.update(len(indices))
    finally:
        model.train(was_training)
    features = np.concatenate(chunks)
    if not np.isfinite(features).all():  # else the probe fails with scikit-learn's "Input X contains NaN"
        raise UserError(f"{desc}: the model's features hold NaN or inf; its weights (or BatchNorm statistics) "
                        "are not finite or overflow at this input, so it cannot be evaluated")  # fmt: skip
    return features
