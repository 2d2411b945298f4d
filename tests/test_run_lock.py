"""One folder, one writer: a second `vivi pretrain` on a folder that another one trains (or a second
`vivi ingest` into one being written) stops at start with one line naming the holder and changes
nothing; once the holder ends (or dies) the same command resumes; a filesystem without locks only warns."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vivi.cli import main
from vivi.train.checkpoint import list_checkpoints
from vivi.folder_lock import LOCK_NAME

# optim.lr as the batch-size note suggests for 2 videos, so a refused run prints its one line alone
SETTINGS = ["data.videos=2", "optim.lr=0.05", "data.workers=0", "optim.steps=4", "ckpt_every=2", "log_every=1",
            "device=cpu"]  # fmt: skip
HOLDER = "pid 4242 on host elsewhere, since 2026-12-04 17:30"


def _command(data: Path, run: Path, settings: list[str] = SETTINGS) -> list[str]:
    return ["pretrain", "--preset", "VIVI-Ex(4)", "--data", str(data), "--out", str(run),
            *[arg for s in settings for arg in ("--set", s)]]  # fmt: skip


def _crashed_run(data: Path, run: Path) -> None:
    """A run as a crash after its step-2 checkpoint leaves it: metric rows past the checkpoint, no backbone."""
    assert main(_command(data, run)) == 0
    list_checkpoints(run)[-1].unlink()  # step 4's
    (run / "backbone.safetensors").unlink()
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002.pt"]


def _snapshot(run: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``run``: its bytes and modification time."""
    return {str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run.rglob("*")) if p.is_file()}


def _steps(run: Path) -> list[int]:
    return [json.loads(row)["step"] for row in (run / "metrics.jsonl").read_text().splitlines()]


def _hold(run: Path, holder: str = HOLDER):
    """The lock as another process holds it: an open file with an exclusive flock and its holder's line."""
    lock = (run / LOCK_NAME).open("a+")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    lock.truncate(0)
    lock.write(holder + "\n")
    lock.flush()
    return lock


def test_a_second_pretrain_on_a_held_folder_stops_with_one_line_and_changes_nothing(tiny_data, tmp_path, capsys,
                                                                                      one_thread):  # fmt: skip
    run = tmp_path / "run"
    _crashed_run(tiny_data, run)
    lock = _hold(run)
    before = _snapshot(run)
    capsys.readouterr()
    assert main(_command(tiny_data, run)) == 2
    err = capsys.readouterr().err
    assert err == (f"vivi: error: {run} is being trained by another vivi pretrain ({HOLDER}); "
                   "wait for it to finish or stop it\n")  # fmt: skip
    assert _snapshot(run) == before, "the refused run changed the folder"
    assert _steps(run) == [1, 2, 3, 4], "nor trimmed the metrics past the checkpoint"

    lock.close()  # the holder ends: the same command resumes from step 2
    assert main(_command(tiny_data, run)) == 0
    assert _steps(run) == [1, 2, 3, 4] and [p.name for p in list_checkpoints(run)] == ["step_00000002.pt",
                                                                                       "step_00000004.pt"]
    assert (run / "backbone.safetensors").is_file()
    assert (run / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} on host "), "the lock names its last holder"


HOLDER_SCRIPT = """
import os, sys, time
from pathlib import Path
from vivi.train.run_folder import lock_run_folder

lock = lock_run_folder(Path(sys.argv[1]))
child = os.fork()  # as a loader worker is forked: it must not keep the lock once its parent is gone
if child == 0:
    time.sleep(60)
    os._exit(0)
print(child, flush=True)
time.sleep(60)
"""


def test_the_lock_ends_with_its_holder_even_when_killed(tiny_data, tmp_path, capsys, one_thread):
    """A real second process holds it (and a forked child, as its loader workers would); SIGKILL leaves
    no stale lock: the next run starts at once."""
    run = tmp_path / "run"
    _crashed_run(tiny_data, run)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER_SCRIPT, str(run)], stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        capsys.readouterr()
        assert main(_command(tiny_data, run)) == 2
        assert f"another vivi pretrain (pid {holder.pid} on host " in capsys.readouterr().err
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert main(_command(tiny_data, run)) == 0, capsys.readouterr().err
        assert _steps(run) == [1, 2, 3, 4] and (run / "backbone.safetensors").is_file()
    finally:
        holder.kill()
        os.kill(child, signal.SIGKILL)


def test_a_filesystem_without_locks_warns_and_trains(tiny_data, tmp_path, capsys, monkeypatch, one_thread):
    def no_locks(*args: object) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    run = tmp_path / "run"
    assert main(_command(tiny_data, run)) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vivi:")]  # not the progress bar
    assert err == [f"vivi: warning: {run}: its filesystem does not support file locks ({os.strerror(errno.ENOLCK)}); "
                   "another vivi pretrain started on this folder at the same time would not be detected"]  # fmt: skip
    assert _steps(run) == [1, 2, 3, 4] and (run / "backbone.safetensors").is_file()


def test_torchrun_ranks_all_stop_when_rank_0_cannot_lock(tiny_data, tmp_path):
    """Rank 0 says why; rank 1 learns it instead of waiting in the next collective; the folder stays as it was."""
    run = tmp_path / "run"
    run.mkdir()
    lock = _hold(run)
    before = _snapshot(run)
    settings = [s.replace("data.videos=2", "data.videos=4").replace("optim.lr=0.05", "optim.lr=0.07") for s in SETTINGS]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vivi",
           *_command(tiny_data, run, settings)]  # fmt: skip
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    try:
        _, err = job.communicate(timeout=90)  # ~8 s; a rank left in a collective waits for gloo's 30 min
    except subprocess.TimeoutExpired:
        job.terminate()  # torchrun stops its ranks (each in a session of its own) on SIGTERM
        pytest.fail(f"a rank hung: {job.communicate(timeout=60)[1][-3000:]}")
    finally:
        lock.close()
    assert job.returncode != 0
    line = f"vivi: error: {run} is being trained by another vivi pretrain ({HOLDER}); wait for it to finish or stop it"
    assert err.count(line) == 1, err[-3000:]
    assert _snapshot(run) == before


def test_a_second_ingest_into_a_held_folder_stops_with_one_line_and_changes_nothing(tiny_world, tmp_path, capsys):
    """Two ingests into one OUT decoded the same videos into two sets of shards and indexed them twice."""
    out = tmp_path / "out"
    videos = sorted((tiny_world / "videos").glob("*.mp4"))
    src = tmp_path / "src"
    src.mkdir()
    for video in videos[:2]:
        (src / video.name).symlink_to(video)
    assert main(["ingest", str(src), str(out), "--workers", "1"]) == 0
    (src / videos[2].name).symlink_to(videos[2])  # one more to ingest: the refused run must not
    lock = _hold(out)
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["ingest", str(src), str(out), "--workers", "1"]) == 2
    assert capsys.readouterr().err == (f"vivi: error: {out} is being written by another vivi ingest ({HOLDER}); "
                                       "wait for it to finish or stop it\n")  # fmt: skip
    assert _snapshot(out) == before, "the refused ingest changed the folder"

    lock.close()
    assert main(["ingest", str(src), str(out), "--workers", "1"]) == 0
    records = [json.loads(row) for row in (out / "index.jsonl").read_text().splitlines()]
    assert sorted(Path(r["source"]).name for r in records) == sorted(v.name for v in videos[:3])
