"""Rotation SSL, shot order prediction and the -AA presets: direct checks, slow references,
and a few SGD steps of every preset on one fixed tiny batch."""

import math

import pytest
import torch

from vivi.config import PRESET_NAMES, apply_overrides, preset
from vivi.models import build_model
from vivi.data.augment import augment
from vivi.errors import UserError
from vivi.losses import OrderLoss, RotationLoss, random_reversal, rotated_batch
from vivi.models.predictors import OrderPredictor
from vivi.models.vivi import VIVIModel
from vivi.train.objective import VIVIObjective


def test_rotated_batch_moves_a_marked_pixel_and_labels_quarter_turns():
    n, s = 2, 5
    images = torch.zeros(n, 3, s, s)
    images[:, :, 1, 3] = 1.0  # row 1, column 3
    copies, labels = rotated_batch(images)
    assert copies.shape == (4 * n, 3, s, s)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # Counter-clockwise quarter turns (torch.rot90 over (H, W)): (r, c) -> (s-1-c, r) each turn.
    where = [(1, 3), (s - 1 - 3, 1), (s - 1 - 1, s - 1 - 3), (3, s - 1 - 1)]
    for turn, (r, c) in enumerate(where):
        for i in range(n):
            img = copies[turn * n + i]
            assert img[:, r, c].eq(1).all() and img.sum() == 3


def test_rotated_batch_keeps_unrotated_copies_first():
    images = torch.randn(3, 3, 4, 4)
    copies, _ = rotated_batch(images)
    assert torch.equal(copies[:3], images)
    assert torch.equal(copies[6:9], images.flip(-1).flip(-2))  # 180 degrees


def test_rotation_loss_matches_per_copy_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 4, generator=g)
    labels = torch.arange(4).repeat_interleave(3)
    want = 0.0
    for i in range(12):
        row = [float(x) for x in logits[i]]
        want += -(row[int(labels[i])] - math.log(sum(math.exp(x) for x in row)))
    assert RotationLoss()(logits, labels).item() == pytest.approx(want / 12, rel=1e-6)


def test_random_reversal_reverses_exactly_the_labelled_videos():
    shots = torch.randn(16, 3, 5)
    reordered, labels = random_reversal(shots, torch.Generator().manual_seed(0))
    again, labels_again = random_reversal(shots, torch.Generator().manual_seed(0))
    assert torch.equal(labels, labels_again) and torch.equal(reordered, again)
    assert 0 < labels.sum() < 16  # both outcomes occur at this seed
    for v in range(16):
        want = shots[v, [2, 1, 0]] if labels[v] == 1 else shots[v]
        assert torch.equal(reordered[v], want)


def test_order_loss_matches_hand_computed_bce():
    logits = torch.tensor([2.0, -1.0, 0.5])
    labels = torch.tensor([1.0, 1.0, 0.0])
    sig = [1 / (1 + math.exp(-x)) for x in logits.tolist()]
    want = -(math.log(sig[0]) + math.log(sig[1]) + math.log(1 - sig[2])) / 3
    assert OrderLoss()(logits, labels).item() == pytest.approx(want, rel=1e-6)


def test_order_predictor_reads_concatenated_shots():
    pred = OrderPredictor(dim=8, shots=2, hidden=512)
    assert pred.mlp[0].in_features == 16 and pred.mlp[0].out_features == 512
    assert pred(torch.randn(5, 2, 8)).shape == (5,)


@pytest.mark.parametrize(
    "name, mode, shots, frames, frame_loss, video_loss, predictor",
    [
        ("Rot-YT-F", "frame", 1, 1, "rotation", "none", "none"),
        ("VIVI-Rot(2)", "shots", 2, 4, "rotation", "infonce", "mlp"),
        ("VIVI-Rot(4)", "shots", 4, 4, "rotation", "infonce", "lstm"),
        ("VIVI-Ex(2)-Ord", "shots", 2, 8, "exemplar", "order", "none"),
    ],
)
def test_new_presets_follow_table5(name, mode, shots, frames, frame_loss, video_loss, predictor):
    cfg = preset(name)
    d = cfg.data
    assert (d.mode, d.shots, d.frames, cfg.loss.frame_loss, cfg.loss.video_loss, cfg.model.predictor) == (
        mode, shots, frames, frame_loss, video_loss, predictor,
    )
    assert cfg.shots_per_batch == 32 and preset(name, "paper").shots_per_batch == 2048
    assert not cfg.augment.autoaugment
    schedule = (17_000, [52_000, 86_000]) if name == "Rot-YT-F" else (5_000, [90_000, 110_000])
    assert (preset(name, "paper").optim.warmup_steps, preset(name, "paper").optim.decay_steps) == schedule


@pytest.mark.parametrize("name", ["VIVI-Ex(4)", "Rot-YT-F", "VIVI-Ex(4)-Big", "VIVI-Ex(2)-Ord"])
def test_aa_suffix_turns_on_autoaugment_and_halves_video_weight(name):
    base, aa = preset(name, "paper"), preset(f"{name}-AA", "paper")
    assert aa.preset == f"{name}-AA" and aa.augment.autoaugment and not base.augment.autoaugment
    assert aa.loss.video_weight == base.loss.video_weight / 2
    assert (aa.data, aa.model, aa.optim) == (base.data, base.model, base.optim)
    # a changed step count still rescales with the base preset's schedule
    assert apply_overrides(preset(f"{name}-AA"), ["optim.steps=1200"]).optim.warmup_steps == (
        apply_overrides(preset(name), ["optim.steps=1200"]).optim.warmup_steps
    )


def test_unknown_preset_mentions_aa_suffix():
    with pytest.raises(UserError, match="-AA"):
        preset("Rot-YT-S-AA")


@pytest.mark.parametrize(
    "name, overrides, why",
    [
        ("VIVI-Ex(2)-Ord", ["data.shots=1", "data.videos=32"], "order"),
        ("Rot-YT-F", ["loss.frame_loss=exemplar"], "frames >= 2"),
        ("VIVI-Ex(4)", ["loss.frame_loss=jigsaw"], "frame_loss"),
        ("VIVI-Ex(4)", ["loss.video_loss=cpc"], "video_loss"),
    ],
)
def test_impossible_loss_combinations_are_user_errors(name, overrides, why):
    with pytest.raises(UserError, match=why):
        apply_overrides(preset(name), overrides)


def test_autoaugment_replaces_colour_distortion_and_is_reproducible():
    cfg = preset("VIVI-Ex(4)-AA").augment
    cfg.image_size = 16
    frames = torch.randint(0, 256, (4, 3, 24, 24), dtype=torch.uint8)
    state = torch.get_rng_state()
    a = augment(frames, cfg, torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    assert torch.equal(a, augment(frames, cfg, torch.Generator().manual_seed(5)))
    assert a.shape == (4, 3, 16, 16) and a.min() >= -1 and a.max() <= 1


TINY = [
    "model.backbone.channels=[8,16,32,64]", "model.backbone.stem_chs=8", "augment.image_size=32",
    "data.load_size=32", "model.exemplar_dim=32", "model.video_dim=32", "model.lstm_hidden=16",
    "model.mlp_hidden=16", "model.mlp_out=16", "model.order_hidden=32",
]


@pytest.mark.parametrize("name", [*PRESET_NAMES, "VIVI-Rot(2)-AA", "VIVI-Ex(4)+Attn"])
def test_every_preset_trains_on_a_fixed_batch(name, one_thread):
    cfg = preset(name)
    videos = 2 if cfg.data.shots == 4 else 4
    extra = ["model.projector_hidden=32", "model.projector_dim=16", "model.attention_hidden=16"]
    # GroupNorm needs more than one value per group: at 32 px the last stage is 1x1, so 64 px there
    px = 64 if cfg.model.backbone.norm == "groupnorm_ws" else 32
    size = [f"augment.image_size={px}", f"data.load_size={px}"]
    cfg = apply_overrides(cfg, [*TINY, *extra, *size, f"data.videos={videos}", "model.backbone.width_factor=1"])
    v, k, f = cfg.data.videos, cfg.data.shots, cfg.data.frames
    torch.manual_seed(0)
    clips = torch.randint(0, 256, (v, k, f, 3, px, px), dtype=torch.uint8)
    labels = None
    if cfg.loss.frame_loss == "supervised":  # the labelled-images baseline: its labels come with the batch
        cfg.model.classes = 3
        labels = torch.arange(v) % 3
    model = build_model(cfg)
    objective = VIVIObjective(cfg.loss)
    lr = 0.05
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for _ in range(8):
        gen = torch.Generator().manual_seed(0)  # the same augmentation and reversals every step
        frames = augment(clips.flatten(0, 2), cfg.augment, gen)
        terms = objective(model(frames.view(v, k, f, *frames.shape[1:]), generator=gen), v, k, f, labels)
        assert set(terms) == ({"loss_sf", "loss"} if cfg.loss.video_loss == "none" else {"loss_sf", "loss_v", "loss"})
        assert all(torch.isfinite(t) for t in terms.values()), terms
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        if hasattr(model, "update_target"):  # VITO's EMA target follows the online network
            model.update_target(0.9)
        losses.append(terms["loss"].item())
    assert losses[-1] < losses[0], losses
