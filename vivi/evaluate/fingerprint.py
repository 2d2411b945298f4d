"""Fingerprints that tie a results file to the weights and the images it measured.

A results file resumes task by task. Without these, a file written for another model (a run
retrained in place, a copied run folder, another backbone given the same ``--name``) or for
an image folder whose files changed since would be taken as this evaluation's and its
numbers reported for the wrong thing.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from vivi.data.tasks import ArraySplit, FileSplit, ImageSplit, ImageTask

DIGITS = 16  # hex digits kept: 64 bits, ample to tell two models or two folders apart


def weights_fingerprint(model: torch.nn.Module) -> str:
    """Hash of every parameter and buffer (names, shapes, dtypes, values): what the model computes."""
    h = hashlib.blake2b(digest_size=DIGITS // 2)
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)  # 0-d buffers (BatchNorm counters) too
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def task_fingerprint(task: ImageTask) -> str:
    """Hash of a task's classes and of each split's images and labels.

    Files count by their path relative to the task's common folder and their size, not their
    modification time or absolute place: a folder copied or moved elsewhere is the same task,
    a file added, removed, renamed, relabelled or rewritten to another size is not.
    """
    h = hashlib.blake2b(digest_size=DIGITS // 2)
    h.update(repr(list(task.classes)).encode())
    splits = {"train": task.train, "val": task.val, "test": task.test}
    root = _common_folder([p for s in splits.values() if isinstance(s, FileSplit) for p in s.paths])
    for name, split in splits.items():
        h.update(f"|{name}:{type(split).__name__}:{len(split)}:".encode())
        h.update(np.ascontiguousarray(split.labels).tobytes())
        _update_with_images(h, split, root)
    return h.hexdigest()


def _update_with_images(h: "hashlib._Hash", split: ImageSplit, root: Path | None) -> None:
    if isinstance(split, ArraySplit):
        h.update(np.ascontiguousarray(split.array).tobytes())
    elif isinstance(split, FileSplit):
        for path in split.paths:
            rel = os.path.relpath(path, root) if root is not None else str(path)
            # surrogateescape: a file name that is not UTF-8 hashes as its own bytes, not a crash
            # (the same bytes as before for every UTF-8 name, so older results still match)
            h.update(f"{rel}\0{_size(path)}\0".encode("utf-8", "surrogateescape"))
    elif hasattr(split, "blobs"):  # VTAB records: (container file, offset, length, name)
        for path, offset, length, name in split.blobs:
            h.update(f"{Path(path).name}\0{offset}\0{length}\0{name}\0".encode())
    elif hasattr(split, "base"):  # a corrupted view of another split
        h.update(f"{getattr(split, 'name', '')}:{getattr(split, 'severity', '')}".encode())
        _update_with_images(h, split.base, root)


def _common_folder(paths: list[Path]) -> Path | None:
    if not paths:
        return None
    try:
        return Path(os.path.commonpath([os.path.abspath(p.parent) for p in paths]))
    except ValueError:  # paths on different drives
        return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1  # gone or unreadable: still a difference worth noticing
