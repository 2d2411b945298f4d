"""Image folders as users have them: found by feeding `vivi` odd folders and odd files."""

from __future__ import annotations

import io
import unicodedata
import warnings

import numpy as np
import pytest
from PIL import Image, features

from vivi.data.images import load_image, scan_images
from vivi.data.tasks import FileSplit, UnreadableImage, _load_image_folder, read_image
from vivi.errors import UserError


def _png(path, colour=(200, 30, 30), size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _classes(root, names, n=2):
    for name in names:
        for i in range(n):
            _png(root / name / f"{i}.png")


def test_a_class_named_train_beside_other_classes_is_a_class(tmp_path):
    """CIFAR-100 (and many vehicle data sets) have a class named "train". An unlabelled folder
    DIR/<class>/* with such a class was read as the split DIR/train/: Ex-ImageNet trained on that
    one class's images alone without a word, and co-training said "no class folders"."""
    _classes(tmp_path, ["airplane", "bus", "train"], n=3)
    folder = scan_images(tmp_path, labelled=False)
    assert folder.classes == ["airplane", "bus", "train"]
    assert len(folder.paths) == 9
    assert scan_images(tmp_path, labelled=True).classes == ["airplane", "bus", "train"]


def test_a_train_split_is_still_read_as_the_split(tmp_path):
    _classes(tmp_path / "train", ["cat", "dog", "train"])
    _classes(tmp_path / "test", ["cat", "dog", "train"])
    folder = scan_images(tmp_path, labelled=True)
    assert folder.root == tmp_path / "train"
    assert folder.classes == ["cat", "dog", "train"]
    # STL-10's layout, with a stray image in train/: still the split
    other = tmp_path / "stl"
    _classes(other / "train", ["cat", "dog"])
    _png(other / "train" / "stray.png")
    _png(other / "unlabeled" / "0.png")
    assert scan_images(other, labelled=True).root == other / "train"


def test_images_between_the_bomb_limits_are_read_quietly_for_pretraining(tmp_path, monkeypatch):
    """Evaluation reads an image over PIL's warning limit but under its refusal limit quietly;
    pretraining on the same folder printed PIL's two-line DecompressionBombWarning (naming PIL's
    own source file, not the image) for each such image."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "panorama.png"
    _png(path, size=(40, 40))  # 1600 px: over 1x the limit, under 2x
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert read_image(path).shape == (3, 40, 40)
        assert load_image(path, 16).shape == (3, 16, 16)


def _damaged_avif() -> bytes | None:
    """An AVIF whose colour planes do not decode: PIL's AVIF plugin raises RuntimeError for it."""
    x = np.zeros((40, 60, 3), np.uint8)
    x[..., 0] = np.arange(60)[None]
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, "AVIF")
    data = buf.getvalue()
    for i in range(len(data) - 1, len(data) - 200, -1):
        damaged = bytearray(data)
        damaged[i] ^= 0xFF
        try:
            with Image.open(io.BytesIO(bytes(damaged))) as img:
                img.load()
        except RuntimeError:
            return bytes(damaged)
        except Exception:
            continue
    return None


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF decoder")
def test_a_damaged_avif_under_an_image_name_is_skipped_not_a_traceback(tmp_path):
    """Images saved from the web are often AVIF under a .jpg name; a damaged one stopped the whole
    evaluation (and pretraining) with PIL's RuntimeError traceback."""
    data = _damaged_avif()
    if data is None:
        pytest.skip("no single-byte damage of this AVIF makes PIL raise RuntimeError")
    path = tmp_path / "scraped.jpg"
    path.write_bytes(data)
    with pytest.raises(UnreadableImage, match="scraped.jpg"):
        read_image(path)
    with pytest.raises(UnreadableImage, match="scraped.jpg"):
        load_image(path, 16)
    split = FileSplit([path], np.zeros(1))
    assert split.images([0], size=8).shape == (1, 3, 8, 8)
    assert path in split.broken


def _split_layout(root, classes=("cat", "dog")):
    for split in ("train", "test"):
        _classes(root / split, classes, n=3)


def test_a_macosx_folder_is_not_a_class(tmp_path):
    """Unzipping a macOS archive elsewhere leaves __MACOSX/ holding only ._name copies: as a
    "class" it stopped evaluation with "__MACOSX: no images"."""
    _split_layout(tmp_path)
    (tmp_path / "train" / "__MACOSX" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "__MACOSX" / "cat" / "._0.png").write_bytes(b"\0\5\26\7")
    task = _load_image_folder(tmp_path)
    assert task.classes == ["cat", "dog"]


def test_loose_files_are_counted_without_os_clutter_and_named_by_an_image(tmp_path, capsys):
    """Thumbs.db was counted among the files outside the class folders, named as the example
    instead of the stray image, and the count read "1 files"."""
    _split_layout(tmp_path)
    _png(tmp_path / "train" / "stray.png")
    (tmp_path / "train" / "Thumbs.db").write_bytes(b"x")
    _load_image_folder(tmp_path)
    err = capsys.readouterr().err
    assert "ignored 1 file outside the class folders" in err
    assert "e.g. stray.png" in err and "Thumbs.db" not in err


def test_a_class_name_in_another_unicode_form_is_explained(tmp_path):
    """train/ made on macOS (NFD "café"), test/ elsewhere (NFC): the error listed "café" as a class
    not present in train/, beside a train/ class that prints identically."""
    for split, form in (("train", "NFD"), ("test", "NFC")):
        _classes(tmp_path / split, ["red", unicodedata.normalize(form, "café")], n=3)
    with pytest.raises(UserError, match="Unicode normalisation form"):
        _load_image_folder(tmp_path)


def test_an_unlistable_class_folder_says_so(tmp_path, monkeypatch):
    """A class folder without read permission was reported as holding "no images"."""
    import vivi.data.tasks as tasks

    _split_layout(tmp_path)
    blocked = tmp_path / "test" / "dog"
    real_access = tasks.os.access
    monkeypatch.setattr(tasks.os, "access", lambda p, mode: False if p == blocked else real_access(p, mode))
    with pytest.raises(UserError, match="permission denied"):
        _load_image_folder(tmp_path)


def test_palette_images_with_per_entry_transparency_are_read_quietly(tmp_path):
    """PNG optimisers (pngquant, most web images) write a palette with a transparency per entry;
    PIL's "Palette images with Transparency expressed in bytes should be converted to RGBA images"
    was printed, naming PIL's source rather than the image, by evaluation and pretraining alike."""
    rgb = np.random.default_rng(0).integers(0, 255, (10, 12, 3), dtype=np.uint8)
    img = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=4)
    path = tmp_path / "web.png"
    img.save(path, transparency=bytes([0, 128, 255, 255]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(path).shape == (3, 10, 12)
        assert load_image(path, 8).shape == (3, 8, 8)


def test_a_photo_whose_exif_pil_cannot_rewrite_is_read_upright(tmp_path):
    """PIL's exif_transpose rewrites the EXIF after rotating and raises TypeError (or struct.error,
    ZeroDivisionError) for tags of an unexpected type or rationals over 0, which phone photos carry
    (Pillow issues #4665, #6882, #8965): evaluation stopped with that traceback, as did pretraining
    on a large one. The pixels are fine: they are read, turned upright by the orientation."""
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:20] = (255, 0, 0)  # top half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    exif[0x010F] = "Cam"  # Make, ASCII
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", exif=exif, quality=95)
    # the Make tag renumbered as PrimaryChromaticities, which PIL writes back as RATIONAL: abs("Cam")
    damaged = buf.getvalue().replace(b"\x01\x0f\x00\x02", b"\x01\x3f\x00\x02", 1)
    assert damaged != buf.getvalue()
    path = tmp_path / "phone.jpg"
    path.write_bytes(damaged)
    upright = read_image(path)
    assert upright.shape == (3, 60, 40)
    assert upright[0, :, -5:].float().mean() > 200 and upright[0, :, :5].float().mean() < 50  # red on the right
    small = load_image(path, 16)  # decoded by PIL (both sides >= 2 x 16)
    assert small.shape == (3, 16, 16)
    assert small[0, :, -3:].float().mean() > 200 and small[0, :, :3].float().mean() < 50


def test_a_long_strip_is_cropped_before_it_is_resized(tmp_path, monkeypatch):
    """Pretraining's PIL path resized the whole image to its short side first: a 1 x 20000 strip
    became 64 x 1.28M pixels (~370 MB more at the peak) to keep a 64 x 64 square."""
    strip = np.random.default_rng(0).integers(0, 256, (20000, 1, 3)).astype(np.uint8)
    path = tmp_path / "strip.png"
    Image.fromarray(strip).save(path)
    sizes = []
    resize = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda self, size, *a, **k: sizes.append(size) or resize(self, size, *a, **k))
    out = load_image(path, 64)
    assert out.shape == (3, 64, 64) and sizes and max(w * h for w, h in sizes) <= 64 * 64
