"""One writer per output folder: an advisory lock that a second command on the same folder meets.

Two ``vivi pretrain`` on one run folder (the same command in two terminals, a scheduler requeueing
a job whose first copy still runs) both trained, interleaved ``metrics.jsonl`` and pruned each
other's checkpoints; two ``vivi ingest`` into one folder wrote the same videos into two shards and
both appended to ``index.jsonl``. A ``flock`` on ``FOLDER/.lock`` refuses the second before it
changes anything there; the kernel releases it when its holder ends, however it ends, so there is
no stale lock to remove.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import IO
from weakref import WeakSet

from vivi.errors import UserError, warn

LOCK_NAME = ".lock"

# The locks this process holds. A forked child (a loader or ingest worker) closes its copies: the
# lock lasts until every copy is closed, and a worker orphaned by a killed run would otherwise keep
# it for seconds.
_held: WeakSet[IO[str]] = WeakSet()


def _close_held_locks() -> None:
    for lock in list(_held):
        lock.close()


os.register_at_fork(after_in_child=_close_held_locks)


def lock_folder(folder: Path, command: str, doing: str) -> IO[str] | None:
    """Hold ``folder/.lock`` exclusively for as long as the returned file stays open.

    Held by another process: a :class:`UserError` naming the folder, ``vivi {command}`` and the
    holder (pid, host and start time, which the file keeps), e.g. "OUT is being {doing} by another
    vivi {command} (...)". ``None``, with a warning, on a filesystem without locks (some FUSE bucket
    mounts): the work goes on.
    """
    folder.mkdir(parents=True, exist_ok=True)
    # created if missing, never truncated here: a refused command leaves the folder as it was
    lock = (folder / LOCK_NAME).open("a+", errors="replace")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):  # not held by another: no locks on this filesystem
            lock.close()
            warn(f"{folder}: its filesystem does not support file locks ({e.strerror or e}); another vivi "
                 f"{command} started on this folder at the same time would not be detected")
            return None
        holder = _holder(lock)
        lock.close()
        raise UserError(f"{folder} is being {doing} by another vivi {command}{holder}; wait for it to finish or "
                        "stop it") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()} on host {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M')}\n")
    lock.flush()
    _held.add(lock)
    return lock


def _holder(lock: IO[str]) -> str:
    """`` (pid 12 on host a, since 2026-12-04 10:00)`` as the holder wrote it; "" if read just as it rewrites it."""
    lock.seek(0)
    holder = lock.read(200).partition("\n")[0].strip()
    return f" ({holder})" if holder else ""


def check_not_locked(folder: Path, command: str, doing: str, why: str) -> None:
    """Refuse to read ``folder`` while a ``vivi {command}`` holds its lock (a shared lock would wait):
    training on a folder that `vivi ingest` is still writing took the videos indexed so far, and the
    run could never resume once the ingest had added more (its data had changed). Nothing is held
    afterwards; a folder without a lock file, or whose lock cannot be read, is not checked."""
    try:
        lock = (folder / LOCK_NAME).open("r", errors="replace")
    except OSError:
        return
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise UserError(f"{folder} is being {doing} by a vivi {command}{_holder(lock)}; {why}") from None
            return  # no locks on this filesystem
        fcntl.flock(lock, fcntl.LOCK_UN)
