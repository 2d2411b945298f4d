"""Co-training and the image baselines on a user's own folders: batches that a folder cannot fill
or the processes cannot split are refused before the run folder is written, naming the one
setting at fault; a refused resume names the labelled folder; labels follow the folders."""

import json
import re
import shutil

import numpy as np
import pytest
import torch

from test_cotrain import TINY, write_folder
from vivi.config import apply_overrides, preset
from vivi.data.images import StepImages, image_batches, open_labelled
from vivi.errors import JobError, UserError
from vivi.train.loop import pretrain


def test_too_few_labelled_images_are_refused_before_the_run_folder_is_written(tiny_data, tmp_path):
    labelled = write_folder(tmp_path / "labelled", classes=2, per_class=1, size=(8, 8))
    cfg = apply_overrides(
        preset("VIVI-Ex(4)-Co(10%)"), [*TINY, "data.videos=2", f"data.labelled=imagefolder:{labelled}"]
    )
    with pytest.raises(UserError, match=r"labelled: 2 images .*fewer than the 8 .*\(--set data\.labelled_batch=N\)$"):
        pretrain(cfg, [tiny_data], tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # no config, data record or provenance of a run that never trained


def test_an_image_folder_smaller_than_the_batch_names_data_videos_and_writes_nothing(tmp_path):
    images = write_folder(tmp_path / "images", classes=2, per_class=2, size=(8, 8))
    for name in ("Ex-ImageNet", "Sup-ImageNet"):
        cfg = apply_overrides(preset(name), [*TINY, "data.videos=6"])
        with pytest.raises(UserError, match=r"4 images, fewer than the 6 .*\(--set data\.videos=N\)$"):
            pretrain(cfg, [images], tmp_path / name, progress=False)
        assert not (tmp_path / name).exists()


def test_a_labelled_batch_that_does_not_split_over_the_processes_names_its_setting(tmp_path):
    folder = open_labelled(f"imagefolder:{write_folder(tmp_path / 'l', classes=2, per_class=3, size=(8, 8))}", 1.0, 0)
    with pytest.raises(UserError, match=r"^data\.labelled_batch=3 does not split evenly over 2 processes"):
        image_batches(folder, batch=3, size=8, rank=0, world=2)


def test_a_refused_resume_names_the_labelled_folder_then_and_now(tiny_data, tmp_path, one_thread):
    labelled = write_folder(tmp_path / "labelled", classes=2, per_class=4, size=(16, 16))
    cfg = apply_overrides(
        preset("VIVI-Ex(4)-Co(10%)"),
        [*TINY, "augment.image_size=64", "data.load_size=64", "data.videos=2", f"data.labelled=imagefolder:{labelled}",
         "data.labelled_fraction=1.0", "data.labelled_batch=2", "optim.steps=1"],
    )
    run = pretrain(cfg, [tiny_data], tmp_path / "run", progress=False)
    assert json.loads((run / "data.json").read_text())["labelled"]["sources"] == [f"imagefolder:{labelled}"]
    shutil.copy(labelled / "c0" / "0.png", labelled / "c0" / "9.png")  # the same folder, one image more
    where = re.escape(f"imagefolder:{labelled}")
    with pytest.raises(JobError, match=rf"{where} \(8 images.*then, {where} \(9 images"):
        pretrain(cfg, [tiny_data], run, progress=False)


def test_labels_follow_the_class_folders_in_every_rank_slice(tmp_path):
    """Class c's images are a flat grey of 60c+40: each image's label must be its folder's, and two
    processes' slices must make up the one-process batch."""
    write_folder(tmp_path, classes=3, per_class=5, size=(8, 8))
    folder = open_labelled(f"imagefolder:{tmp_path}", 0.4, seed=2)
    assert np.bincount(folder.labels).tolist() == [2, 2, 2]
    assert [p.parent.name for p in folder.paths] == [folder.classes[i] for i in folder.labels]
    for step in range(3):
        images, labels = StepImages(folder, 6, 8, seed=1)[step]
        halves = [StepImages(folder, 6, 8, 1, rank, 2)[step] for rank in range(2)]
        assert torch.equal(torch.cat([h[0] for h in halves]), images)
        assert torch.equal(torch.cat([h[1] for h in halves]), labels)
        grey = images.float().mean((1, 2, 3))
        assert torch.equal(((grey - 40) / 60).round().long(), labels)
