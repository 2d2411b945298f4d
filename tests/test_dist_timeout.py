"""A process of a run that stops answering (hung, not dead: its sockets stay open) stops the others
after ``dist_timeout_s`` with one line, instead of torch's 30 minutes and a gloo traceback.

Two processes are started as two nodes of ``torchrun --nnodes 2 --nproc_per_node 1`` start them and
run the real command (``vivi.cli.main``) on gloo; once the first checkpoint is on disk, this process
freezes rank 1 from outside (SIGSTOP: what a stuck filesystem read or a frozen node looks like to its
peers). Rank 0 must stop within a few seconds of the timeout, with one line naming the timeout, the
setting and the checkpoint left, and that checkpoint must load.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from vivi.config import apply_overrides, preset
from vivi.errors import UserError
from vivi.train.checkpoint import list_checkpoints, load_checkpoint
from vivi.train.distributed import PeerStopped, peer_stopped, peer_timed_out
from vivi.train.run_folder import check_resume_config

TIMEOUT_S = 10  # well above a tiny step or checkpoint write on a loaded 2-core CI machine
SETTINGS = [
    "data.videos=4", "data.frames=2", "data.workers=0", "optim.steps=1000", "ckpt_every=2", "log_every=1",
    "device=cpu", "model.backbone.channels=8,8,16,16", "model.backbone.stem_chs=8", f"dist_timeout_s={TIMEOUT_S}",
]  # fmt: skip


def _worker(rank: int, data: str, run: str, port: int) -> None:
    """One "node": the real command; what it said, its exit status and when it ended go to a JSON file."""
    from vivi.cli import main

    torch.set_num_threads(1)
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    cmd = ["pretrain", "--preset", "VIVI-Ex(4)", "--data", data, "--out", run]
    for s in SETTINGS:
        cmd += ["--set", s]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code: object = main(cmd)
        except BaseException as e:  # a traceback's error (gloo's, without the fix)
            code = f"raised {type(e).__name__}: {str(e)[:300]}"
    said = {"exit": code, "stderr": err.getvalue(), "ended": time.time()}
    (Path(run).parent / f"rank{rank}.json").write_text(json.dumps(said))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_hung_rank_stops_the_other_after_the_timeout_with_one_line(tiny_data, tmp_path):
    run = tmp_path / "run"
    ranks = mp.start_processes(_worker, args=(str(tiny_data), str(run), _free_port()), nprocs=2, join=False,
                               start_method="fork")  # fmt: skip
    rank0, rank1 = ranks.processes
    try:
        deadline = time.monotonic() + 90
        while not list_checkpoints(run):  # the run is under way, with a checkpoint to resume from
            assert rank0.is_alive() and rank1.is_alive(), "a rank ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 90 s"
            time.sleep(0.05)
        os.kill(rank1.pid, signal.SIGSTOP)  # frozen, its sockets open: the peer hears nothing, not a close
        frozen = time.time()
        rank0.join(timeout=TIMEOUT_S + 30)
        assert not rank0.is_alive(), "rank 0 still waits for the frozen rank"
    finally:
        for process in (rank0, rank1):
            if process.is_alive():
                process.kill()  # SIGKILL ends a stopped process too
            process.join(timeout=10)
    said = json.loads((tmp_path / "rank0.json").read_text())
    waited = said["ended"] - frozen
    assert waited < TIMEOUT_S + 10, f"rank 0 stopped {waited:.1f} s after rank 1 froze (timeout {TIMEOUT_S} s)"
    assert said["exit"] == 2, said
    lines = [line for line in said["stderr"].splitlines() if line.startswith("vivi: error")]
    assert len(lines) == 1 and "Traceback" not in said["stderr"], said["stderr"][-3000:]
    newest = list_checkpoints(run)[-1]  # kept: the run resumes from it
    assert lines[0] == (
        f"vivi: error: a process of this run stopped answering for {TIMEOUT_S} s (hung: a stuck read, a deadlocked "
        "loader, a frozen node), so this one stops too; if it was only slow (a long checkpoint write, a slow start), "
        f"raise dist_timeout_s (--set dist_timeout_s=SECONDS, now {TIMEOUT_S}); last good checkpoint: {newest}; run "
        "the same command again to resume"
    )
    assert load_checkpoint(newest)["step"] >= 2
    assert not list((run / "checkpoints").glob("*.tmp"))


def test_only_a_collective_timeout_becomes_that_line():
    """gloo's text in torch 2.14 for a recv (all_reduce, barrier) and a send (all_gather, all_gather_object)."""
    for op in ("recv", "send"):
        gloo = RuntimeError(f"[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out "
                            f"waiting 5000ms for {op} operation to complete")  # fmt: skip
        stopped = peer_timed_out(gloo, 5, "no checkpoint was written yet")
        assert isinstance(stopped, PeerStopped) and "stopped answering for 5 s" in str(stopped)
        assert peer_stopped(gloo, "x") is None, "a timeout is not a closed connection"
    # what every other operation pending at the time, and any later one, raises (once seen here in this test)
    assert "for 5 s" in str(peer_timed_out(RuntimeError("Application timeout caused pair closure"), 5, "x"))
    assert peer_timed_out(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), 5, "x") is None
    assert peer_timed_out(TimeoutError("Timed out waiting, gloo"), 5, "x") is None


def test_the_timeout_is_a_setting_a_resume_may_change(tmp_path):
    cfg = apply_overrides(preset("VIVI-Ex(4)"), ["dist_timeout_s=60"])
    assert cfg.dist_timeout_s == 60 and preset("VIVI-Ex(4)").dist_timeout_s == 1800, "torch's 30 minutes by default"
    (tmp_path / "config.json").write_text(cfg.to_json())
    check_resume_config(tmp_path, apply_overrides(preset("VIVI-Ex(4)"), ["dist_timeout_s=600"]))  # not refused
    saved = json.loads(cfg.to_json())
    del saved["dist_timeout_s"]  # a run folder from before the setting
    (tmp_path / "config.json").write_text(json.dumps(saved))
    check_resume_config(tmp_path, cfg)
    for bad, said in (("0", "dist_timeout_s=0: expected >= 1"), ("1e9", "expected 1 to 604800 seconds"),
                      ("fast", "expected a value of type int")):  # fmt: skip
        with pytest.raises(UserError, match=said):
            apply_overrides(preset("VIVI-Ex(4)"), [f"dist_timeout_s={bad}"])
