"""Whether this run may continue what a run folder holds, and whether every process agrees on it.

A run folder (``RUN/``) is written by rank 0 and read by every process on resume. Continuing it
is exact only with the same settings of what the run computes and the same data
(:mod:`vivi.train.data_record`); under torchrun every process must also see the same folder, the
same data and the same command line, or the run hangs or trains on something else, silently.
Only one run may write it at a time (:func:`lock_run_folder`).
"""

from __future__ import annotations

import json
import socket
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

from vivi.config import RunConfig, from_dict
from vivi.errors import JobError, UserError
from vivi.folder_lock import lock_folder
from vivi.train.distributed import all_gather_objects, disagreements

# How the run is executed, not what it computes (tested: any worker count and cache size give
# the same batches; memory layout and compilation leave the maths as it is; how often it logs
# and checkpoints only decides what is written; how long a process waits for a hung one only
# decides when the run stops): a run may resume with other values, e.g. on a machine with more
# cores, checkpointing more often or with a shorter dist_timeout_s after a crash.
RUNTIME_ONLY = ("data.workers", "data.cache_mb", "channels_last", "compile", "log_every", "ckpt_every",
                "keep_checkpoints", "dist_timeout_s")

# What `vivi pretrain` writes into a run folder: one of them there makes the folder a run to resume.
RUN_FILES = ("config.json", "data.json", "checkpoints", "metrics.jsonl", "tb", "backbone.safetensors")

# What may differ between the processes of one run: a node's loader share of its cores and memory.
PER_NODE = ("data.workers", "data.cache_mb")


def flat(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"optim.lr": 0.1, ...}``: a nested config as dotted keys, in config order."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_resume_config(run: Path, cfg: RunConfig) -> None:
    """Refuse to continue a run saved with other settings of what it computes, naming the first few."""
    saved = run / "config.json"
    if not saved.is_file():
        return
    old = {k: v for k, v in flat(from_dict(json.loads(saved.read_text())).to_dict()).items() if k not in RUNTIME_ONLY}
    new = {k: v for k, v in flat(cfg.to_dict()).items() if k not in RUNTIME_ONLY}
    differ = [(k, old.get(k), new.get(k)) for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]
    if differ:  # every process reads this one file (they agreed on the folder): all stop alike
        listed = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, a, b in differ[:4])
        raise JobError(
            f"{run}: holds a run with a different config ({listed}; see {saved}); resume with the same "
            "settings or use a new --out folder to start afresh"
        )


def check_processes_agree(out: Path, cfg: RunConfig, record: dict, ckpts: list[Path]) -> None:
    """Under torchrun: stop every process with the same line when they would not train one run.

    Each process reads the run folder, the data and its command line itself. A run folder that is
    not on a filesystem every node shares resumes rank 0 from its checkpoint and the other nodes
    from scratch; a node with its own, different copy of the data draws other videos for its
    slice of the batch; a setting given to some processes only (``ckpt_every``, say) leaves them
    waiting in different collectives. None of these fails by itself: the run would hang or train
    on something else than asked, silently.
    """
    settings = {k: v for k, v in flat(cfg.to_dict()).items() if k not in PER_NODE}
    view = {"checkpoint": ckpts[-1].name if ckpts else "none",
            **{what: f"{r['items']} {r['kind']} (fingerprint {r['fingerprint']})"
               for what, r in (("data", record), ("labelled", record.get("labelled"))) if r},
            **settings}
    gathered = all_gather_objects((socket.gethostname(), view))
    differ = disagreements([v for _, v in gathered], [h for h, _ in gathered])
    if not differ:
        return
    n = f"the {len(gathered)} processes"
    if "checkpoint" in differ:
        raise JobError(f"{n} see different checkpoints in {out}: {differ['checkpoint']}; the run folder must be one "
                       "that every node shares (rank 0 writes it, every process resumes from it)")
    for what, name in (("data", "training data"), ("labelled", "labelled images")):
        if what in differ:
            raise JobError(f"{n} see different {name}: {differ[what]}; every node must read the same data (a shared "
                           "folder or a bucket)")
    listed = "; ".join(f"{key}: {held}" for key, held in list(differ.items())[:3])
    raise JobError(f"{n} were started with different settings ({listed}); start every process with the same command")


def metrics_lines(path: Path) -> tuple[list[str], bool]:
    """The complete lines of ``metrics.jsonl`` (each ending in a newline) and whether a torn last
    line was left out: a power loss or a full disk can cut the row being written, and that tail
    stopped the resume (and ``vivi report``) with a JSON error."""
    lines = path.read_text(errors="replace").splitlines(keepends=True)
    torn = bool(lines) and not lines[-1].endswith("\n")
    return (lines[:-1] if torn else lines), torn


def trim_metrics(path: Path, start: int) -> None:
    """Drop metric rows past the checkpoint resumed from (a crash may have logged steps it then lost),
    and a torn last row."""
    if not path.is_file():
        return
    rows, torn = metrics_lines(path)
    kept = [r for r in rows if r.strip() and json.loads(r).get("step", 0) <= start]
    if torn or len(kept) != len(rows):
        path.write_text("".join(kept))


def lock_run_folder(run: Path) -> IO[str] | None:
    """Hold ``RUN/.lock`` for as long as the returned file stays open (rank 0, the whole run): a
    second ``vivi pretrain`` on the folder stops before it changes anything (:mod:`vivi.folder_lock`)."""
    return lock_folder(run, "pretrain", "trained")


def hold_run_folder(run: Path, main: bool, held: ExitStack) -> None:
    """Rank 0 (``main``) takes the run folder's lock and ``held`` keeps it open to the end; every process
    learns whether it did, so no rank is left waiting in a collective while rank 0 stops: all stop alike."""
    refused = None
    if main:
        try:
            lock = lock_run_folder(run)
            if lock is not None:
                held.enter_context(lock)
        except UserError as e:
            refused = str(e)
        except OSError as e:  # a folder that cannot be made: rank 0 alone would fail, the others wait
            refused = f"{e.filename or run}: {e.strerror or e}"
    refused = all_gather_objects(refused)[0]
    if refused:
        raise JobError(str(refused))
