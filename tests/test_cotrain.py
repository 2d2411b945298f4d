"""Co-training with labelled images and the image baselines: the image source, the presets,
a few SGD steps on a fixed batch, and short real runs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vivi.cli import main
from vivi.config import apply_overrides, preset
from vivi.data.augment import augment, hsv_jitter
from vivi.data.images import balanced_subset, image_batches, open_labelled, scan_images
from vivi.errors import UserError
from vivi.models.vivi import VIVIModel
from vivi.train.loop import pretrain
from vivi.train.objective import VIVIObjective


def write_folder(root: Path, classes: int, per_class: int, size: tuple[int, int] = (40, 30)) -> Path:
    """``root/c<i>/<j>.png``: a flat colour per class plus noise."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for j in range(per_class):
            pixels = np.clip(rng.normal(60 * c + 40, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{j}.png")
    return root


def test_balanced_subset_keeps_a_fraction_of_every_class_deterministically():
    labels = np.repeat(np.arange(4), [50, 20, 7, 1])
    keep = balanced_subset(labels, 0.1, seed=3)
    assert np.bincount(labels[keep], minlength=4).tolist() == [5, 2, 1, 1]  # at least one per class
    assert np.array_equal(keep, balanced_subset(labels, 0.1, seed=3))
    assert not np.array_equal(keep, balanced_subset(labels, 0.1, seed=4))
    assert np.array_equal(keep, np.sort(keep)) and len(set(keep.tolist())) == len(keep)
    assert np.array_equal(balanced_subset(labels, 1.0, seed=0), np.arange(len(labels)))


def test_labelled_folder_reads_classes_from_train_and_batches_images(tmp_path):
    write_folder(tmp_path / "set" / "train", classes=3, per_class=4)
    folder = open_labelled(f"imagefolder:{tmp_path / 'set'}", 0.5, seed=0)
    assert folder.classes == ["c0", "c1", "c2"] and np.bincount(folder.labels).tolist() == [2, 2, 2]
    images, labels = next(image_batches(folder, batch=5, size=16, seed=1))
    assert images.shape == (5, 3, 16, 16) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1, 2}
    again, _ = next(image_batches(folder, batch=5, size=16, seed=1))
    assert torch.equal(images, again)


def test_unlabelled_folder_may_hold_images_directly(tmp_path):
    write_folder(tmp_path, classes=1, per_class=3)
    flat = scan_images(tmp_path / "c0", labelled=False)
    assert len(flat.paths) == 3 and flat.labels.tolist() == [0, 0, 0]
    with pytest.raises(UserError, match="only one class folder"):
        scan_images(tmp_path, labelled=True)


def test_image_source_errors_name_the_folder_and_counts(tmp_path):
    write_folder(tmp_path / "few", classes=2, per_class=3)
    folder = open_labelled(f"imagefolder:{tmp_path / 'few'}", 0.5, seed=0)
    with pytest.raises(UserError, match=r"few: 4 images \(labelled_fraction=0.5 of 6\), fewer than the 8"):
        image_batches(folder, batch=8, size=16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty: no images"):
        scan_images(tmp_path / "empty", labelled=False)
    with pytest.raises(UserError, match="no class folders"):
        scan_images(tmp_path / "empty", labelled=True)
    with pytest.raises(UserError, match="no such directory"):
        scan_images(tmp_path / "missing", labelled=False)
    with pytest.raises(UserError, match="c0/0.png: exists but is not a directory"):
        scan_images(tmp_path / "few" / "c0" / "0.png", labelled=False)
    with pytest.raises(UserError, match="imagefolder:DIR"):
        open_labelled(str(tmp_path / "few"), 1.0, seed=0)


@pytest.mark.parametrize(
    "name, lr, decays, wd, images, fraction, width",
    [
        ("VIVI-Ex(4)-Co(10%)", 0.1, [76_000, 88_000, 96_000], 1e-4, 256, 0.1, 1),
        ("VIVI-Ex(4)-Co(100%)", 0.8, [70_000, 85_000, 95_000], 1e-4, 2048, 1.0, 1),
        ("VIVI-Ex(4)-Co(100%)-Big", 0.8, [70_000, 85_000, 95_000], 1e-4, 2048, 1.0, 3),
    ],
)
def test_cotrained_presets_follow_table5(name, lr, decays, wd, images, fraction, width):
    paper, tiny = preset(name, "paper"), preset(name)
    o = paper.optim
    assert (o.lr, o.steps, o.warmup_steps, o.decay_steps, o.weight_decay) == (lr, 100_000, 3_000, decays, wd)
    assert paper.loss.video_weight == tiny.loss.video_weight == 0.04  # Table 5's 0.04 is lambda (vivi.config)
    assert (paper.data.labelled_batch, paper.data.labelled_fraction) == (images, fraction)
    assert (paper.data.shots, paper.data.frames, paper.shots_per_batch, paper.model.predictor) == (4, 8, 2048, "lstm")
    assert paper.model.backbone.width_factor == tiny.model.backbone.width_factor == width
    assert paper.model.backbone.norm == tiny.model.backbone.norm == "groupnorm_ws"
    assert tiny.data.labelled_batch == max(8, images * 32 // 2048) and tiny.optim.lr == lr / 8
    assert (tiny.optim.steps, tiny.shots_per_batch, tiny.loss.sup_weight) == (400, 32, 1.0)


@pytest.mark.parametrize("name, frames, frame_loss", [("Ex-ImageNet", 8, "exemplar"), ("Rot-ImageNet", 1, "rotation")])
def test_image_baselines_follow_table5(name, frames, frame_loss):
    paper, tiny = preset(name, "paper"), preset(name)
    o = paper.optim
    assert (o.lr, o.steps, o.warmup_steps, o.decay_steps) == (0.8, 120_000, 17_000, [52_000, 86_000])
    for cfg, batch in ((paper, 2048), (tiny, 32)):
        d = cfg.data
        assert (d.mode, d.videos, d.shots, d.frames, cfg.loss.frame_loss) == ("images", batch, 1, frames, frame_loss)
        assert (cfg.loss.video_loss, d.labelled_batch, cfg.model.backbone.norm) == ("none", 0, "batchnorm")


def test_cotrained_preset_without_labelled_images_names_the_flag(tmp_path):
    with pytest.raises(UserError, match="--labelled imagefolder:DIR"):
        pretrain(preset("VIVI-Ex(4)-Co(10%)"), [tmp_path], tmp_path / "run", progress=False)
    with pytest.raises(UserError, match="labelled_batch"):
        apply_overrides(preset("VIVI-Ex(4)"), ["data.labelled=imagefolder:x"])
    assert main(["pretrain", "--preset", "Ex-ImageNet", "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2


TINY = [
    "model.backbone.channels=[8,16,32,64]", "model.backbone.stem_chs=8", "augment.image_size=32",
    "data.load_size=32", "model.exemplar_dim=32", "model.video_dim=32", "model.lstm_hidden=16",
    "data.workers=0",
]


@pytest.mark.parametrize("name", ["VIVI-Ex(4)-Co(100%)", "Ex-ImageNet"])
def test_cotrained_and_image_models_train_on_a_fixed_batch(name, one_thread):
    # GroupNorm (the co-trained presets) needs more than one value per group: 64 px, not 32
    px = 64 if "Co" in name else 32
    size = [f"augment.image_size={px}", f"data.load_size={px}"]
    cfg = apply_overrides(preset(name), [*TINY, *size, "data.videos=2" if "Co" in name else "data.videos=8"])
    cfg.model.classes = 3
    v, k, f = cfg.data.videos, cfg.data.shots, cfg.data.frames
    torch.manual_seed(0)
    if cfg.data.mode == "images":  # each image repeated F times, as the loop lays it out
        clips = torch.randint(0, 256, (v, 1, 1, 3, px, px), dtype=torch.uint8).expand(v, 1, f, 3, px, px)
    else:
        clips = torch.randint(0, 256, (v, k, f, 3, px, px), dtype=torch.uint8)
    images = torch.randint(0, 256, (8, 3, px, px), dtype=torch.uint8)
    labels = torch.arange(8) % 3
    model, objective = VIVIModel(cfg), VIVIObjective(cfg.loss)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    cotrain = cfg.data.labelled_batch > 0
    losses = []
    for _ in range(8):
        gen = torch.Generator().manual_seed(0)
        frames = augment(clips.flatten(0, 2), cfg.augment, gen)
        x = augment(images, hsv_jitter(cfg.augment), gen) if cotrain else None
        out = model(frames.view(v, k, f, *frames.shape[1:]), generator=gen, images=x)
        terms = objective(out, v, k, f, labels if cotrain else None)
        assert ("loss_sup" in terms) == cotrain
        assert all(torch.isfinite(t) for t in terms.values()), terms
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(terms["loss"].item())
    assert losses[-1] < losses[0], losses


def test_cotrained_pretrain_logs_the_supervised_loss_and_resumes(tiny_data, tmp_path, one_thread):
    labelled = write_folder(tmp_path / "labelled", classes=3, per_class=6)
    cfg = apply_overrides(
        preset("VIVI-Ex(4)-Co(10%)"),
        [*TINY, "data.videos=2", f"data.labelled=imagefolder:{labelled}", "data.labelled_fraction=0.5",
         "optim.steps=2", "log_every=1"],
    )
    run = pretrain(cfg, [tiny_data], tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["loss_sup"]) and r["loss_sup"] > 0 for r in rows)
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["classes"] == 3 and saved["data"]["labelled_batch"] == 8
    pretrain(cfg, [tiny_data], run, progress=False)  # the saved classes match: resumes, no extra step
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_ex_imagenet_pretrains_on_an_image_folder_from_the_cli(tmp_path, one_thread):
    images = write_folder(tmp_path / "images", classes=2, per_class=5)
    run = tmp_path / "run"
    argv = ["pretrain", "--preset", "Ex-ImageNet", "--images", str(images), "--out", str(run), "--steps", "2"]
    for item in [*TINY, "data.videos=8", "log_every=1"]:
        argv += ["--set", item]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss_sf"]) for r in rows)
    assert (run / "backbone.safetensors").is_file()


def test_supervised_baseline_learns_the_folder_labels_from_the_cli(tmp_path, one_thread):
    images = write_folder(tmp_path / "images", classes=3, per_class=4)
    run = tmp_path / "run"
    argv = ["pretrain", "--preset", "Sup-ImageNet", "--images", str(images), "--out", str(run), "--steps", "3",
            "--labelled-fraction", "0.5"]
    for item in [*TINY, "data.videos=6", "log_every=1"]:
        argv += ["--set", item]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and set(rows[0]) >= {"loss_sf", "loss"} and "loss_v" not in rows[0]
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["classes"] == 3 and saved["model"]["backbone"]["norm"] == "groupnorm_ws"
    # 2 of 4 images per class are kept: 6 images, one batch of 6 per step
    assert main([*argv[:-6], "--out", str(tmp_path / "r2"), "--steps", "1", "--set", "data.videos=7",
                 *sum((["--set", x] for x in TINY), [])]) == 2


def test_a_broken_training_image_is_replaced_by_the_next_one_with_a_warning(tmp_path, capsys):
    """A run must not stop (again at every resume) on one broken file; the stand-in is a pure
    function of the step, so resuming stays exact, and it brings its own label."""
    from vivi.data.images import StepImages

    write_folder(tmp_path, classes=2, per_class=2, size=(8, 8))
    (tmp_path / "c0" / "1.png").write_bytes(b"truncated")
    folder = scan_images(tmp_path, labelled=True)
    images, labels = StepImages(folder, batch=4, size=8, seed=0)[0]  # one pass: every image once
    assert sorted(labels.tolist()) == [0, 1, 1, 1]  # c0/1.png -> c1/0.png, the next in the folder
    assert torch.equal(StepImages(folder, batch=4, size=8, seed=0)[0][0], images)
    err = capsys.readouterr().err
    assert f"{tmp_path / 'c0' / '1.png'}: unreadable image" in err and "replaced by the next image" in err
