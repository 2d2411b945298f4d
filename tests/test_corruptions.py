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


def test_corruptions_protocol_and_its_report(tmp_path, one_thread):
    import numpy as np

    from vivi.data.tasks import ArraySplit, ImageTask
    from vivi.evaluate.encoders import load_encoder
    from vivi.evaluate.report import write_report
    from vivi.evaluate.suite import evaluate_tasks

    rng = np.random.default_rng(0)

    def split(n: int) -> ArraySplit:
        labels = np.arange(n) % 2
        images = np.where(labels[:, None, None, None] == 1, 200, 40) + rng.integers(0, 30, (n, 32, 32, 3))
        return ArraySplit(images.astype(np.uint8), labels)

    task = ImageTask("bright", "natural", ["dark", "bright"], split(40), split(20), split(30))
    enc = load_encoder("random:tiny")
    result = evaluate_tasks(enc.model, [task], "corruptions", image_size=32, out_json=tmp_path / "c.json", progress=False)
    entry = result["tasks"][0]
    assert entry["accuracy"] == 100.0, "brightness separates the classes on clean images"
    assert set(entry["corrupted"]) == {"gaussian_noise", "gaussian_blur", "contrast", "jpeg"}
    assert all(len(v) == 5 for v in entry["corrupted"].values()) and len(entry["severity_mean"]) == 5
    # contrast 0.05 around the image mean keeps the brightness cue, but severity 5 cannot beat clean
    assert entry["severity_mean"][4] <= entry["accuracy"]
    md, _ = write_report([result], tmp_path / "report")
    assert (tmp_path / "report" / "severity.png").is_file() and "severity.png" in md.read_text()
