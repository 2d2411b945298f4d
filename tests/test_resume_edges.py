"""Resuming and scaling out at the edges: a checkpoint cut short, a disk that fills while one is
written, and the environments schedulers start processes in (no torchrun, no LOCAL_RANK)."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import torch

from vivi.config import apply_overrides, preset
from vivi.errors import JobError, UserError
from vivi.train.checkpoint import list_checkpoints, load_checkpoint, load_resumable
from vivi.train.distributed import device_index, init_distributed
from vivi.train.loop import pretrain

SETTINGS = ["data.videos=2", "data.workers=0", "optim.steps=4", "ckpt_every=2", "log_every=1", "device=cpu"]


def _cfg(*more: str):
    return apply_overrides(preset("VIVI-Ex(4)"), SETTINGS + list(more))


def test_a_cut_newest_checkpoint_falls_back_to_the_previous_good_one(tiny_data, tmp_path, capsys, one_thread):
    """A full disk or a crashed node can leave the newest checkpoint cut short: the resume goes on
    from the one before (exactly), says so, and sets the bad one aside where pruning cannot keep it
    in place of good ones (here keep_checkpoints=1)."""
    run = pretrain(_cfg(), [tiny_data], tmp_path / "run", progress=False)
    whole = load_checkpoint(list_checkpoints(run)[-1])["model"]
    newest = run / "checkpoints" / "step_00000004.pt"
    with newest.open("r+b") as f:
        f.truncate(newest.stat().st_size // 2)
    (run / "backbone.safetensors").unlink()
    capsys.readouterr()
    pretrain(_cfg("ckpt_every=1", "keep_checkpoints=1"), [tiny_data], run, progress=False)
    err = capsys.readouterr().err
    assert f"{newest}: corrupt or unreadable checkpoint" in err
    assert f"resuming from the previous good one, {run / 'checkpoints' / 'step_00000002.pt'}" in err
    assert [p.name for p in list_checkpoints(run)] == ["step_00000004.pt"]
    assert (run / "checkpoints" / "step_00000004.pt.corrupt").is_file(), "kept for a look"
    state = load_checkpoint(list_checkpoints(run)[-1])
    assert state["step"] == 4
    for name, value in whole.items():
        torch.testing.assert_close(state["model"][name], value, atol=1e-6, rtol=1e-6, msg=name)


def test_no_readable_checkpoint_stops_with_one_line_and_renames_nothing(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for step in (2, 4):
        (folder / f"step_{step:08d}.pt").write_bytes(b"")  # zero bytes, as a full disk leaves them
    with pytest.raises(JobError) as err:
        load_resumable(list_checkpoints(tmp_path))
    message = str(err.value)
    assert message.startswith(f"{folder / 'step_00000004.pt'}: corrupt or unreadable checkpoint (an empty file")
    assert "older one too" in message and "\n" not in message
    assert sorted(p.name for p in folder.iterdir()) == ["step_00000002.pt", "step_00000004.pt"]


def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_last_good(tiny_data, tmp_path, monkeypatch, one_thread):
    """torch reports a full disk as ``RuntimeError: ... unexpected pos 704 vs 598`` (a traceback) and
    left its partial file behind, filling the disk for whatever came next."""
    real_save, calls = torch.save, []

    def disk_fills(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            return real_save(obj, f, *args, **kwargs)
        with (open(f, "wb") if isinstance(f, (str, Path)) else open(f.fileno(), "wb", closefd=False)) as out:
            out.write(b"\0" * 1000)  # as far as the disk had room
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", disk_fills)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 << 30, 10 << 30, 0))
    run = tmp_path / "run"
    with pytest.raises(UserError) as err:
        pretrain(_cfg(), [tiny_data], run, progress=False)
    message = str(err.value)
    assert message == (f"{run / 'checkpoints' / 'step_00000004.pt'}: could not write the checkpoint (no space left "
                       f"on the device: 0.0 MiB free); last good checkpoint: {run / 'checkpoints' / 'step_00000002.pt'}")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002.pt"], "no partial file left"


def test_scheduler_environments_without_torchrun_are_one_line(monkeypatch):
    """``srun``/``mpirun`` scripts set RANK and WORLD_SIZE themselves: what they leave out was a
    KeyError or torch's ValueError traceback; a busy MASTER_PORT a DistNetworkError traceback."""
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match=r"^WORLD_SIZE=2 is set but RANK is not: start with torchrun"):
        init_distributed("cpu")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match=r"^WORLD_SIZE=2 but MASTER_ADDR and MASTER_PORT are not set"):
        init_distributed("cpu")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(UserError, match=r"^RANK=2 is outside 0 \.\. 1 \(WORLD_SIZE=2\)"):
        init_distributed("cpu")
    monkeypatch.setenv("RANK", "0")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        monkeypatch.setenv("MASTER_PORT", str(port))
        with pytest.raises(UserError, match=rf"^MASTER_ADDR=127\.0\.0\.1 MASTER_PORT={port}: cannot start the process "
                                            r"group \(.*EADDRINUSE.*\); choose a free MASTER_PORT"):
            init_distributed("cpu")
    assert not torch.distributed.is_initialized()


def test_without_local_rank_the_processes_of_a_node_spread_over_its_gpus():
    """Every process of a node took GPU 0 when the launcher set no LOCAL_RANK (srun, mpirun)."""
    assert [device_index({}, rank, gpus=4) for rank in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert device_index({"SLURM_LOCALID": "2"}, rank=7, gpus=8) == 2
    assert device_index({"LOCAL_RANK": "3", "SLURM_LOCALID": "0"}, rank=3, gpus=8) == 3, "torchrun's first"
    assert device_index({"SLURM_LOCALID": "5"}, rank=5, gpus=1) == 0, "one GPU per task: that one"
    assert device_index({"LOCAL_RANK": "1"}, rank=1, gpus=0) == 0, "CPU"
    with pytest.raises(UserError, match=r"^LOCAL_RANK=9, but this process sees 8 GPUs"):
        device_index({"LOCAL_RANK": "9"}, rank=9, gpus=8)
