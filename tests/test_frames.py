"""The loader's fast paths against the slow, obvious ones: tar headers against ``tarfile``,
the JPEG size against PIL, the torchvision decode path against PIL's resize-and-crop."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from vivi.data.frames import _load_with_pil, jpeg_size, load_frame, tar_members


def _jpeg(w: int, h: int, seed: int = 0, **save) -> bytes:
    rng = np.random.default_rng(seed)
    # smooth content, so that resampling differences stay small
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), np.full_like(xx, rng.integers(0, 255))], -1)
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, format="JPEG", quality=95, **save)
    return buf.getvalue()


def _tar_bytes(members: dict[str, bytes], fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_tar_members_match_tarfile(fmt):
    members = {
        "vid-1.json": b'{"a": 1}',
        "vid-1.s000.f000.jpg": b"x" * 511,
        "vid-1.s000.f001.jpg": b"y" * 512,
        "vid-1.s001.f000.jpg": b"z" * 513,
        "vid-1.s001.f001.jpg": b"",
    }
    buf = _tar_bytes(members, fmt)
    expected = {name.split(".", 1)[1]: data for name, data in members.items()}
    assert tar_members(buf) == expected
    # a key too long for the 100-byte name field: pax/GNU headers, read through tarfile
    if fmt != tarfile.USTAR_FORMAT:
        long = {"v" * 120 + ".s000.f000.jpg": b"q" * 7, "v" * 120 + ".json": b"{}"}
        assert tar_members(_tar_bytes(long, fmt)) == {"s000.f000.jpg": b"q" * 7, "json": b"{}"}


def test_tar_members_refuses_a_damaged_header():
    buf = bytearray(_tar_bytes({"vid.s000.f000.jpg": b"x" * 20, "vid.s000.f001.jpg": b"y" * 20}, tarfile.PAX_FORMAT))
    second = 1024  # header, one data block, then the second header
    buf[second + 10] ^= 0x01  # one bit of the second member's name
    with pytest.raises(ValueError, match="damaged tar header at byte 1024"):
        tar_members(bytes(buf))


def test_tar_members_refuses_a_truncated_member():
    buf = _tar_bytes({"vid.s000.f000.jpg": b"x" * 2000}, tarfile.PAX_FORMAT)
    with pytest.raises(ValueError, match="truncated"):
        tar_members(buf[:1024])


@pytest.mark.parametrize(("w", "h", "save"), [(96, 96, {}), (170, 96, {}), (31, 77, {"progressive": True}),
                                              (64, 48, {"subsampling": 0})])  # fmt: skip
def test_jpeg_size_matches_pil(w, h, save):
    data = _jpeg(w, h, **save)
    assert jpeg_size(data) == Image.open(io.BytesIO(data)).size == (w, h)
    assert jpeg_size(b"\x89PNG\r\n") is None and jpeg_size(b"") is None


@pytest.mark.parametrize(("w", "h", "size"), [(96, 96, 96), (170, 96, 96), (96, 170, 64), (100, 80, 64), (70, 50, 32)])
def test_torchvision_path_matches_pil_resize_and_crop(w, h, size):
    """Noise images: any difference in geometry (crop offsets) or filter would show at once."""
    rgb = np.random.default_rng(w + h).integers(0, 256, (h, w, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    fast, slow = load_frame(data, size), _load_with_pil(data, size)
    assert fast.shape == slow.shape == (3, size, size) and fast.dtype == torch.uint8
    diff = (fast.int() - slow.int()).abs()
    assert diff.max() <= 1 and diff.float().mean() < 0.3, (diff.float().mean(), diff.max())


def test_large_frames_go_through_pil_draft_and_other_formats_still_load():
    data = _jpeg(400, 300)
    assert torch.equal(load_frame(data, 96), _load_with_pil(data, 96))
    png = io.BytesIO()
    Image.new("RGB", (40, 20), (10, 200, 30)).save(png, format="PNG")
    out = load_frame(png.getvalue(), 16)
    assert out.shape == (3, 16, 16) and out[:, 8, 8].tolist() == [10, 200, 30]


def test_a_corrupt_jpeg_is_an_error_pil_names():
    data = _jpeg(96, 96)
    with pytest.raises((OSError, ValueError, SyntaxError)):
        load_frame(data[:200], 96)


def test_frame_cache_is_a_bounded_lru_that_owns_its_frames():
    from vivi.data.frames import FrameCache

    frame = torch.zeros(3, 4, 4, dtype=torch.uint8)  # 48 bytes
    cache = FrameCache(max_bytes=100)
    big = torch.arange(3 * 8 * 8, dtype=torch.uint8).view(3, 8, 8)
    cache.put("a", big[:, :4, :4])  # a view: stored as its own 48 bytes
    assert cache.bytes == 48 and cache.get("a").untyped_storage().nbytes() == 48
    assert torch.equal(cache.get("a"), big[:, :4, :4])
    cache.put("b", frame)
    cache.get("a")  # a is now the most recent: b goes first
    cache.put("c", frame + 1)
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.bytes == 96 and len(cache) == 2
    cache.put("huge", torch.zeros(200, dtype=torch.uint8))  # larger than the cache: not kept
    assert cache.get("huge") is None and len(cache) == 2
    assert (cache.hits, cache.misses) == (5, 2)


@pytest.mark.parametrize("w, h", [(40, 20), (400, 200)])  # the torchvision path and PIL's draft path
def test_exif_orientation_is_applied_on_both_decode_paths(w, h):
    """Phone photos are stored sideways with an EXIF orientation; they must stand upright."""
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, : w // 2] = 255  # left half white
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the white half goes to the top
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95, exif=exif)
    out = load_frame(buf.getvalue(), 16).float().mean(0)
    assert out[:4].mean() > 200 and out[-4:].mean() < 50
