"""Two nodes' worth of processes through the real training loop, on gloo.

Each process is started as a node of ``torchrun --nnodes 2 --nproc_per_node 1`` starts it (``RANK`` r,
``LOCAL_RANK`` 0, ``LOCAL_WORLD_SIZE`` 1) and runs ``pretrain`` itself, so a test can patch it:

- the whole loop on two processes ends where one process ends with the same global batch (the
  per-rank triplet mining zeroed, the augmentation made deterministic: what is left is the data
  split, the global InfoNCE, DDP's averaging and the optimiser);
- a SIGTERM on one rank stops both at the same step and the resumed run ends where an
  uninterrupted one does;
- a rank that fails makes the other stop with one line naming where the failed one ran and the
  checkpoint to resume from, instead of gloo's "Connection closed by peer" traceback.

One start of the two processes runs every scenario (starting processes is the slow part). The
loader's split of each step's global batch over ranks and loader workers is checked in this process.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from vivi.data.batches import StepClips, make_loader, rank_slice, training_videos
from vivi.data.shards import read_index
from vivi.models import build_model
from vivi.train.checkpoint import list_checkpoints, load_checkpoint
from vivi.train.distributed import PeerStopped, peer_stopped
from vivi.train.objective import VIVIObjective

WORLD = 2
STEPS = 4
SETTINGS = [
    "data.videos=4", "data.frames=2", "data.workers=0", f"optim.steps={STEPS}", "optim.warmup_steps=0", "device=cpu",
    "log_every=1", "model.backbone.norm=groupnorm_ws", "model.backbone.channels=8,8,16,16", "model.backbone.stem_chs=8",
]  # fmt: skip
# the same frames on every rank as in one process: a full-frame crop, no flip, no colour change
DETERMINISTIC = ["augment.crop_scale=1,1", "augment.crop_ratio=1,1", "augment.flip=false", "augment.color_prob=0",
                 "augment.gray_prob=0"]  # fmt: skip


def _cfg(*more: str):
    return apply_overrides(preset("VIVI-Ex(4)"), SETTINGS + list(more))


def _video_loss_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The triplet loss mines each rank's frames (by design): zeroed, the rest must match one process."""
    original = VIVIObjective.__call__

    def video_only(self, *args, **kwargs):
        terms = original(self, *args, **kwargs)
        terms["loss_sf"] = terms["loss_sf"] * 0
        terms["loss"] = terms["loss_sf"] + self.cfg.video_weight * terms["loss_v"]
        return terms

    monkeypatch.setattr(VIVIObjective, "__call__", video_only)


def _at_call(monkeypatch: pytest.MonkeyPatch, call: int, action) -> None:
    """``action()`` at the ``call``-th objective evaluation (step ``call - 1``) of this process."""
    original, calls = VIVIObjective.__call__, []

    def counted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            action()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(VIVIObjective, "__call__", counted)


def _fail() -> None:
    raise RuntimeError("injected fault on rank 1")


def _worker(rank: int, data: str, tmp: str, ports: list[int]) -> None:
    """One "node": every scenario in turn, each its own process group; what each said goes to a JSON file."""
    from vivi.cli import main
    from vivi.train.loop import TrainingStopped, pretrain

    torch.set_num_threads(1)
    os.environ.update(WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1")  # fmt: skip
    out, said = Path(tmp), {}
    os.environ["MASTER_PORT"] = str(ports[0])
    with pytest.MonkeyPatch.context() as patch:
        _video_loss_only(patch)
        pretrain(_cfg(*DETERMINISTIC, "ckpt_every=4"), [Path(data)], out / "same", progress=False)

    os.environ["MASTER_PORT"] = str(ports[1])
    pretrain(_cfg("ckpt_every=4"), [Path(data)], out / "whole", progress=False)
    os.environ["MASTER_PORT"] = str(ports[2])
    with pytest.MonkeyPatch.context() as patch:
        if rank == 1:  # as a batch system's time limit would signal one node first
            _at_call(patch, 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
        try:
            pretrain(_cfg("ckpt_every=4"), [Path(data)], out / "stopped", progress=False)
            said["stopped"] = "ran to the end"
        except TrainingStopped as e:
            said["stopped"] = str(e)
    os.environ["MASTER_PORT"] = str(ports[3])
    pretrain(_cfg("ckpt_every=4"), [Path(data)], out / "stopped", progress=False)  # the same command again

    os.environ["MASTER_PORT"] = str(ports[4])
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(err):
        if rank == 1:
            _at_call(patch, 3, _fail)
        cmd = ["pretrain", "--preset", "VIVI-Ex(4)", "--data", data, "--out", str(out / "failed")]
        for s in SETTINGS + ["ckpt_every=2"]:
            cmd += ["--set", s]
        try:
            said["failed_exit"] = main(cmd)
        except RuntimeError as e:  # a bug's traceback (the injected fault; gloo's error without the fix)
            said["failed_exit"] = f"raised {type(e).__name__}: {str(e)[:300]}"
    said["failed_stderr"] = err.getvalue()
    (out / f"rank{rank}.json").write_text(json.dumps(said))


def _free_ports(n: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


@pytest.fixture(scope="module")
def two_nodes(tiny_data, tmp_path_factory) -> Path:
    """Forked, not spawned: the children start at once with vivi imported (spawned ones re-imported torch
    for ~14 s on a busy 2-core machine); each takes one torch thread. A rank left waiting in a
    collective would wait for gloo's 30 minutes: stopped after 3."""
    tmp = tmp_path_factory.mktemp("two_nodes")
    args = (str(tiny_data), str(tmp), _free_ports(5))
    ranks = mp.start_processes(_worker, args=args, nprocs=WORLD, join=False, start_method="fork")
    deadline = time.monotonic() + 180
    while not ranks.join(timeout=1):
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail("a rank hung")
    return tmp


def _said(tmp: Path, rank: int) -> dict:
    return json.loads((tmp / f"rank{rank}.json").read_text())


def _final(run: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(list_checkpoints(run)[-1])
    assert state["step"] == STEPS
    return state["model"]


def test_two_nodes_end_where_one_process_ends(two_nodes, tiny_data, tmp_path, monkeypatch, one_thread):
    _video_loss_only(monkeypatch)
    from vivi.train.loop import pretrain

    one = _final(pretrain(_cfg(*DETERMINISTIC, "ckpt_every=4"), [tiny_data], tmp_path / "one", progress=False))
    two = _final(two_nodes / "same")
    torch.manual_seed(0)
    start = build_model(_cfg()).state_dict()
    moved = max((one[n].float() - start[n].float()).abs().max().item() for n in start)
    assert moved > 1e-3, "the run must move the weights for the comparison to mean anything"
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, atol=1e-5, rtol=1e-4, msg=name)
    rows = [json.loads(line) for line in (two_nodes / "same" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss_v"] for r in rows] == pytest.approx([r["loss_v"] for r in ref], abs=1e-5)


def test_sigterm_on_one_node_stops_both_and_resumes_exactly(two_nodes):
    checkpoint = two_nodes / "stopped" / "checkpoints" / "step_00000002.pt"
    for rank in range(WORLD):
        said = _said(two_nodes, rank)["stopped"]
        assert said.startswith(f"stopped at step 2 of {STEPS} on request; checkpoint {checkpoint}"), said
    whole, resumed = _final(two_nodes / "whole"), _final(two_nodes / "stopped")
    for name, value in whole.items():
        torch.testing.assert_close(resumed[name], value, atol=1e-6, rtol=1e-6, msg=name)
    steps = [json.loads(line)["step"] for line in (two_nodes / "stopped" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_a_failed_rank_stops_the_other_with_one_line(two_nodes):
    """Rank 1 fails at step 3: rank 0, waiting for it in a collective, says so in one line naming where
    it ran and the checkpoint of step 2 (it printed gloo's 'Connection closed by peer' traceback)."""
    failed, survivor = _said(two_nodes, 1), _said(two_nodes, 0)
    assert failed["failed_exit"] == "raised RuntimeError: injected fault on rank 1"
    assert survivor["failed_exit"] == 2, survivor["failed_exit"]
    lines = [line for line in survivor["failed_stderr"].splitlines() if line.startswith("vivi: error")]
    checkpoint = two_nodes / "failed" / "checkpoints" / "step_00000002.pt"
    assert lines == [
        "vivi: error: another process of this run (on 127.0.0.1) stopped, so this one stops too: its error is above, "
        f"or in the log of 127.0.0.1; last good checkpoint: {checkpoint}; run the same command again to resume once "
        "that is fixed"
    ]
    assert "Traceback" not in survivor["failed_stderr"]


def test_only_a_peer_gone_becomes_that_line(monkeypatch):
    gloo = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [10.1.2.3]:41237: "
                        "Connection reset by peer. This is typically caused by a remote worker hanging")  # fmt: skip
    for local_rank, said_here in (("0", True), ("3", False)):
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        stopped = peer_stopped(gloo, "no checkpoint was written yet")
        assert isinstance(stopped, PeerStopped) and "(on 10.1.2.3)" in str(stopped)
        assert stopped.same_on_every_rank is not said_here, "each node's first process says it"
    assert peer_stopped(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), "x") is None
    assert peer_stopped(ValueError("Connection closed by peer, gloo"), "x") is None


def test_ranks_and_loader_workers_split_each_step_exactly(tiny_data, monkeypatch):
    """Every slot of a step's global batch is drawn by exactly one rank, and loader workers change nothing."""
    for count, world in ((4, 2), (8, 4), (6, 3), (1, 1)):
        slices = [rank_slice(count, r, world, "data.videos") for r in range(world)]
        assert [i for s in slices for i in range(s.start, s.stop)] == list(range(count))
    # the loader in this process (data.workers=auto starts a worker where torch leaves a core free, as
    # under pytest-xdist's one thread): the draws are recorded here
    small = ["data.videos=4", "data.load_size=16", "augment.image_size=16", "data.frames=2", "data.workers=0"]
    cfg = apply_overrides(preset("VIVI-Ex(4)"), small).data
    table = training_videos(read_index([tiny_data]), cfg, str(tiny_data))
    drawn: list[tuple[int, int]] = []
    original = StepClips._frames

    def recorded(self, step, slot, video):
        drawn.append((step, slot))
        return original(self, step, slot, video)

    monkeypatch.setattr(StepClips, "_frames", recorded)
    whole = list(make_loader(table, cfg, seed=3, start=0, steps=3))
    drawn.clear()
    split = [list(make_loader(table, cfg, seed=3, start=0, steps=3, rank=r, world=2)) for r in range(2)]
    assert sorted(drawn) == [(s, v) for s in range(3) for v in range(4)], "each slot once, by one rank"
    workers = dataclasses.replace(cfg, workers=2)
    split_workers = [list(make_loader(table, workers, seed=3, start=0, steps=3, rank=r, world=2)) for r in range(2)]
    for step in range(3):
        assert torch.equal(torch.cat([split[0][step], split[1][step]]), whole[step])
        assert torch.equal(torch.cat([split_workers[0][step], split_workers[1][step]]), whole[step])
