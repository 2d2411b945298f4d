"""A results file resumes only for the weights and the images it measured."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from test_linear import TinyCNN

from vivi.data.tasks import load_tasks
from vivi.errors import UserError
from vivi.evaluate import suite
from vivi.evaluate.fingerprint import task_fingerprint, weights_fingerprint


def _folder(root, per_class: int = 4, size: int = 10) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c, colour in enumerate(("red", "blue")):
            (root / split / colour).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                pixels[..., 2 * c] += 180
                Image.fromarray(pixels).save(root / split / colour / f"{i}.png")


def _fp(root) -> str:
    (task,) = load_tasks(f"imagefolder:{root}")
    return task_fingerprint(task)


def test_task_fingerprint_follows_the_files_not_the_folder_s_place(tmp_path):
    _folder(tmp_path / "a")
    first = _fp(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "b")  # new place, new mtimes
    assert _fp(tmp_path / "elsewhere" / "b") == first

    b = tmp_path / "elsewhere" / "b"
    shutil.copy(b / "test" / "red" / "0.png", b / "test" / "red" / "extra.png")
    added = _fp(b)
    (b / "test" / "red" / "extra.png").rename(b / "test" / "blue" / "extra.png")  # relabelled
    relabelled = _fp(b)
    Image.new("RGB", (30, 30)).save(b / "train" / "red" / "1.png")  # rewritten
    rewritten = _fp(b)
    assert len({first, added, relabelled, rewritten}) == 4


def test_weights_fingerprint_sees_one_changed_value_and_any_dtype():
    a, b = TinyCNN(), TinyCNN()
    assert weights_fingerprint(a) == weights_fingerprint(b)
    with torch.no_grad():
        b.body[0].weight[0, 0, 0, 0] += 1e-6
    assert weights_fingerprint(a) != weights_fingerprint(b)
    assert weights_fingerprint(TinyCNN().to(torch.bfloat16)) != weights_fingerprint(a)


def _evaluate(model, root, out):
    tasks = load_tasks(f"imagefolder:{root}")
    return suite.evaluate_tasks(model, tasks, "knn", image_size=8, out_json=out, model_name="tiny", progress=False)


def test_a_results_file_is_refused_for_other_weights_or_changed_images(tmp_path, extraction_calls):
    root, out = tmp_path / "imgs", tmp_path / "r.json"
    _folder(root)
    first = _evaluate(TinyCNN(), root, out)
    assert first["weights"] == weights_fingerprint(TinyCNN()) and first["tasks"][0]["data"] == _fp(root)

    extraction_calls.clear()
    assert _evaluate(TinyCNN(), root, out)["tasks"] == first["tasks"]  # the same model and images resume
    assert extraction_calls == []

    other = TinyCNN()
    with torch.no_grad():
        other.body[1].running_mean += 0.5  # e.g. the run retrained in place
    with pytest.raises(UserError, match=r"r\.json: holds results of other weights"):
        _evaluate(other, root, out)

    shutil.copy(root / "test" / "red" / "0.png", root / "test" / "red" / "new.png")
    with pytest.raises(UserError, match=r"r\.json: .*'s images .* changed since this file was written"):
        _evaluate(TinyCNN(), root, out)
    assert json.loads(out.read_text()) == first  # nothing written over


def test_a_renamed_folder_is_not_measured_twice_in_one_file(tmp_path, extraction_calls):
    root, out = tmp_path / "imgs", tmp_path / "r.json"
    _folder(root)
    first = _evaluate(TinyCNN(), root, out)
    renamed = root.rename(tmp_path / "imgs_moved")
    with pytest.raises(UserError, match=r"r\.json: imgs_moved .* holds the same images and labels as imgs, already"):
        _evaluate(TinyCNN(), renamed, out)
    assert json.loads(out.read_text()) == first  # nothing written over


def test_a_file_from_before_fingerprints_resumes_with_a_warning(tmp_path, capsys, extraction_calls):
    root, out = tmp_path / "imgs", tmp_path / "r.json"
    _folder(root)
    old = _evaluate(TinyCNN(), root, out)
    del old["weights"]
    for entry in old["tasks"]:
        del entry["data"]
    out.write_text(json.dumps(old))
    extraction_calls.clear()
    again = _evaluate(TinyCNN(), root, out)
    assert extraction_calls == [] and again["tasks"] == old["tasks"]
    assert "without a weights fingerprint" in capsys.readouterr().err
