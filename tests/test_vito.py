"""VITO's parts: attention pooling, the EMA target, the displaced-pair sampler, the view contrast."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import ground_truth
from vivi.config import apply_overrides, preset
from vivi.data.batches import choose_clip
from vivi.data.shards import read_index
from vivi.losses.vito import view_infonce
from vivi.models.ema import ema_update, momentum_schedule
from vivi.models.pooling import AttentionPool, MultiScaleAttentionPool
from vivi.train.loop import pretrain


def test_ema_update_matches_hand_computation():
    online, target = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    with torch.no_grad():
        online.weight.copy_(torch.tensor([1.0, 2.0]))
        target.weight.copy_(torch.tensor([3.0, -1.0]))
        online.bias.fill_(1.0)
        target.bias.fill_(0.0)
        online.running_mean.copy_(torch.tensor([5.0, 6.0]))
    ema_update(target, online, momentum=0.75)
    assert target.weight.tolist() == [0.75 * 3 + 0.25 * 1, 0.75 * -1 + 0.25 * 2]  # [2.5, -0.25]
    assert target.bias.tolist() == [0.25, 0.25]
    assert target.running_mean.tolist() == [5.0, 6.0], "buffers are copied"
    assert online.weight.tolist() == [1.0, 2.0], "the online network is untouched"


def test_momentum_rises_from_base_to_one_on_a_cosine():
    m = momentum_schedule(0.99, 100)
    assert m[0] == pytest.approx(0.99)
    assert m[50] == pytest.approx(1 - 0.01 * (math.cos(math.pi / 2) + 1) / 2)  # 0.995
    assert m[-1] == pytest.approx(1 - 0.01 * (math.cos(math.pi * 99 / 100) + 1) / 2)
    assert all(b >= a for a, b in zip(m, m[1:]))


def test_attention_weights_sum_to_one_and_pool_by_them():
    torch.manual_seed(0)
    pool = AttentionPool(channels=5, hidden=7)
    x = torch.randn(3, 5, 11)
    w = pool.weights(x)
    assert w.shape == (3, 11) and torch.allclose(w.sum(1), torch.ones(3)) and (w > 0).all()
    manual = torch.stack([sum(w[b, n] * x[b, :, n] for n in range(11)) for b in range(3)])
    torch.testing.assert_close(pool(x), manual)


def test_multi_scale_pooling_spans_every_frame_of_a_group():
    torch.manual_seed(0)
    pool = MultiScaleAttentionPool(channels=[4, 6], hidden=8)
    maps = [torch.randn(2, 3, 4, 5, 5), torch.randn(2, 3, 6, 2, 2)]  # [shots, F frames, C, h, w] per stage
    out = pool(maps)
    assert out.shape == (2, 4 + 6)
    for weights, m in zip(pool.attention(maps), maps):
        assert weights.shape == (2, 3, *m.shape[3:])
        torch.testing.assert_close(weights.sum(dim=(1, 2, 3)), torch.ones(2))  # over all F*h*w positions
    expected = (pool.attention(maps)[1][:, :, None] * maps[1]).sum(dim=(1, 3, 4))
    torch.testing.assert_close(out[:, 4:], expected)


def _slow_view_infonce(q: torch.Tensor, k: torch.Tensor, t: float) -> torch.Tensor:
    q, k = nn.functional.normalize(q, dim=-1), nn.functional.normalize(k, dim=-1)
    total = 0.0
    for view in (0, 1):
        for i in range(q.shape[0]):
            scores = [float(q[i, view] @ k[j, 1 - view]) / t for j in range(k.shape[0])]
            total += -scores[i] + math.log(sum(math.exp(s) for s in scores))
    return torch.tensor(total / (2 * q.shape[0]))


def test_view_infonce_matches_a_slow_loop():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(5, 2, 3, generator=g), torch.randn(5, 2, 3, generator=g)
    torch.testing.assert_close(view_infonce(q, k, 0.1), _slow_view_infonce(q, k, 0.1), atol=1e-5, rtol=1e-5)


def _true_shot(gt: dict, frame: int) -> int:
    return next((i for i, s in enumerate(gt["shots"]) if s["start_frame"] <= frame <= s["end_frame"]), -1)


@pytest.mark.parametrize("max_gap", [0, 1, 3])
def test_displaced_pairs_never_cross_a_shot_boundary(tiny_world, tiny_data, max_gap):
    gts = ground_truth(tiny_world)
    cfg = apply_overrides(preset("VITO"), [f"data.max_gap={max_gap}"]).data
    rng = random.Random(0)
    gaps = set()
    for record in (r for r in read_index([tiny_data]) if r["status"] == "ok"):
        gt = gts[str(Path(record["source"]).resolve())]
        for _ in range(50):
            (pair,) = choose_clip(record, cfg, rng).frames
            (s0, f0), (s1, f1) = pair
            assert s0 == s1 and abs(f1 - f0) <= max_gap
            samples = record["shots"][s0]["frames"]
            owners = {_true_shot(gt, samples[f]["frame"]) for f in (f0, f1)}
            assert len(owners) == 1 and -1 not in owners, "both views lie in one true shot"
            gaps.add(abs(f1 - f0))
    assert gaps == set(range(max_gap + 1)), "every displacement up to max_gap is drawn"


def test_vito_pretrains_and_exports_the_online_backbone(tiny_data, tmp_path):
    cfg = apply_overrides(
        preset("VITO"), ["data.videos=8", "data.workers=0", "optim.steps=3", "log_every=1", "ckpt_every=3", "device=cpu"]
    )
    run = pretrain(cfg, [tiny_data], tmp_path / "run", progress=False)
    state = torch.load(run / "checkpoints" / "step_00000003.pt", weights_only=True)["model"]
    online = {k: v for k, v in state.items() if k.startswith("online.backbone.")}
    target = {k: v for k, v in state.items() if k.startswith("target.backbone.")}
    assert online and len(online) == len(target)
    moved = [k for k in online if not torch.equal(online[k], target["target" + k[len("online"):]])]
    assert moved, "the target trails the online network (momentum < 1)"
    from vivi.models.backbone import load_backbone_and_metadata

    backbone, meta = load_backbone_and_metadata(run)
    exported = backbone.state_dict()
    assert all(torch.equal(exported[k[len("online.backbone."):]], v) for k, v in online.items())
    assert meta["preset"] == "VITO"


def test_attention_images_for_a_trained_run(tiny_data, tmp_path):
    from PIL import Image

    from vivi.cli import main

    cfg = apply_overrides(
        preset("VIVI-Ex(4)+Attn"), ["data.videos=2", "data.workers=0", "optim.steps=1", "ckpt_every=1", "device=cpu"]
    )
    run = pretrain(cfg, [tiny_data], tmp_path / "run", progress=False)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(2):
        Image.new("RGB", (80, 60), (40 * i, 100, 200)).save(frames / f"f{i}.jpg")
    assert main(["attention", str(run), str(frames), "-o", str(tmp_path / "att")]) == 0
    pngs = sorted(p.name for p in (tmp_path / "att").glob("*.png"))
    assert pngs == ["000-f0.png", "001-f1.png", "attention.png"]
    from vivi.evaluate.attention import attention_maps, load_run_model

    model, _ = load_run_model(run)
    weights = attention_maps(model, torch.randn(3, 3, 64, 64))
    assert [w.shape for w in weights] == [(3, 4, 4), (3, 2, 2)]  # stages 3 and 4 at 64 px
    assert all(torch.allclose(w.sum(dim=(1, 2)), torch.ones(3)) for w in weights)
    mean_run = pretrain(apply_overrides(preset("Ex-YT-S"), ["data.videos=4", "data.workers=0", "optim.steps=1", "device=cpu"]),
                        [tiny_data], tmp_path / "mean", progress=False)
    assert main(["attention", str(mean_run), str(frames), "-o", str(tmp_path / "x")]) == 2


def test_attention_frames_skip_hidden_files_and_broken_images(tmp_path, capsys):
    """A folder of frames copied from a Mac holds ._name files; one broken frame must not stop it."""
    from PIL import Image

    from vivi.data.images import load_readable
    from vivi.evaluate.attention import frame_files

    Image.new("RGB", (12, 10), (200, 30, 30)).save(tmp_path / "f0.jpg")
    (tmp_path / "._f0.jpg").write_bytes(b"AppleDouble")
    (tmp_path / "broken.png").write_bytes(b"")
    files = frame_files([tmp_path], limit=16)
    assert [f.name for f in files] == ["broken.png", "f0.jpg"]
    pixels, kept = load_readable(files, 8, "vivi attention")
    assert pixels.shape == (1, 3, 8, 8) and kept == [1]
    assert f"skipped 1 unreadable image: {tmp_path / 'broken.png'} (empty file (0 bytes))" in capsys.readouterr().err


def test_attention_frames_say_what_they_leave_out(tmp_path, capsys):
    """A folder's other files were dropped, and --max cut the frames, without a word."""
    from PIL import Image

    from vivi.evaluate.attention import frame_files

    for i in range(3):
        Image.new("RGB", (12, 10), (200, 30, 30)).save(tmp_path / f"f{i}.jpg")
    (tmp_path / "notes.txt").write_text("shot list")
    (tmp_path / "clip.mp4").write_bytes(b"")
    files = frame_files([tmp_path], limit=2)
    assert [f.name for f in files] == ["f0.jpg", "f1.jpg"]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert err[0].startswith(f"vivi: warning: {tmp_path / 'clip.mp4'}: not an image (extensions: ")
    assert err[0].endswith("; left out, with 1 more file(s) of other extensions")
    assert err[1] == "vivi: warning: showing 2 of 3 frames (--max 2; the first 2 in name order)"
    assert frame_files([tmp_path / "f0.jpg"], limit=2) == [tmp_path / "f0.jpg"] and capsys.readouterr().err == ""
