"""Learning-rate schedule, precomputed for every step (DINO style): warm-up then step decay."""

from __future__ import annotations

import numpy as np

from vivi.config import OptimConfig


def lr_schedule(cfg: OptimConfig) -> np.ndarray:
    """Per-step learning rates: linear warm-up from 0 to ``lr``, times ``decay_factor`` at each milestone."""
    steps = np.arange(cfg.steps)
    lr = np.full(cfg.steps, cfg.lr, dtype=np.float64)
    if cfg.warmup_steps > 0:
        lr = np.minimum(lr, cfg.lr * (steps + 1) / cfg.warmup_steps)
    for milestone in cfg.decay_steps:
        lr = np.where(steps >= milestone, lr * cfg.decay_factor, lr)
    return lr
