"""Exact resume: a run killed (SIGKILL) or stopped (SIGTERM) and started again ends with the same
parameters as an uninterrupted run; batches are a function of the step; NaN stops the run."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vivi.config import apply_overrides, preset
from vivi.data.batches import StepClips, make_loader, step_positions, training_videos
from vivi.data.shards import read_index
from vivi.errors import UserError
from vivi.train.checkpoint import list_checkpoints, load_checkpoint
from vivi.train.loop import pretrain
from vivi.train.objective import VIVIObjective

SETTINGS = ["data.videos=2", "data.workers=1", "optim.steps=6", "ckpt_every=2", "log_every=1", "device=cpu"]


def _cfg():
    return apply_overrides(preset("VIVI-Ex(4)"), SETTINGS)


def _final_model(run: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(list_checkpoints(run)[-1])
    assert state["step"] == 6
    return state["model"]


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory) -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)
    return _final_model(pretrain(_cfg(), [tiny_data], tmp_path_factory.mktemp("ref") / "run", progress=False))


def _start(tiny_data: Path, run: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vivi", "pretrain", "--preset", "VIVI-Ex(4)", "--data", str(tiny_data), "--out", str(run)]
    for s in SETTINGS:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)


def _wait_for_checkpoint(proc: subprocess.Popen, run: Path, step: int) -> None:
    deadline = time.monotonic() + 240
    while not any(int(p.stem.split("_")[1]) >= step for p in list_checkpoints(run)):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def _assert_same(model: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert model.keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(model[name], value, atol=1e-6, rtol=1e-6, msg=name)


def test_killed_run_resumes_to_the_same_parameters(tiny_data, tmp_path, reference, one_thread):
    run = tmp_path / "run"
    proc = _start(tiny_data, run)
    _wait_for_checkpoint(proc, run, 2)
    proc.send_signal(signal.SIGKILL)  # anywhere after the first checkpoint: mid-step, mid-save, mid-log
    proc.wait()
    assert list_checkpoints(run)[-1].name != "step_00000006.pt", "killed too late to test anything"
    _assert_same(_final_model(pretrain(_cfg(), [tiny_data], run, progress=False)), reference)
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6], "rows past the checkpoint resumed from are dropped, none repeated"


def test_sigterm_checkpoints_and_stops_then_resumes_exactly(tiny_data, tmp_path, reference, one_thread):
    run = tmp_path / "run"
    proc = _start(tiny_data, run)
    _wait_for_checkpoint(proc, run, 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    last = load_checkpoint(list_checkpoints(run)[-1])["step"]
    if last < 6:  # it stopped early: one line naming the step and the checkpoint
        assert proc.returncode == 75 and f"vivi: stopped at step {last} of 6" in err and "Traceback" not in err
    more_often = apply_overrides(_cfg(), ["ckpt_every=1"])  # checkpointing more often after a stop changes nothing
    _assert_same(_final_model(pretrain(more_often, [tiny_data], run, progress=False)), reference)


def test_batches_are_a_function_of_the_step(tiny_data):
    cfg = apply_overrides(preset("VIVI-Ex(4)"), ["data.videos=4", "data.load_size=32", "augment.image_size=32"]).data
    table = training_videos(read_index([tiny_data]), cfg, str(tiny_data))
    whole = StepClips(table, cfg, seed=3)
    from_start = list(make_loader(table, cfg, seed=3, start=0, steps=4))
    resumed = list(make_loader(table, cfg, seed=3, start=2, steps=4))  # a worker process, started at step 2
    assert all(torch.equal(a, b) for a, b in zip(from_start[2:], resumed))
    halves = [StepClips(table, cfg, seed=3, rank=r, world=2)[1] for r in range(2)]
    assert torch.equal(torch.cat(halves), whole[1]), "two ranks split the one-process global batch"
    assert not torch.equal(whole[1], whole[2])


def test_every_video_once_per_pass():
    n, count = 10, 4
    seen = np.concatenate([step_positions(s, count, n, seed=0) for s in range(5)])  # 20 slots = 2 passes
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert list(seen[:10]) != list(seen[10:]), "each pass is its own permutation"


def test_uneven_global_batch_is_refused(tiny_data):
    cfg = apply_overrides(preset("VIVI-Ex(4)"), ["data.videos=3"]).data
    table = training_videos(read_index([tiny_data]), cfg, str(tiny_data))
    with pytest.raises(UserError, match="data.videos=3 does not split evenly over 2 processes"):
        StepClips(table, cfg, rank=0, world=2)


def test_non_finite_loss_stops_with_step_terms_and_checkpoint(tiny_data, tmp_path, monkeypatch):
    original = VIVIObjective.__call__
    calls = []

    def poisoned(self, *args, **kwargs):
        terms = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:  # the third step (index 2), after the checkpoint of step 2
            terms["loss_v"] = terms["loss_v"] * float("nan")
            terms["loss"] = terms["loss_sf"] + terms["loss_v"]
        return terms

    monkeypatch.setattr(VIVIObjective, "__call__", poisoned)
    cfg = apply_overrides(preset("VIVI-Ex(4)"), SETTINGS + ["data.workers=0"])
    with pytest.raises(UserError) as err:
        pretrain(cfg, [tiny_data], tmp_path / "run", progress=False)
    message = str(err.value)
    assert message.startswith("step 2: non-finite loss (") and "loss_v=nan" in message and "loss_sf=" in message
    assert message.endswith(f"last good checkpoint: {tmp_path / 'run' / 'checkpoints' / 'step_00000002.pt'}")


def test_out_of_memory_stops_with_the_batch_size_and_checkpoint(tiny_data, tmp_path, monkeypatch):
    """A step too big for the device's memory ends in one line: the frames per process, what to
    lower, and the checkpoint to resume from (a GPU's OutOfMemoryError, raised here on the CPU)."""
    original = VIVIObjective.__call__
    calls = []

    def too_big(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(VIVIObjective, "__call__", too_big)
    cfg = apply_overrides(preset("VIVI-Ex(4)"), SETTINGS + ["data.workers=0"])
    with pytest.raises(UserError) as err:
        pretrain(cfg, [tiny_data], tmp_path / "run", progress=False)
    message = str(err.value)
    assert message.startswith("step 2: out of CPU memory with 64 frames of 64 px per process (data.videos=2 over 1")
    assert "lower data.videos" in message and "\n" not in message
    assert message.endswith(f"last good checkpoint: {tmp_path / 'run' / 'checkpoints' / 'step_00000002.pt'}")


def test_resume_accepts_other_runtime_settings_but_not_another_run(tmp_path):
    from vivi.config import apply_overrides, preset
    from vivi.errors import UserError
    from vivi.train.run_folder import check_resume_config

    cfg = preset("VIVI-Ex(4)")
    (tmp_path / "config.json").write_text(cfg.to_json() + "\n")
    check_resume_config(tmp_path, apply_overrides(cfg, ["data.workers=4", "data.cache_mb=0"]))
    check_resume_config(tmp_path, apply_overrides(cfg, ["channels_last=false", "compile=true"]))
    check_resume_config(tmp_path, apply_overrides(cfg, ["ckpt_every=7", "log_every=3", "keep_checkpoints=9"]))
    for other in ("optim.lr=0.5", "amp=bf16", "data.frames=4"):
        key = other.split("=")[0].replace(".", r"\.")
        with pytest.raises(UserError, match=rf"different config \({key}: .* there, .* now; see"):
            check_resume_config(tmp_path, apply_overrides(preset("VIVI-Ex(4)"), [other]))


def test_resume_refuses_other_training_data_but_not_the_same_data_moved(tiny_data, tmp_path, one_thread):
    import json
    import shutil

    cfg = apply_overrides(_cfg(), ["optim.steps=2", "data.workers=0"])
    run = pretrain(cfg, [tiny_data], tmp_path / "run", progress=False)
    record = json.loads((run / "data.json").read_text())
    assert record["sources"] == [str(tiny_data)] and record["items"] == len(read_index([tiny_data]))
    moved = shutil.copytree(tiny_data, tmp_path / "moved")
    pretrain(cfg, [moved], run, progress=False)  # the same videos elsewhere: resumes (nothing left to do)

    fewer = shutil.copytree(tiny_data, tmp_path / "fewer")
    lines = (fewer / "index.jsonl").read_text().splitlines(keepends=True)
    (fewer / "index.jsonl").write_text("".join(lines[:-1]))  # one video less, as if the folder changed
    with pytest.raises(UserError, match=rf"{run}: was trained on other training data: .*moved .* then, .*fewer .* now"):
        pretrain(cfg, [fewer], run, progress=False)


@pytest.mark.parametrize("where", ["device", "loader"])
def test_resuming_from_an_earlier_checkpoint_is_exact_wherever_the_augmentation_runs(tiny_data, tmp_path, where, one_thread):
    cfg = apply_overrides(preset("VIVI-Ex(4)"), SETTINGS + [f"augment.where={where}", "keep_checkpoints=3"])
    run = pretrain(cfg, [tiny_data], tmp_path / "run", progress=False)
    whole = _final_model(run)
    for late in list_checkpoints(run)[1:]:  # back to step 2, as after a crash that lost steps 3-6
        late.unlink()
    resumed = cfg if where == "device" else apply_overrides(cfg, ["data.workers=0"])  # the loader in-process
    _assert_same(_final_model(pretrain(resumed, [tiny_data], run, progress=False)), whole)


def test_loader_augmentation_is_a_function_of_the_step_for_any_worker_count(tiny_data):
    from vivi.data.augment import StepAugment, augment, step_generator

    cfg = apply_overrides(preset("VIVI-Ex(4)"), ["data.videos=2", "data.load_size=32", "augment.image_size=24"])
    table = training_videos(read_index([tiny_data]), cfg.data, str(tiny_data))

    def wrap(items):
        return StepAugment(items, cfg.augment, seed=5, channels_last=True)

    in_process = list(make_loader(table, dataclasses.replace(cfg.data, workers=0), seed=3, start=1, steps=3, wrap=wrap))
    workers = list(make_loader(table, dataclasses.replace(cfg.data, workers=2), seed=3, start=1, steps=3, wrap=wrap))
    assert all(torch.equal(a, b) for a, b in zip(in_process, workers)) and len(workers) == 2
    clips = StepClips(table, cfg.data, seed=3)[2]
    expected = augment(clips.flatten(0, 2), cfg.augment, step_generator(5, 2))  # independent of the wrapper
    assert workers[1].shape == (2 * 4 * 8, 3, 24, 24) and workers[1].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(workers[1], expected, rtol=0, atol=0)
    assert not torch.equal(workers[0], workers[1])
    seeds = {step_generator(s, t).initial_seed() for s, t in ((5, 2), (6, 2), (5, 3), (2, 5))}
    assert len(seeds) == 4, "each (seed, step) has its own stream"
