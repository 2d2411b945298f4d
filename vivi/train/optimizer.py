"""SGD with momentum, the paper's optimiser, in PyTorch's fused form where it has one."""

from __future__ import annotations

from collections.abc import Iterable

import torch

FUSED_DEVICES = ("cpu", "cuda")


def sgd(params: Iterable, lr: float, momentum: float) -> torch.optim.SGD:
    """``params``: tensors or param groups (``vivi.models.vivi.param_groups``).

    Fused, weight decay, momentum and update are one pass over each parameter instead of three
    ops: on a CPU the VIVI-Ex(4) tiny step's optimiser took 1.6 instead of 3.1 ms, with parameters
    bitwise equal after 20 steps (benchmarks/results/step-overhead, session 9). The per-op loop is
    kept for devices without the fused kernel.
    """
    params = list(params)
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(p.device.type in FUSED_DEVICES for p in tensors)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, fused=fused or None)
