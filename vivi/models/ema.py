"""Exponential moving average of a network: the target network of BYOL-style methods (VITO)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * online`` for parameters; buffers (BatchNorm
    running statistics, counters) are copied, as the online network's are the current ones."""
    t_params, o_params = list(target.parameters()), list(online.parameters())
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, o_params, alpha=1 - momentum)
    for t, o in zip(target.buffers(), online.buffers()):
        t.copy_(o)


def momentum_schedule(base: float, steps: int) -> np.ndarray:
    """Per-step momentum rising from ``base`` to 1 on a half cosine (BYOL, used by VITO)."""
    t = np.arange(steps, dtype=np.float64)
    return 1 - (1 - base) * (np.cos(math.pi * t / max(steps, 1)) + 1) / 2
