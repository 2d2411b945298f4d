"""The step's fast paths give the values of the plain computation they replace."""

from __future__ import annotations

import torch
from torch import nn

from vivi.data import augment
from vivi.models.vivi import param_groups
from vivi.train.optimizer import sgd


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def test_fused_sgd_matches_the_per_op_loop():
    fast, slow = _model(), _model()
    opt_fast = sgd(param_groups(fast, 1e-2), lr=0.1, momentum=0.9)
    opt_slow = torch.optim.SGD(param_groups(slow, 1e-2), lr=0.1, momentum=0.9, foreach=False)
    assert opt_fast.defaults["fused"] is True
    x = torch.randn(6, 3, 8, 8)
    for step in range(5):
        for model, opt in ((fast, opt_fast), (slow, opt_slow)):
            for group in opt.param_groups:
                group["lr"] = 0.1 / (step + 1)  # the schedule sets the lr each step, as the loop does
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for a, b in zip(fast.parameters(), slow.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_a_first_step_the_loss_scaler_skips_leaves_sgd_as_the_per_op_loop(monkeypatch):
    """fp16's scaler skips a step whose gradients hold an inf (routine at its first, large scale).
    torch's fused SGD left its momentum buffers uninitialised after such a first step; memory that
    ``empty_like`` hands out holds anything, NaN here, so the next step would poison the weights."""
    empty_like = torch.empty_like
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: empty_like(*a, **k).fill_(float("nan")))
    fast, slow = _model(), _model()
    opt_fast = sgd(param_groups(fast, 1e-2), lr=0.1, momentum=0.9)
    opt_slow = torch.optim.SGD(param_groups(slow, 1e-2), lr=0.1, momentum=0.9, foreach=False)
    assert opt_fast.defaults["fused"] is True
    scalers = {id(opt_fast): torch.amp.GradScaler("cpu"), id(opt_slow): torch.amp.GradScaler("cpu")}
    x = torch.randn(6, 3, 8, 8)
    for step in range(4):
        for model, opt in ((fast, opt_fast), (slow, opt_slow)):
            scaler = scalers[id(opt)]
            opt.zero_grad()
            scaler.scale(model(x).square().mean()).backward()
            if step in (0, 2):  # an overflow: the whole step is skipped and the scale halved
                model[3].weight.grad[0, 0] = float("inf")
            scaler.step(opt)
            scaler.update()
        for a, b in zip(fast.parameters(), slow.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert scalers[id(opt_fast)].get_scale() == 2.0**16 / 4


def test_sgd_of_meta_tensors_is_not_fused():
    p = nn.Parameter(torch.zeros(3, device="meta"))
    assert not sgd([p], lr=0.1, momentum=0.9).defaults["fused"]


def _reference_clamp(y: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(augment.MEAN).view(1, 3, 1)
    std = torch.tensor(augment.STD).view(1, 3, 1)
    return torch.clamp(y, (0 - mean) / std, (1 - mean) / std)


def test_unit_clamp_matches_per_channel_bounds(monkeypatch):
    y = torch.randn(4, 3, 50) * 3
    assert torch.equal(augment._clamp_unit_(y.clone()), _reference_clamp(y))
    monkeypatch.setattr(augment, "MEAN", (0.485, 0.456, 0.406))  # per-channel constants: the other branch
    monkeypatch.setattr(augment, "STD", (0.229, 0.224, 0.225))
    torch.testing.assert_close(augment._clamp_unit_(y.clone()), _reference_clamp(y), rtol=0, atol=1e-6)
