"""torch.distributed for ``torchrun -m vivi pretrain`` (or a scheduler's launcher, see
:func:`init_distributed`): process group setup and the collectives the losses need.

One process per device. Without a launcher's environment (``WORLD_SIZE`` unset or 1) everything
here is a no-op, so the training loop has one code path for a laptop and for many nodes.
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from vivi.errors import UserError, first_line


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world`` processes, using ``device``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str, timeout_s: float | None = None) -> DistContext:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU); a single process otherwise.

    ``timeout_s`` (the ``dist_timeout_s`` setting; torch's 30 minutes when None): how long a collective
    waits for a process that stopped answering before it fails (:func:`peer_timed_out`).

    Besides torchrun, a scheduler's own launcher (``srun``, ``mpirun``) starting one process per device
    with ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set works too. What such an
    environment lacks is one line (a ``KeyError: 'RANK'`` or torch's ValueError traceback before);
    ``LOCAL_RANK`` unset no longer puts every process of a node on GPU 0 (:func:`device_index`).
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistContext()
    if "RANK" not in os.environ:
        raise UserError(f"WORLD_SIZE={world} is set but RANK is not: start with torchrun, or give every process "
                        "its RANK (0 .. WORLD_SIZE-1), MASTER_ADDR and MASTER_PORT")
    rank = _env_int("RANK", 0)
    if not 0 <= rank < world:
        raise UserError(f"RANK={rank} is outside 0 .. {world - 1} (WORLD_SIZE={world})")
    cuda = device != "cpu" and torch.cuda.is_available()  # a CUDA device without CUDA: process_device says so
    local_rank = device_index(os.environ, rank, torch.cuda.device_count() if cuda else 0)
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
        if missing:
            raise UserError(f"WORLD_SIZE={world} but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                            "not set: start with torchrun, or set them to rank 0's host and a free port on it")
        try:
            timeout = timedelta(seconds=timeout_s) if timeout_s is not None else None
            dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
        except dist.DistNetworkError as e:  # the port is taken (EADDRINUSE), the host unknown or unreachable
            where = f"MASTER_ADDR={os.environ['MASTER_ADDR']} MASTER_PORT={os.environ['MASTER_PORT']}"
            raise UserError(f"{where}: cannot start the process group ({first_line(e)[:200]}); choose a free "
                            "MASTER_PORT (torchrun: --master-port or --rdzv-endpoint)") from None
    return DistContext(rank, world, local_rank)


def _env_int(name: str, default: int) -> int:
    """An integer environment variable (``default`` when unset), or one line naming it."""
    text = os.environ.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{name}={text!r} is not an integer") from None


# Where launchers other than torchrun put a process's index among those on its node.
LOCAL_RANK_VARS = ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")


def device_index(env: Mapping[str, str], rank: int, gpus: int) -> int:
    """The CUDA device of a process of global ``rank`` on a node where it sees ``gpus`` GPUs (0 on CPU).

    torchrun sets ``LOCAL_RANK``; ``srun`` and ``mpirun`` set their own variable instead
    (:data:`LOCAL_RANK_VARS`). With none of them, every process of a node used GPU 0: 8x the memory
    on one GPU (out of memory, or 8x slower) and 7 idle. Then ``rank % gpus`` places the processes
    one per GPU when ranks fill nodes in order. A process that sees one GPU only (a scheduler that
    isolates one per task through ``CUDA_VISIBLE_DEVICES``) uses it, whatever its local index.
    """
    if gpus <= 1:
        return 0
    for name in LOCAL_RANK_VARS:
        text = env.get(name, "").strip()
        if text:
            try:
                local = int(text)
            except ValueError:
                raise UserError(f"{name}={text!r} is not an integer") from None
            if not 0 <= local < gpus:
                raise UserError(f"{name}={local}, but this process sees {gpus} GPUs (0 .. {gpus - 1}): start at most "
                                f"{gpus} processes per node (torchrun --nproc_per_node {gpus})")
            return local
    return rank % gpus


def process_device(ctx: DistContext, device: str) -> torch.device:
    """This process's device: ``cuda:<local rank>`` (:func:`device_index`) under torchrun or another
    launcher with CUDA, else as configured."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={device!r} requested but CUDA is not available on this machine")
    if device == "mps" and not torch.backends.mps.is_available():  # was torch's traceback at the first tensor
        raise UserError("device='mps' requested but MPS (Apple silicon) is not available on this machine")
    if device == "cuda" and ctx.enabled:
        return torch.device("cuda", ctx.local_rank)
    return torch.device(device)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward hands each rank the *sum over ranks* of the gradient of its slice.

    Every rank's loss depends on every rank's keys, so the gradient of rank r's keys is the sum
    of the gradients all ranks' losses send to them. ``torch.distributed.all_gather`` alone has
    no backward, and copying only the local slice back keeps just rank r's own contribution:
    the gradients then differ from one process computing the same global batch.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * n : (dist.get_rank() + 1) * n]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank in rank order (dim 0), differentiably; ``x`` itself when alone."""
    if rank_and_world()[1] == 1:
        return x
    return _GatherWithGrad.apply(x)


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_mean(x: Tensor) -> Tensor:
    """Mean of ``x`` over ranks (a copy; ``x`` when alone)."""
    if rank_and_world()[1] == 1:
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / dist.get_world_size()


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for when alone)."""
    if rank_and_world()[1] > 1:
        dist.barrier()


def all_gather_objects(obj: object) -> list[object]:
    """``obj`` of every rank, in rank order (``[obj]`` when alone)."""
    if rank_and_world()[1] == 1:
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def rank_list(ranks: Sequence[int]) -> str:
    """``rank 3``, ``ranks 0-7``, ``ranks 0-3, 6, 8-9``: ranks as a person reads them."""
    runs: list[list[int]] = []
    for r in sorted(ranks):
        if runs and r == runs[-1][-1] + 1:
            runs[-1].append(r)
        else:
            runs.append([r])
    text = ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else f"{run[0]}" for run in runs)
    return f"rank{'s' if len(ranks) > 1 else ''} {text}"


def disagreements(views: Sequence[Mapping[str, object]], hosts: Sequence[str]) -> dict[str, str]:
    """Each key whose value is not the same on every rank, mapped to who holds which value, e.g.
    ``{"checkpoint": "step_00000200.pt on ranks 0-7 (node-a); none on ranks 8-15 (node-b)"}``.

    ``views[r]`` is what rank r sees, ``hosts[r]`` the machine it runs on: a difference between
    nodes (a run folder or a data copy that is not shared) reads differently from one between ranks
    of one node (processes started with different commands)."""
    differ: dict[str, str] = {}
    for key in dict.fromkeys(k for view in views for k in view):
        holders: dict[str, list[int]] = {}
        for rank, view in enumerate(views):
            holders.setdefault(str(view.get(key, "(unset)")), []).append(rank)
        if len(holders) > 1:
            differ[key] = "; ".join(
                f"{value} on {rank_list(ranks)} ({', '.join(dict.fromkeys(hosts[r] for r in ranks))})"
                for value, ranks in holders.items()
            )
    return differ


# What gloo raises in a collective whose peer exited or was killed: "Connection closed by peer
# [host]:port", "Read error [host]:port: Connection reset by peer", a write's "Broken pipe"
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


class PeerStopped(UserError):
    """Another process of the run stopped (its own error, a kill, a lost node) while this one was in a
    collective with it.

    gloo then raised a RuntimeError whose traceback, on every surviving process, buried the real error
    (above it on one node, in another node's log on several) under "Connection closed by peer": one
    line instead, naming where the peer ran and the checkpoint to resume from. Said by rank 0 and by
    each node's first process (``LOCAL_RANK`` 0), so every node's log says it once, not once per process;
    a launcher that sets no ``LOCAL_RANK`` (``srun``, ``mpirun``) has every process say it. Recognised as a
    gloo or torch.distributed error naming a closed or reset connection or a broken pipe (:data:`PEER_GONE`).
    """

    over_interrupt = True  # torchrun SIGTERMs the survivors while this is on its way out

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.same_on_every_rank = os.environ.get("LOCAL_RANK", "0") != "0"


def peer_stopped(error: BaseException, resume: str) -> PeerStopped | None:
    """``error`` as one line when it is a collective failing because another process went away (None
    otherwise: this process's own error keeps its traceback); ``resume`` says which checkpoint is left."""
    text = str(error)
    gloo = isinstance(error, RuntimeError) and ("gloo" in text or isinstance(error, dist.DistError))
    if not gloo or not any(marker in text for marker in PEER_GONE):
        return None
    found = re.search(r"\[([^\]\s]+)\]:\d+", text)  # the peer: "[10.0.0.2]:41237" (not "[.../pair.cc:561]")
    on, node = (f" (on {found.group(1)})", found.group(1)) if found else ("", "its node")
    return PeerStopped(
        f"another process of this run{on} stopped, so this one stops too: its error is above, or in the log of "
        f"{node}; {resume}; run the same command again to resume once that is fixed"
    )


# What a collective raises when a peer stopped answering without closing its sockets (a hung process, a
# node that froze) for the group's timeout. gloo (torch 2.14; a plain RuntimeError on the rank that
# waits): "[.../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 3000ms for recv operation to
# complete" (or "... for send operation ..."), and, in every other operation pending at that moment (an
# asynchronous one, as DDP's gradient all-reduce) and any later one on the group, the bare "Application
# timeout caused pair closure". NCCL's watchdog names a "collective operation timeout" (where its error
# reaches Python at all: by default it ends the process itself after the same time).
TIMED_OUT = ("Timed out waiting", "collective operation timeout")
PAIR_CLOSED = "Application timeout caused pair closure"  # gloo's own words, without "gloo" in them


def peer_timed_out(error: BaseException, timeout_s: float, resume: str) -> PeerStopped | None:
    """``error`` as one line when it is a collective that waited ``timeout_s`` seconds for a process that
    stopped answering (None otherwise: this process's own error keeps its traceback); ``resume`` says
    which checkpoint is left. Said as :class:`PeerStopped` is: once per node."""
    if not isinstance(error, RuntimeError):
        return None
    text = str(error)
    collective = "gloo" in text or isinstance(error, dist.DistError)
    if not (PAIR_CLOSED in text or (collective and any(marker in text for marker in TIMED_OUT))):
        return None
    return PeerStopped(
        f"a process of this run stopped answering for {timeout_s:g} s (hung: a stuck read, a deadlocked loader, "
        f"a frozen node), so this one stops too; if it was only slow (a long checkpoint write, a slow start), raise "
        f"dist_timeout_s (--set dist_timeout_s=SECONDS, now {timeout_s:g}); {resume}; run the same command again to "
        "resume"
    )


def shutdown(ctx: DistContext) -> None:
    """Leave the process group, after freeing what still holds it.

    DDP and its reducer sit in a reference cycle that keeps the process group alive, so only the
    cyclic garbage collector frees them: at any later moment, or while the interpreter shuts down,
    where gloo's destructor then ran beside a half-torn-down interpreter and a rank at times
    aborted ("terminate called without an active exception", exit -6) after a finished run. They
    are collected here, while the interpreter and the peers are still whole.
    """
    if ctx.enabled and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
