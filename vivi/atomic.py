"""Results and records written whole or not at all.

A run or an evaluation can be killed at any moment; a half-written JSON file would then stop
the next resume with a parse error and lose what it held. Every such file is written beside
its place and renamed over it (atomic on one filesystem). Processes that add to one file take
turns (:func:`file_lock`), so none writes back a copy that misses another's addition.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def write_json_atomic(path: Path, data: Any, indent: int = 2) -> None:
    """Write ``data`` as JSON to a temporary file beside ``path``, then rename it into place."""
    write_text_atomic(path, json.dumps(data, indent=indent, default=float) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place: a reader (another
    process of the run, the next resume) sees the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_folder(path: Path) -> None:
    """Make the renames in folder ``path`` durable: without it a power loss can undo a rename that a
    later write already counted on (a shard, a checkpoint)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """One process at a time between entering and leaving: an exclusive ``flock`` on a hidden
    ``.NAME.lock`` beside ``path``, waited for (a read-modify-write of a results file takes
    milliseconds), and removed on leaving, so nothing is left beside the results. Not ``path``
    itself: an atomic write replaces its inode, and a lock with it. A process that waited on a lock
    file removed meanwhile tries again on the new one. On a filesystem without locks the block runs
    unserialised, as it did before."""
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.with_name(f".{path.name}.lock")
    lock = _held_lock(name)
    try:
        yield
    finally:
        name.unlink(missing_ok=True)  # while still holding it: a waiter sees it gone and starts again
        if lock is not None:
            lock.close()


def _held_lock(name: Path) -> IO[str] | None:
    """``name`` opened and exclusively locked, once it is the file at that name (not one a holder
    removed while we waited); None on a filesystem without locks."""
    while True:
        lock = name.open("a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError:  # no locks here: nothing to wait for
            lock.close()
            return None
        try:
            if os.stat(name).st_ino == os.fstat(lock.fileno()).st_ino:
                return lock
        except FileNotFoundError:
            pass
        lock.close()  # removed by the holder before us: the next one is a new file
