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
    kept for devices without the fused kernel. The momentum buffers start at zero (see
    :func:`_zero_momentum`), which keeps fused SGD right under fp16's loss scaler.
    """
    params = list(params)
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(p.device.type in FUSED_DEVICES for p in tensors)
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, fused=fused or None)
    _zero_momentum(opt)
    return opt


def _zero_momentum(opt: torch.optim.SGD) -> None:
    """Give every parameter a zero momentum buffer before the first step.

    torch's fused SGD makes its buffers with ``empty_like`` on the first step and fills them in the
    kernel, which returns early when fp16's loss scaler found an inf. So a skipped first step (routine
    at the scaler's initial 2**16) left them uninitialised, and the next step added that garbage to
    the weights: a NaN loss at the third step of VITO at paper scale on an H200 (session 16). Zeros
    change nothing else: with no dampening the first step's ``0.9 * 0 + g`` is ``g`` exactly, the
    buffer torch would have made.
    """
    for group in opt.param_groups:
        if group["momentum"] == 0:
            continue
        if group["dampening"] != 0:
            raise ValueError("zero momentum buffers equal torch's first step only without dampening")
        for p in group["params"]:
            opt.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
