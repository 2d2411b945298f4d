"""Edges of reading users' image folders: frames kept a level deeper, damaged JPEGs, broken files
met by several loader workers, formats PIL reads under rarer extensions, folders of annotations
beside the images, and a low pixel limit. Each was found by feeding `vivi` such a folder."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from vivi.data import frames as frames_module
from vivi.data.images import StepImages, image_batches, load_image, scan_images
from vivi.data import tasks
from vivi.data.tasks import IMAGE_EXTENSIONS, UnreadableImage, read_image
from vivi.errors import UserError
from vivi.evaluate.robustness import load_robustness_task
from vivi.train.data_record import data_record


def _png(path: Path, colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _noise(h: int, w: int) -> np.ndarray:
    return (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)


def test_frames_in_sub_folders_of_a_video_folder_are_read_in_path_order(tmp_path, capsys):
    """test/<class>/<video>/frames/*.png was left out without a word ("no frames" when nothing else
    was there); class folders are read at any depth, and so are video folders now."""
    for cls in ("a", "b"):
        for i in range(4):
            _png(tmp_path / "train" / cls / f"{i}.png")
    for n in (10, 2, 1):
        _png(tmp_path / "test" / "a" / "v1" / "frames" / f"f{n}.png")
    for cam in ("cam1", "cam2"):
        for n in (1, 2):
            _png(tmp_path / "test" / "b" / "v2" / cam / f"f{n}.png")
    task = load_robustness_task(f"frames:{tmp_path}")
    by_name = {s.name: s.frames.paths for s in task.sequences}
    assert [p.name for p in by_name["a/v1"]] == ["f1.png", "f2.png", "f10.png"]
    assert [f"{p.parent.name}/{p.name}" for p in by_name["b/v2"]] == ["cam1/f1.png", "cam1/f2.png", "cam2/f1.png",
                                                                      "cam2/f2.png"]  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("several sub-folders") == 1 and "b/v2" in err and "a/v1" not in err


def _damaged_jpeg(path: Path) -> None:
    """A JPEG with 3 stray bytes before its start-of-scan marker: it decodes, and libjpeg (in
    torchvision's decoder) prints "Corrupt JPEG data: 3 extraneous bytes before marker 0xda"."""
    buf = io.BytesIO()
    Image.fromarray(_noise(64, 80)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    sos = data.index(b"\xff\xda")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[:sos] + b"\x00\x11\x22" + data[sos:])


@pytest.mark.skipif(frames_module.decode_jpeg is None, reason="no torchvision JPEG decoder")
def test_libjpeg_complaints_name_the_file_once(tmp_path, capfd):
    """libjpeg printed its line to stderr naming no file: in a folder of thousands nobody could
    tell which one it meant. Now one warning names the file, once per file in pretraining."""
    path = tmp_path / "photos" / "damaged.jpg"
    _damaged_jpeg(path)
    assert load_image(path, 40).shape == (3, 40, 40)  # 64 x 80: torchvision's decoder
    lines = [line for line in capfd.readouterr().err.splitlines() if "Corrupt JPEG data" in line]
    assert len(lines) == 1 and str(path) in lines[0]

    for i in range(3):
        _png(tmp_path / "photos" / f"{i}.png")
    images = StepImages(scan_images(tmp_path / "photos", labelled=False), batch=4, size=40, seed=0)
    images[0], images[1]  # every image twice
    lines = [line for line in capfd.readouterr().err.splitlines() if "Corrupt JPEG data" in line]
    assert len(lines) == 1 and str(path) in lines[0]


def _broken_folder(root: Path) -> None:
    """Four good images, an empty file (its header does not read: found before training) and a
    truncated PNG (its header reads, its pixels do not: found by the loader)."""
    for i in range(4):
        _png(root / f"{i}.png")
    (root / "empty.png").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(_noise(8, 8)).save(buf, "PNG")
    (root / "truncated.png").write_bytes(buf.getvalue()[:60])


def test_broken_images_are_named_once_across_loader_workers(tmp_path, capfd):
    """Each loader worker named every broken file it met: with two workers, twice."""
    _broken_folder(tmp_path)
    folder = scan_images(tmp_path, labelled=False)
    batches = list(image_batches(folder, batch=6, size=8, workers=2, steps=4))  # every image in every step
    assert len(batches) == 4
    err = capfd.readouterr().err
    assert err.count(str(tmp_path / "truncated.png")) == 1
    assert err.count(str(tmp_path / "empty.png")) == 1


def test_data_json_counts_unreadable_images_apart_from_its_items(tmp_path, capsys):
    _broken_folder(tmp_path)
    record = data_record([tmp_path], scan_images(tmp_path, labelled=False), None)
    assert (record["items"], record["unreadable"]) == (5, 1)
    assert "empty.png (empty file (0 bytes))" in capsys.readouterr().err


def _save(path: Path, ext: str) -> None:
    if ext == ".pbm":
        Image.new("1", (12, 10), 1).save(path)
    elif ext == ".ico":
        Image.new("RGB", (16, 16), (10, 200, 30)).save(path)
    else:
        Image.fromarray(_noise(10, 12)).save(path)


@pytest.mark.parametrize("ext", [".pbm", ".jpe", ".ico", ".tga", ".avif"])
def test_formats_pil_opens_are_images_under_their_extensions(tmp_path, capsys, ext):
    """Files PIL reads were left out as "not images" for their extension alone."""
    if ext == ".avif" and not features.check("avif"):
        assert ext not in IMAGE_EXTENSIONS
        pytest.skip("this PIL cannot read AVIF")
    _png(tmp_path / "a.png")
    _save(tmp_path / f"b{ext}", ext)
    folder = scan_images(tmp_path, labelled=False)
    assert [p.name for p in folder.paths] == ["a.png", f"b{ext}"]
    assert "ignored" not in capsys.readouterr().err
    assert load_image(tmp_path / f"b{ext}", 8).shape == (3, 8, 8)
    assert read_image(tmp_path / f"b{ext}").shape[0] == 3


def test_a_folder_of_annotations_beside_flat_images_is_skipped_and_an_empty_class_is_not(tmp_path, capsys):
    """--images DIR with DIR/*.jpg and DIR/annotations/*.json stopped with "annotations: no images"."""
    for i in range(3):
        _png(tmp_path / "flat" / f"{i}.png")
    (tmp_path / "flat" / "annotations").mkdir()
    (tmp_path / "flat" / "annotations" / "labels.json").write_text("{}")
    (tmp_path / "flat" / "empty").mkdir()
    folder = scan_images(tmp_path / "flat", labelled=False)
    assert len(folder.paths) == 3 and folder.classes == [""]
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "annotations/ (.json: 1)" in err and "skipped 2 sub-folders" in err

    for cls in ("cat", "dog"):
        for i in range(2):
            _png(tmp_path / "classes" / cls / f"{i}.png")
    (tmp_path / "classes" / "bird").mkdir()
    with pytest.raises(UserError, match=r"classes/bird: no images"):
        scan_images(tmp_path / "classes", labelled=False)


def test_a_low_pixel_limit_is_named_as_the_reason(tmp_path, monkeypatch):
    """VIVI_MAX_IMAGE_PIXELS=1 refused every image "over 0 pixels, as a possible decompression bomb"
    (and let JPEGs decoded by torchvision through): the limit is the reason, named with both sizes."""
    Image.fromarray(_noise(30, 40)).save(tmp_path / "a.png")
    Image.fromarray(_noise(30, 40)).save(tmp_path / "a.jpg")
    monkeypatch.setenv("VIVI_MAX_IMAGE_PIXELS", "1001")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 501)  # as the value sets it when vivi is imported
    monkeypatch.setattr(tasks, "ENV_MAX_PIXELS", 1001, raising=False)
    for name in ("a.png", "a.jpg"):
        for read in (read_image, lambda p: load_image(p, 16)):
            with pytest.raises(UnreadableImage) as caught:
                read(tmp_path / name)
            assert "40x30 = 1200 pixels exceeds the VIVI_MAX_IMAGE_PIXELS limit of 1001" in str(caught.value)
            assert "decompression bomb" not in str(caught.value)
    assert tasks._env_pixel_limit() == 1001 and Image.MAX_IMAGE_PIXELS == 501  # PIL refuses above 1002
