"""Two processes (gloo, CPU) against one process with the same global batch.

The InfoNCE gather must give every rank the gradient its keys receive from *all* ranks' losses;
with it, DDP's averaged gradients equal the one-process gradients of the global batch. The last
test runs the real command under ``torchrun``.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vivi.config import apply_overrides, preset
from vivi.losses import InfoNCELoss
from vivi.losses.vito import view_infonce
from vivi.models.vivi import VIVIModel
from vivi.train.checkpoint import list_checkpoints, load_checkpoint
from vivi.errors import UserError
from vivi.train.distributed import (
    DistContext,
    all_reduce_mean,
    disagreements,
    gather_with_grad,
    rank_list,
    shutdown,
)
from vivi.train.run_folder import check_processes_agree
from vivi.train.objective import VIVIObjective, video_infonce

V, K, D = 4, 4, 6  # global videos, shots, embedding size
WORLD = 2


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(V, K - 1, D, generator=g), torch.randn(V, K, D, generator=g)


def _worker(rank: int, init_file: str, out: str) -> None:
    """One spawned rank: join the group, run every two-process scenario, save what each computed."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    results = {
        "infonce_global": _infonce(rank, True),
        "infonce_local": _infonce(rank, False),
        "naive_gather": _naive_gather(rank),
        "ddp": _ddp(rank),
        "vito": _vito(rank),
        "agree": _agree(rank),
    }
    gc.disable()  # only shutdown's own collection may free the DDP model made below
    released = _ddp_in_a_cycle(rank)
    shutdown(DistContext(rank, WORLD, rank))
    results["released"] = {"ddp_freed": released() is None, "group_left": not dist.is_initialized()}
    gc.enable()
    torch.save(results, Path(out) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict[str, list[dict]]:
    """Each scenario's results of ranks 0 and 1 (one spawn for all: starting processes is the slow part)."""
    tmp = tmp_path_factory.mktemp("two_ranks")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return {name: [r[name] for r in ranks] for name in ranks[0]}


def _infonce(rank: int, global_negatives: bool) -> dict:
    predictions, keys = _inputs()
    mine = slice(rank * V // WORLD, (rank + 1) * V // WORLD)
    p = predictions[mine].clone().requires_grad_()
    k = keys[mine].clone().requires_grad_()
    loss = video_infonce(InfoNCELoss(), p.flatten(0, 1), k.flatten(0, 1), V // WORLD, K, global_negatives)
    (loss / WORLD).backward()  # DDP's gradient averaging, done by hand on the inputs
    return {"loss": all_reduce_mean(loss.detach()), "gp": p.grad, "gk": k.grad}


def test_infonce_gather_matches_one_process(two_ranks):
    predictions, keys = _inputs()
    p, k = predictions.clone().requires_grad_(), keys.clone().requires_grad_()
    loss = video_infonce(InfoNCELoss(), p.flatten(0, 1), k.flatten(0, 1), V, K)
    loss.backward()
    ranks = two_ranks["infonce_global"]
    for r in ranks:
        torch.testing.assert_close(r["loss"], loss.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r["gp"] for r in ranks]), p.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r["gk"] for r in ranks]), k.grad, atol=1e-6, rtol=1e-5)


def _naive_gather(rank: int) -> dict:
    """The shipped bug: all_gather without a backward, the local slice put back to keep its gradient."""
    predictions, keys = _inputs()
    mine = slice(rank * V // WORLD, (rank + 1) * V // WORLD)
    k = keys[mine].clone().requires_grad_()
    parts = [torch.empty_like(k) for _ in range(WORLD)]
    dist.all_gather(parts, k.detach())
    parts[rank] = k
    gathered = torch.cat(parts)
    q, kv, pos = _global_ids(rank)
    loss = InfoNCELoss()(predictions[mine].flatten(0, 1), gathered.flatten(0, 1), q, kv, pos)
    (loss / WORLD).backward()
    return {"gk": k.grad}


def _global_ids(rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from vivi.models.predictors import prediction_targets

    v = V // WORLD
    q, _, pos = prediction_targets(v, K, torch.device("cpu"))
    return q + rank * v, torch.arange(V).repeat_interleave(K), pos + rank * v * K


def test_the_gather_without_gradient_sum_would_be_caught(two_ranks):
    """Guards the test above: the known-wrong gather gives different key gradients."""
    predictions, keys = _inputs()
    k = keys.clone().requires_grad_()
    video_infonce(InfoNCELoss(), predictions.flatten(0, 1), k.flatten(0, 1), V, K).backward()
    ranks = two_ranks["naive_gather"]
    assert not torch.allclose(torch.cat([r["gk"] for r in ranks]), k.grad, atol=1e-4)


def test_local_negatives_stay_on_their_rank(two_ranks):
    """2-shot presets keep each rank's negatives (as the paper): rank r's loss is that of its videos alone."""
    predictions, keys = _inputs()
    ranks = two_ranks["infonce_local"]
    per_rank = [
        video_infonce(InfoNCELoss(), predictions[s].flatten(0, 1), keys[s].flatten(0, 1), V // WORLD, K)
        for s in (slice(0, V // WORLD), slice(V // WORLD, V))
    ]
    torch.testing.assert_close(ranks[0]["loss"], torch.stack(per_rank).mean())


def _views() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randn(V, 2, D, generator=g), torch.randn(V, 2, D, generator=g)


def _vito(rank: int) -> dict:
    predictions, targets = _views()
    mine = slice(rank * V // WORLD, (rank + 1) * V // WORLD)
    q = predictions[mine].clone().requires_grad_()
    loss = view_infonce(q, targets[mine], 0.1)
    (loss / WORLD).backward()
    return {"loss": all_reduce_mean(loss.detach()), "gq": q.grad}


def test_vito_negatives_come_from_every_rank(two_ranks):
    predictions, targets = _views()
    q = predictions.clone().requires_grad_()
    loss = view_infonce(q, targets, 0.1)
    loss.backward()
    ranks = two_ranks["vito"]
    torch.testing.assert_close(ranks[0]["loss"], loss.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r["gq"] for r in ranks]), q.grad, atol=1e-6, rtol=1e-5)


PX = 64  # at 16 px the last stage's maps are 1 x 1 and GroupNorm flattens them: every clip had the same
# embedding, the backbone's gradients were exactly 0 and the comparison below held whatever DDP did


def _tiny_cfg():
    # GroupNorm: no batch statistics, so one process and two see the same normalisation
    return apply_overrides(
        preset("VIVI-Ex(4)"),
        [f"data.videos={V}", "data.frames=2", "model.backbone.norm=groupnorm_ws", "model.backbone.channels=8,8,16,16",
         "model.backbone.stem_chs=8", f"augment.image_size={PX}", f"data.load_size={PX}"],
    )


def _frames() -> torch.Tensor:
    return torch.randn(V, K, 2, 3, PX, PX, generator=torch.Generator().manual_seed(1))


def _video_loss(net: torch.nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """The video loss alone (the triplet loss mines per rank, so it differs by design); the exemplar
    head joins with weight 0 so that, as in training, every parameter takes part in the backward."""
    out = net(frames)
    return VIVIObjective(_tiny_cfg().loss)(out, frames.shape[0], K, 2)["loss_v"] + 0 * out.exemplar.sum()


def _ddp(rank: int) -> dict:
    from vivi.train.loop import _wrap

    cfg = _tiny_cfg()
    torch.manual_seed(0)
    model = VIVIModel(cfg)
    net = _wrap(model, cfg, DistContext(rank, WORLD, rank), torch.device("cpu"))
    assert isinstance(net, torch.nn.parallel.DistributedDataParallel)
    mine = slice(rank * V // WORLD, (rank + 1) * V // WORLD)
    loss = _video_loss(net, _frames()[mine])
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return {"loss": all_reduce_mean(loss.detach()), "grads": grads}


def _ddp_in_a_cycle(rank: int) -> weakref.ref:
    """The training loop's DDP model, dropped while a reference cycle still holds it (and so the process
    group), as a closure of DDP's own ``__init__`` does for a process's first DDP model (seen with
    ``gc.get_referrers``); made explicit here so that the test does not hang on torch's internals."""
    from vivi.train.loop import _wrap

    cfg = _tiny_cfg()
    net = _wrap(VIVIModel(cfg), cfg, DistContext(rank, WORLD, rank), torch.device("cpu"))
    net.__dict__["_cycle"] = net
    return weakref.ref(net)


def test_shutdown_frees_ddp_before_leaving_the_group(two_ranks):
    """A finished torchrun rank once aborted at exit (-6) when gloo's group was freed only by the
    interpreter's last collection; shutdown frees it while the process is whole."""
    for r in two_ranks["released"]:
        assert r == {"ddp_freed": True, "group_left": True}


def test_ddp_video_loss_gradients_match_one_process(two_ranks, one_thread):
    torch.manual_seed(0)
    model = VIVIModel(_tiny_cfg())
    loss = _video_loss(model, _frames())
    loss.backward()
    ranks = two_ranks["ddp"]
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert "backbone.stem.conv.weight" in grads and "predictor.lstm.weight_ih_l0" in grads
    assert grads["backbone.stem.conv.weight"].abs().max() > 1e-3, "the video loss must reach the backbone"
    assert grads["predictor.lstm.weight_ih_l0"].abs().max() > 1e-4
    for r in ranks:
        torch.testing.assert_close(r["loss"], loss.detach(), atol=1e-5, rtol=1e-5)
        assert set(r["grads"]) == set(grads)
        for name, g in grads.items():
            torch.testing.assert_close(r["grads"][name], g, atol=1e-5, rtol=1e-4, msg=name)


def _agree(rank: int) -> dict[str, str]:
    """What ``_check_processes_agree`` says when the two ranks see the same run, and when they do not."""
    record = {"sources": ["d"], "kind": "videos", "items": 6, "fingerprint": "f00d"}
    other = {**record, "items": 7, "fingerprint": "beef"}
    ckpt = [Path("run/checkpoints/step_00000004.pt")]
    cases = {
        "same": (preset("VIVI-Ex(4)"), record, ckpt),
        "loader per node": (apply_overrides(preset("VIVI-Ex(4)"), [f"data.workers={rank}", f"data.cache_mb={rank}"]),
                            record, ckpt),
        "checkpoint": (preset("VIVI-Ex(4)"), record, ckpt if rank == 0 else []),
        "data": (preset("VIVI-Ex(4)"), record if rank == 0 else other, ckpt),
        "labelled": (preset("VIVI-Ex(4)"), {**record, "labelled": record if rank == 0 else other}, ckpt),
        "setting": (apply_overrides(preset("VIVI-Ex(4)"), [f"ckpt_every={10 + rank}"]), record, ckpt),
    }
    said = {}
    for name, (cfg, rec, ckpts) in cases.items():
        try:
            check_processes_agree(Path("run"), cfg, rec, ckpts)
            said[name] = ""
        except UserError as e:
            said[name] = str(e)
    return said


def test_processes_that_see_different_runs_stop_with_one_line(two_ranks):
    """A run folder or data copy not shared by every node, or a setting given to one process only,
    would hang the run or train on other data silently: every rank stops with the same line."""
    ranks = two_ranks["agree"]
    assert ranks[0] == ranks[1], "every rank must raise the same error, or the others hang"
    said = ranks[0]
    assert said["same"] == "" and said["loader per node"] == ""
    assert "different checkpoints in run: step_00000004.pt on rank 0 (" in said["checkpoint"]
    assert "none on rank 1 (" in said["checkpoint"] and "every node shares" in said["checkpoint"]
    assert "different training data: 6 videos (fingerprint f00d) on rank 0" in said["data"]
    assert "7 videos (fingerprint beef) on rank 1" in said["data"]
    assert "different labelled images" in said["labelled"]
    assert "different settings (ckpt_every: 10 on rank 0" in said["setting"] and "11 on rank 1" in said["setting"]
    assert all("\n" not in line for line in said.values())


def test_disagreements_name_ranks_and_hosts():
    views = [{"a": 1, "b": "x"}] * 4 + [{"a": 1, "b": "y"}] * 2 + [{"a": 1}]
    hosts = ["n0"] * 4 + ["n1"] * 3
    assert disagreements(views, hosts) == {"b": "x on ranks 0-3 (n0); y on ranks 4-5 (n1); (unset) on rank 6 (n1)"}
    assert disagreements(views[:4], hosts[:4]) == {}
    assert rank_list([6, 0, 1, 2, 3, 9, 10]) == "ranks 0-3, 6, 9-10"


def test_gather_is_identity_alone():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x


@pytest.mark.parametrize("preset_name", ["VIVI-Ex(4)"])
def test_torchrun_two_processes_train_and_checkpoint(tiny_data, tmp_path, preset_name):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "vivi", "pretrain", "--preset", preset_name, "--data", str(tiny_data), "--out", str(run),
        "--set", "data.videos=4", "--set", "data.workers=0", "--set", "optim.steps=2", "--set", "ckpt_every=2",
        "--set", "log_every=1", "--set", "device=cpu",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    state = load_checkpoint(list_checkpoints(run)[-1])
    assert state["step"] == 2 and len(state["rng"]) == 2
    assert (run / "backbone.safetensors").is_file()
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2, "only rank 0 writes metrics"
    assert res.stdout.count("backbone: ") == 1, "only rank 0, which wrote it, names the backbone"
    # the same command again resumes on both ranks; rank 1 once read config.json while rank 0 rewrote it
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002.pt"]
