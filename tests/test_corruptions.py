"""Corruptions: each severity is worse than the last, by hand-checkable definitions."""

from __future__ import annotations

import pytest
import torch

from vivi.evaluate.corruptions import CORRUPTIONS, SEVERITIES, corrupt


def _images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(4, 3, 8, 8, generator=g), size=128, mode="bilinear")
    return (smooth * 255).round().to(torch.uint8)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_damage_grows_with_severity(name):
    x = _images()
    errors = [(corrupt(x, name, s).float() - x.float()).abs().mean().item() for s in SEVERITIES]
    assert all(b > a for a, b in zip(errors, errors[1:])), errors
    assert corrupt(x, name, 3).shape == x.shape and corrupt(x, name, 3).dtype == torch.uint8
    assert torch.equal(corrupt(x, name, 3, seed=1), corrupt(x, name, 3, seed=1)), "deterministic"


def test_contrast_by_hand():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2).contiguous()
    # mean 0.5; severity 1 scales deviations by 0.4: 0.5 -+ 0.2 -> 0.3, 0.7
    assert corrupt(x, "contrast", 1)[0, 0, 0].tolist() == [round(0.3 * 255), round(0.7 * 255)]


def test_unknown_names_and_severities():
    with pytest.raises(ValueError, match="available: gaussian_noise"):
        corrupt(_images(), "fog", 1)
    with pytest.raises(ValueError, match="expected 1-5"):
        corrupt(_images(), "contrast", 6)
