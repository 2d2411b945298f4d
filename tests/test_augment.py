import torch

from vivi.config import AugmentConfig
from vivi.data.augment import augment, color_distort, crop_boxes, crop_resize


def _gray(x):
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def test_color_matrix_equals_sequential_ops():
    """The fused 3x3 colour transform equals brightness -> contrast -> saturation applied one by one."""
    g = torch.Generator().manual_seed(0)
    cfg = AugmentConfig(hue=0.0, color_prob=1.0, gray_prob=0.0, brightness=0.3, contrast=0.3, saturation=0.3)
    x = torch.rand(6, 3, 5, 5) * 0.5 + 0.25
    got = color_distort(x, cfg, g)
    g = torch.Generator().manual_seed(0)
    u = lambda s: torch.rand(6, generator=g) * 2 * s + (1 - s)  # noqa: E731 - same draw order as the code
    b, c, s = (u(0.3).view(6, 1, 1, 1) for _ in range(3))
    y = x * b
    m = _gray(y).mean(dim=(1, 2, 3), keepdim=True)
    y = (y - m) * c + m
    y = _gray(y) + (y - _gray(y)) * s
    assert torch.allclose(got, y.clamp(0, 1), atol=1e-5)


def test_hue_rotation_keeps_gray_and_luma():
    g = torch.Generator().manual_seed(1)
    cfg = AugmentConfig(hue=0.5, color_prob=1.0, gray_prob=0.0, brightness=0, contrast=0, saturation=0)
    gray = torch.full((4, 3, 3, 3), 0.4)
    assert torch.allclose(color_distort(gray, cfg, g), gray, atol=1e-5)


def test_crop_boxes_inside_frame_and_in_range():
    g = torch.Generator().manual_seed(0)
    b = crop_boxes(2000, (0.08, 1.0), (0.75, 4 / 3), g, torch.device("cpu"))
    cx, cy, w, h = b.unbind(1)
    assert ((cx - w / 2) >= -1e-6).all() and ((cx + w / 2) <= 1 + 1e-6).all()
    assert ((cy - h / 2) >= -1e-6).all() and ((cy + h / 2) <= 1 + 1e-6).all()
    area = w * h
    assert area.min() >= 0.08 - 1e-6 and area.max() <= 1 + 1e-6


def test_full_box_crop_is_a_resize_and_flip_mirrors():
    x = torch.arange(16.0).view(1, 1, 4, 4).expand(1, 3, 4, 4).contiguous()
    full = torch.tensor([[0.5, 0.5, 1.0, 1.0]])
    assert torch.allclose(crop_resize(x, full, 4), x, atol=1e-5)
    assert torch.allclose(crop_resize(x, full, 4, torch.tensor([True])), x.flip(3), atol=1e-5)


def test_augment_shape_range_and_determinism():
    frames = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    cfg = AugmentConfig(image_size=24)
    a = augment(frames, cfg, torch.Generator().manual_seed(3))
    b = augment(frames, cfg, torch.Generator().manual_seed(3))
    assert a.shape == (8, 3, 24, 24) and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1


def _roi_align_crop(images, boxes, size, flip):
    """Independent reference: torchvision's roi_align with one bilinear sample per output pixel."""
    from torchvision.ops import roi_align

    n, _, h, w = images.shape
    cx, cy, bw, bh = boxes.unbind(1)
    rois = torch.stack([torch.arange(n).float(), (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], 1)
    out = roi_align(images, rois, size, spatial_scale=1.0, sampling_ratio=1, aligned=True)
    return torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)


def test_crop_resize_matches_roi_align():
    g = torch.Generator().manual_seed(1)
    for src, size in ((96, 64), (32, 24)):  # the crops stay inside the frame: padding never matters
        x = torch.rand(300, 3, src, src, generator=g)
        boxes = crop_boxes(300, (0.08, 1.0), (0.75, 4 / 3), g, torch.device("cpu"))
        flip = torch.rand(300, generator=g) < 0.5
        torch.testing.assert_close(crop_resize(x, boxes, size, flip), _roi_align_crop(x, boxes, size, flip), atol=1e-4, rtol=0)


def test_crop_resize_equals_grid_sample_with_border_padding():
    """Against grid_sample on affine_grid's grid, for non-square images and boxes reaching past the
    frame (where the border padding decides), from uint8 as from float."""
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (50, 3, 30, 44), dtype=torch.uint8, generator=g)
    boxes = torch.rand(50, 4, generator=g) * torch.tensor([1.4, 1.4, 1.5, 1.5]) - torch.tensor([0.2, 0.2, 0.0, 0.0])
    boxes[:, 2:] += 0.05
    flip = torch.rand(50, generator=g) < 0.5
    cx, cy, w, h = boxes.unbind(1)
    theta = torch.zeros(50, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = torch.where(flip, -w, w), 2 * cx - 1
    theta[:, 1, 1], theta[:, 1, 2] = h, 2 * cy - 1
    grid = torch.nn.functional.affine_grid(theta, [50, 3, 20, 20], align_corners=False)
    expected = torch.nn.functional.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    got = crop_resize(x, boxes, 20, flip)
    assert got.dtype == torch.float32 and got.shape == (50, 3, 20, 20)
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)  # 0-255 scale
    torch.testing.assert_close(crop_resize(x.float(), boxes, 20, flip), got, atol=1e-4, rtol=0)


def test_crop_resize_grid_equals_affine_grid():
    """The per-axis grid is affine_grid's for the same scale-and-shift map (a second reference)."""
    g = torch.Generator().manual_seed(2)
    x = torch.rand(64, 3, 40, 40, generator=g)
    boxes = crop_boxes(64, (0.08, 1.0), (0.75, 4 / 3), g, torch.device("cpu"))
    flip = torch.rand(64, generator=g) < 0.5
    cx, cy, w, h = boxes.unbind(1)
    theta = torch.zeros(64, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = torch.where(flip, -w, w), 2 * cx - 1
    theta[:, 1, 1], theta[:, 1, 2] = h, 2 * cy - 1
    grid = torch.nn.functional.affine_grid(theta, [64, 3, 24, 24], align_corners=False)
    expected = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    torch.testing.assert_close(crop_resize(x, boxes, 24, flip), expected, atol=1e-5, rtol=0)


def test_augment_folds_scaling_colour_and_normalisation_into_one_matmul():
    """The fused path equals the sequential one: /255, crop, colour distortion, clamp, normalise."""
    from vivi.data.augment import normalize

    cfg = AugmentConfig(image_size=24)
    frames = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    fused = augment(frames, cfg, g1)
    boxes = crop_boxes(16, tuple(cfg.crop_scale), tuple(cfg.crop_ratio), g2, torch.device("cpu"))
    flip = torch.rand(16, generator=g2) < 0.5
    sequential = normalize(color_distort(crop_resize(frames.float() / 255, boxes, 24, flip), cfg, g2))
    torch.testing.assert_close(fused, sequential, atol=1e-5, rtol=0)


def test_network_input_normalises_and_is_channels_last():
    from vivi.data.augment import MEAN, STD, network_input

    images = torch.randint(0, 256, (3, 3, 5, 7), dtype=torch.uint8)
    x = network_input(images)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (images.float() / 255.0 - mean) / std)
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_step_augment_repeats_each_image_and_draws_every_copy_anew():
    from vivi.data.augment import StepAugment, step_generator

    cfg = AugmentConfig(image_size=16)
    images = (torch.arange(2 * 3 * 20 * 20) % 251).to(torch.uint8).view(2, 3, 20, 20)

    class Steps(torch.utils.data.Dataset):
        def __getitem__(self, step):
            return images, torch.tensor([7, 9])

    x, labels = StepAugment(Steps(), cfg, seed=1, channels_last=False, repeat=3)[4]
    assert x.shape == (6, 3, 16, 16) and labels.tolist() == [7, 9]
    expected = augment(images.repeat_interleave(3, 0), cfg, step_generator(1, 4))
    torch.testing.assert_close(x, expected, rtol=0, atol=0)
    assert not torch.equal(x[0], x[1]), "copies of one image get their own crop and colour"
