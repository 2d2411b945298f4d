"""`vivi evaluate RUN/checkpoints/step_N.pt`: a training checkpoint's backbone, evaluated as the
run's final backbone would be (learning curves of a run still training or stopped)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from vivi.cli import main
from vivi.config import apply_overrides, preset
from vivi.errors import UserError
from vivi.evaluate.encoders import load_encoder
from vivi.models import build_model
from vivi.models.backbone import run_backbone, save_run_backbone
from vivi.train.checkpoint import checkpoint_path, save_checkpoint

SETTINGS = ["data.videos=2", "data.workers=0", "optim.steps=2", "ckpt_every=1", "keep_checkpoints=3",
            "log_every=1", "device=cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory) -> Path:
    """A real two-step pretrain keeping the checkpoints of steps 1 and 2, and its backbone.safetensors."""
    from vivi.train.loop import pretrain

    cfg = apply_overrides(preset("Ex-YT-S"), SETTINGS)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny steps: more threads on a busy CPU only slow them down
    try:
        return pretrain(cfg, [tiny_data], tmp_path_factory.mktemp("ckpt") / "run", progress=False)
    finally:
        torch.set_num_threads(before)


def _features(model: torch.nn.Module, size: int) -> torch.Tensor:
    x = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, size, size, generator=x) * 2 - 1
    with torch.inference_mode():
        return model(images)


def test_the_last_checkpoint_is_the_final_backbone_and_an_earlier_one_is_not(run):
    final = load_encoder(str(run))
    last = load_encoder(str(checkpoint_path(run, 2)))
    first = load_encoder(str(checkpoint_path(run, 1)))
    assert (last.name, first.name) == ("run@step2", "run@step1")
    assert last.image_size == first.image_size == final.image_size == 64  # the run's own, from config.json
    assert last.checkpoint == {"path": str(checkpoint_path(run, 2).resolve()), "step": 2}
    assert last.source == str(run.resolve()) == final.source
    assert not last.model.training
    reference = _features(final.model, final.image_size)
    assert torch.equal(_features(last.model, last.image_size), reference)
    assert (_features(first.model, first.image_size) - reference).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["VITO", "VIVI-Ex(4)-Co(10%)"])
def test_vito_s_online_backbone_and_a_co_trained_one_are_taken_as_pretrain_exports_them(name, tmp_path):
    """Hand-built checkpoints (no training): VITO's target made to differ from its online network,
    a co-trained run with its class head and GroupNorm backbone."""
    cfg = apply_overrides(preset(name), ["model.classes=3"] if "Co" in name else [])
    torch.manual_seed(1)
    model = build_model(cfg)
    if name == "VITO":
        with torch.no_grad():
            for p in model.target.parameters():
                p.add_(1.0)  # an EMA target far from the online network
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(cfg.to_json())
    save_checkpoint(run, 7, {"step": 7, "model": model.state_dict(), "optimizer": {}, "rng": [], "scaler": {}})
    save_run_backbone(model, cfg, run / "backbone.safetensors")  # what the end of `vivi pretrain` writes
    enc = load_encoder(str(checkpoint_path(run, 7)))
    final = load_encoder(str(run))
    assert enc.name == "run@step7" and enc.image_size == final.image_size == cfg.augment.image_size
    got, want = enc.model.state_dict(), run_backbone(model).state_dict()
    assert got.keys() == final.model.state_dict().keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert torch.equal(_features(enc.model, 32), _features(final.model, 32))
    if name == "VITO":
        target = model.target.backbone.state_dict()
        assert not torch.equal(got["stem.conv.weight"], target["stem.conv.weight"])


def _run_copy(run: Path, dest: Path) -> Path:
    """The run's config.json only: a folder to put (bad) checkpoints in."""
    (dest / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "config.json", dest / "config.json")
    return dest


def _one_line_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_files_that_are_no_checkpoint_of_the_run_are_refused_in_one_line(run, tmp_path, capsys):
    bad = _run_copy(run, tmp_path / "bad") / "checkpoints"
    good = checkpoint_path(run, 1).read_bytes()
    (bad / "cut.pt").write_bytes(good[: len(good) // 2])
    (bad / "empty.pt").write_bytes(b"")
    (bad / "noise.pt").write_bytes(bytes(range(256)) * 4)
    torch.save({"weights": torch.ones(2)}, bad / "other.pt")
    torch.save(torch.ones(3), bad / "tensor.pt")
    torch.save({"step": 1, "model": {"w": torch.ones(2)}}, bad / "keys.pt")
    state = torch.load(checkpoint_path(run, 1), weights_only=True)
    state["model"]["backbone.stem.conv.weight"] = torch.zeros(1, 3, 3, 3)
    torch.save(state, bad / "shapes.pt")
    torch.save({"step": 1, "model": argparse.Namespace(x=1)}, bad / "pickled.pt")  # refused by weights_only=True
    shutil.copy(checkpoint_path(run, 1), bad / "step_00000001.pt.corrupt")  # a renamed checkpoint is still one
    reasons = {
        "cut.pt": "not a vivi checkpoint (unreadable, cut short or not written by torch.save",
        "empty.pt": "not a vivi checkpoint (an empty file, 0 bytes)",
        "noise.pt": "not a vivi checkpoint (unreadable, cut short",
        "other.pt": "not a vivi checkpoint (no 'step' or 'model' key; its keys: weights)",
        "tensor.pt": "not a vivi checkpoint (it holds Tensor",
        "keys.pt": "does not fit the network",
        "shapes.pt": "1 of another shape, e.g. backbone.stem.conv.weight (1, 3, 3, 3)",
        "pickled.pt": "it holds pickled objects, not only tensors",
    }
    for name, reason in reasons.items():
        err = _one_line_error(["evaluate", str(bad / name), "--task", "imagefolder:/nonexistent"], capsys)
        assert f"{bad / name}: " in err and reason in err, err
        assert "If you are seeing" not in err, "torch's later sentences were cut mid-sentence: only its first is kept"
    assert load_encoder(str(bad / "step_00000001.pt.corrupt")).name == "bad@step1"
    alone = tmp_path / "alone.pt"  # a checkpoint copied out of its run: no config.json two folders up
    shutil.copy(checkpoint_path(run, 1), alone)
    err = _one_line_error(["evaluate", str(alone), "--task", "imagefolder:/nonexistent"], capsys)
    assert f"{alone}: no run config at {tmp_path.parent / 'config.json'}" in err


def test_an_unfinished_run_names_its_newest_checkpoint(run, tmp_path):
    unfinished = _run_copy(run, tmp_path / "unfinished")
    for step in (1, 2):
        shutil.copy(checkpoint_path(run, step), checkpoint_path(unfinished, step))
    (unfinished / "checkpoints" / "step_00000003.pt.tmp").write_bytes(b"")  # a write cut short: not offered
    with pytest.raises(UserError, match="no backbone.safetensors yet") as e:
        load_encoder(str(unfinished))
    newest = checkpoint_path(unfinished, 2)
    assert f"evaluate its newest checkpoint by path: vivi evaluate {newest} --task" in str(e.value)


def _colours(root: Path) -> Path:
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        for c, colour in enumerate([(250, 0, 0), (0, 0, 250)]):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                shade = tuple(max(0, v - 20 * i) for v in colour)
                Image.new("RGB", (8, 8), shade).save(root / split / f"c{c}" / f"{i}.png")
    return root


def test_results_name_the_checkpoint_and_rows_stay_apart_in_the_report(run, tmp_path, capsys):
    task = f"imagefolder:{_colours(tmp_path / 'colours')}"
    outs = {}
    for label, model in (("s1", checkpoint_path(run, 1)), ("s2", checkpoint_path(run, 2)), ("final", run)):
        outs[label] = tmp_path / f"{label}.json"
        assert main(["evaluate", str(model), "--task", task, "--protocol", "knn", "--out", str(outs[label])]) == 0
    capsys.readouterr()
    s1, s2, final = (json.loads(outs[k].read_text()) for k in ("s1", "s2", "final"))
    assert s1["model"] == "run@step1" and s1["checkpoint"] == {"path": str(checkpoint_path(run, 1).resolve()), "step": 1}
    assert s1["model_source"] == s2["model_source"] == final["model_source"] == str(run.resolve())
    assert "checkpoint" not in final and s1["tasks"][0]["provenance"] and s2["tasks"][0]["provenance"]
    assert s2["weights"] == final["weights"] != s1["weights"]
    # one results file never takes the other's entries, even under its name (the last step's weights are the final ones)
    for model, out, name in ((run, outs["s2"], "run@step2"), (checkpoint_path(run, 2), outs["final"], "run"),
                             (checkpoint_path(run, 1), outs["s2"], "run@step2")):  # fmt: skip
        err = _one_line_error(["evaluate", str(model), "--task", task, "--protocol", "knn", "--out", str(out),
                               "--name", name], capsys)  # fmt: skip
        assert f"{out}: holds results of" in err and "choose another output file" in err
    from vivi.evaluate.report import load_results, results_table

    table = results_table(load_results(list(outs.values())))  # the table `vivi report` prints (without its plots)
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| run")]
    assert rows == ["run@step1", "run@step2", "run"]
    renamed = tmp_path / "renamed.json"  # the last step and the final backbone under one name: still two rows
    other_task = [{**s2["tasks"][0], "task": "colours-again"}]  # tasks of their own: otherwise kept apart anyway
    renamed.write_text(json.dumps({**s2, "model": "run", "tasks": other_task}))
    assert len(load_results([renamed, outs["final"]])) == 2
