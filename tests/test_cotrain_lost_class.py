"""A class none of whose kept images decodes is refused before the run folder is written (co-training
trained without it, silently, while its head reported every class); an image folder of which
nothing decodes stops the image baselines in one line."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_cotrain import TINY, write_folder
from vivi.cli import main
from vivi.config import apply_overrides, preset
from vivi.data.images import check_decodes, open_labelled
from vivi.errors import UserError
from vivi.train.loop import pretrain


def _corrupt_jpeg(path: Path) -> None:
    """A JPEG whose header reads (the header probe passes it) and whose pixels do not decode."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    path.write_bytes(data[: data.index(b"\xff\xda") + 14])  # cut right after the start of scan


def _break_class(folder: Path) -> None:
    """Every image of ``folder`` unreadable, each another way."""
    for p in folder.iterdir():
        p.unlink()
    _corrupt_jpeg(folder / "a.jpg")
    _corrupt_jpeg(folder / "b.jpg")
    (folder / "c.jpg").write_bytes(b"")
    (folder / "d.jpg").write_text("<html>not an image</html>")


def test_a_class_that_never_decodes_stops_co_training_before_the_run_folder(tmp_path, capsys):
    labelled = write_folder(tmp_path / "labelled", classes=3, per_class=4, size=(8, 8))
    _break_class(labelled / "c1")
    _corrupt_jpeg(labelled / "c2" / "0.jpg")  # a class beginning with a broken file is still seen
    run = tmp_path / "run"
    argv = ["pretrain", "--preset", "VIVI-Ex(4)-Co(100%)", "--data", str(tmp_path / "unused"), "--out", str(run),
            "--labelled", f"imagefolder:{labelled}", "--steps", "1"]
    for item in [*TINY, "data.workers=2", "data.labelled_batch=4"]:  # refused before any loader worker starts
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err
    error = [line for line in err.splitlines() if "error" in line]
    assert len(error) == 1 and f"{labelled / 'c1'}: none of the 4 images of class 'c1' decodes" in error[0]
    assert "c2" not in error[0] and not run.exists()


def test_the_check_is_on_the_kept_images_of_a_labelled_fraction(tmp_path):
    labelled = write_folder(tmp_path, classes=2, per_class=4, size=(8, 8))
    folder = open_labelled(f"imagefolder:{labelled}", 0.25, seed=0)  # one image kept per class
    kept = next(p for p in folder.paths if p.parent.name == "c0")
    _corrupt_jpeg(kept)
    with pytest.raises(UserError, match=r"c0: none of the 1 kept images of class 'c0' \(labelled_fraction=0\.25"):
        check_decodes(folder, 8, per_class=True)
    for p in (labelled / "c0").iterdir():  # the images left out are all broken, the kept one is not
        if p != kept:
            _corrupt_jpeg(p)
    _write_png(kept)
    check_decodes(open_labelled(f"imagefolder:{labelled}", 0.25, seed=0), 8, per_class=True)


def _write_png(path: Path) -> None:
    Image.new("RGB", (8, 8), (90, 90, 90)).save(path, "PNG")


def test_an_image_folder_of_which_nothing_decodes_stops_ex_imagenet_in_one_line(tmp_path):
    images = write_folder(tmp_path / "images", classes=2, per_class=2, size=(8, 8))
    _break_class(images / "c0")
    cfg = apply_overrides(preset("Ex-ImageNet"), [*TINY, "data.videos=4", "optim.steps=1"])
    run = pretrain(cfg, [images], tmp_path / "run", progress=False)  # a whole class broken: no matter here
    assert (run / "backbone.safetensors").is_file()
    _break_class(images / "c1")
    with pytest.raises(UserError, match=r"images: none of the 8 images decodes: c0/a\.jpg \(.*\) and 5 more$"):
        pretrain(cfg, [images], tmp_path / "run2", progress=False)
    assert not (tmp_path / "run2").exists()


def test_the_supervised_baseline_refuses_a_class_that_never_decodes(tmp_path):
    images = write_folder(tmp_path / "images", classes=3, per_class=2, size=(8, 8))
    _break_class(images / "c2")
    cfg = apply_overrides(preset("Sup-ImageNet"), [*TINY, "data.videos=4", "optim.steps=1"])
    with pytest.raises(UserError, match=r"c2: none of the 4 images of class 'c2' decodes"):
        pretrain(cfg, [images], tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
