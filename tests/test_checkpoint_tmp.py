"""A checkpoint write cut short by a kill leaves ``step_N.pt.tmp`` behind (hundreds of MB at paper scale):
the next start of the run removes it, once rank 0 holds the run folder's lock, and says so in one line."""

from __future__ import annotations

import fcntl
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from vivi.config import apply_overrides, preset
from vivi.errors import JobError
from vivi.folder_lock import LOCK_NAME
from vivi.train.checkpoint import list_checkpoints, load_checkpoint, remove_partial_checkpoints
from vivi.train.loop import pretrain

SETTINGS = ["data.videos=2", "optim.lr=0.05", "data.workers=0", "optim.steps=4", "ckpt_every=2", "log_every=1",
            "device=cpu"]  # fmt: skip


def _cfg():
    return apply_overrides(preset("VIVI-Ex(4)"), SETTINGS)


def _killed_mid_write(run: Path) -> Path:
    """The step-4 checkpoint of ``run`` as a SIGKILL in the middle of its write leaves it: a real kill of a
    process inside save_checkpoint, once part of the file is written."""
    script = textwrap.dedent(f"""
        import os, signal, torch
        from pathlib import Path
        from vivi.train.checkpoint import save_checkpoint

        def cut(state, f):
            f.write(b"PK" + bytes(4096))  # the first bytes of torch's zip
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = cut
        save_checkpoint(Path({str(run)!r}), 4, {{"step": 4, "model": {{}}}})
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == -9, res.stderr[-2000:]
    return run / "checkpoints" / "step_00000004.pt.tmp"


def test_the_next_start_removes_a_partial_checkpoint_and_says_so(tiny_data, tmp_path, capsys, one_thread):
    run = pretrain(_cfg(), [tiny_data], tmp_path / "run", progress=False)
    list_checkpoints(run)[-1].unlink()  # as a kill while step 4's checkpoint was written leaves the run
    (run / "backbone.safetensors").unlink()
    partial = _killed_mid_write(run)
    assert partial.is_file() and [p.name for p in list_checkpoints(run)] == ["step_00000002.pt"]
    capsys.readouterr()
    pretrain(_cfg(), [tiny_data], run, progress=False)  # the same command again: resumes from step 2
    said = [line for line in capsys.readouterr().err.splitlines() if "partial" in line]
    assert said == [f"vivi: warning: {run / 'checkpoints'}: removed 1 partial checkpoint left by a write that was cut "
                    "short (step_00000004.pt.tmp; 0.0 MiB)"]  # fmt: skip
    assert not partial.exists()
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002.pt", "step_00000004.pt"]
    assert load_checkpoint(list_checkpoints(run)[-1])["step"] == 4
    pretrain(_cfg(), [tiny_data], run, progress=False)  # nothing left over: nothing said
    assert "partial" not in capsys.readouterr().err


def test_a_run_that_holds_the_folder_keeps_its_write_in_progress(tiny_data, tmp_path, one_thread):
    """While another process holds the lock, the .pt.tmp may be its checkpoint being written: left alone."""
    run = pretrain(_cfg(), [tiny_data], tmp_path / "run", progress=False)
    writing = run / "checkpoints" / "step_00000004.pt.tmp"
    writing.write_bytes(b"PK")
    with (run / LOCK_NAME).open("a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(JobError, match="is being trained by another vivi pretrain"):
            pretrain(_cfg(), [tiny_data], run, progress=False)
    assert writing.read_bytes() == b"PK"


def test_only_partial_checkpoints_are_removed(tmp_path):
    assert remove_partial_checkpoints(tmp_path) == [], "no checkpoints folder yet"
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save({"step": 2, "model": {}}, folder / "step_00000002.pt")
    keep = ["step_00000002.pt", "step_00000001.pt.corrupt", "notes.tmp", "mine.pt.tmp"]
    for name in keep[1:]:
        (folder / name).write_bytes(b"x")
    for step in (4, 6):
        (folder / f"step_{step:08d}.pt.tmp").write_bytes(bytes(2**20))
    removed = remove_partial_checkpoints(tmp_path)
    assert [p.name for p in removed] == ["step_00000004.pt.tmp", "step_00000006.pt.tmp"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(keep)
