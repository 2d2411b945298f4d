"""fp16 autocast trains with a loss scaler (as on a GPU without bf16), checked on the CPU, whose autocast
takes float16 too: the scale is checkpointed and a resumed run is exact; clipping sees the true
gradients, not the scaled ones."""

from __future__ import annotations

import torch

from vivi.config import apply_overrides, preset
from vivi.models import build_model
from vivi.train.checkpoint import list_checkpoints, load_checkpoint
from vivi.train.loop import pretrain

SETTINGS = ["data.videos=2", "data.workers=0", "ckpt_every=2", "log_every=1", "device=cpu", "keep_checkpoints=3"]


def _last(run) -> dict:
    return load_checkpoint(list_checkpoints(run)[-1])


def test_fp16_scales_the_loss_and_resumes_exactly(tiny_data, tmp_path, one_thread):
    cfg = apply_overrides(preset("VIVI-Ex(4)"), SETTINGS + ["optim.steps=6", "amp=fp16"])
    run = pretrain(cfg, [tiny_data], tmp_path / "run", progress=False)
    whole = _last(run)
    # torch's default scale, grown by none of its 2000-step intervals: 6 steps without an overflow
    assert whole["scaler"]["scale"] == 2.0**16 and whole["scaler"]["_growth_tracker"] == 6
    for late in list_checkpoints(run)[1:]:  # back to step 2
        late.unlink()
    resumed = _last(pretrain(cfg, [tiny_data], run, progress=False))
    assert resumed["scaler"] == whole["scaler"]
    for name, value in whole["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, atol=1e-6, rtol=1e-6, msg=name)


def test_bf16_and_full_precision_keep_no_scale(tiny_data, tmp_path, one_thread):
    cfg = apply_overrides(preset("VIVI-Ex(4)"), SETTINGS + ["optim.steps=2", "amp=bf16"])
    assert _last(pretrain(cfg, [tiny_data], tmp_path / "run", progress=False))["scaler"] == {}


def _update(cfg, run) -> torch.Tensor:
    """The trained parameters' change over the run, flattened (the initial weights are the seed's; batch
    norm's running statistics, which move without gradients, are left out)."""
    torch.manual_seed(cfg.seed)
    start = dict(build_model(cfg).named_parameters())
    end = _last(run)["model"]
    return torch.cat([(end[n].float() - p.detach().float()).flatten() for n, p in start.items()])


def test_fp16_clips_the_unscaled_gradients(tiny_data, tmp_path, one_thread):
    """A tight clip binds every step: the fp16 update must match the full-precision one. Clipping the
    scaled gradients (no unscale first) would make it 65536x smaller."""
    base = SETTINGS + ["optim.steps=2", "optim.grad_clip=0.05", "optim.warmup_steps=0"]
    updates = {}
    for amp in ("off", "fp16"):
        cfg = apply_overrides(preset("VIVI-Ex(4)"), base + [f"amp={amp}"])
        updates[amp] = _update(cfg, pretrain(cfg, [tiny_data], tmp_path / amp, progress=False))
    ratio = float(updates["fp16"].norm() / updates["off"].norm())
    cosine = float(torch.nn.functional.cosine_similarity(updates["fp16"], updates["off"], dim=0))
    assert 0.9 < ratio < 1.1 and cosine > 0.95, (ratio, cosine)
