"""Checkpoints: atomic writes, safe loads (``weights_only=True``), newest-first discovery."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vivi.atomic import fsync_folder
from vivi.config import RunConfig, from_dict
from vivi.errors import JobError, UserError, detail_line, first_line, listed, warn

_NAME = re.compile(r"step_(\d+)\.pt$")


def checkpoint_dir(run: Path) -> Path:
    return run / "checkpoints"


def checkpoint_path(run: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives (every rank can name it; rank 0 writes it)."""
    return checkpoint_dir(run) / f"step_{step:08d}.pt"


def save_checkpoint(run: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``checkpoints/step_<step>.pt`` via a temporary file; keep the newest ``keep``.

    The file is flushed to the disk (``fsync``) before it is renamed into place: after a power loss
    or a node crash, an unsynced rename could leave a named checkpoint of zero bytes. A write that
    fails (a full disk, a vanished mount) removes its partial file, keeps every older checkpoint and
    is a :class:`UserError` naming the file and the reason; torch's own message for a full disk is
    ``unexpected pos 704 vs 598``, and the partial file filled the disk for every later command.
    """
    path = checkpoint_path(run, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    try:
        with tmp.open("wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        _sync_folder(path.parent)
    except (OSError, RuntimeError) as e:
        reason = _write_failure(e, path.parent)
        tmp.unlink(missing_ok=True)
        older = [p for p in list_checkpoints(run) if p != path]
        last = f"last good checkpoint: {older[-1]}" if older else "no checkpoint was written yet"
        raise UserError(f"{path}: could not write the checkpoint ({reason}); {last}") from None
    for old in list_checkpoints(run)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def _write_failure(error: BaseException, folder: Path) -> str:
    """Why a checkpoint write failed, in words: torch reports a full disk as a RuntimeError about
    stream positions, so a folder with (next to) no space left is named as such."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if free is not None and free < 64 * 2**20:
        return f"no space left on the device: {free / 2**20:.1f} MiB free"
    return first_line(error)[:160]


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform and filesystem allow)."""
    try:
        fsync_folder(folder)
    except OSError:  # some filesystems refuse fsync on a folder: the rename is then as durable as they make it
        pass


def list_checkpoints(run: Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    folder = checkpoint_dir(run)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.search(p.name)]
    return sorted(found, key=lambda p: int(_NAME.search(p.name).group(1)))


_PARTIAL = re.compile(r"step_\d+\.pt\.tmp$")  # what save_checkpoint writes before the rename


def remove_partial_checkpoints(run: Path) -> list[Path]:
    """Delete the ``step_N.pt.tmp`` files a checkpoint write cut short left behind (a SIGKILL, a lost node
    mid-write), saying so in one line; the removed paths. Only rank 0, while it holds the run folder's lock
    (:func:`vivi.train.run_folder.hold_run_folder`): no other process writes these files then. Nothing
    removed them before, and at paper scale each is hundreds of MB, one more with every crash."""
    folder = checkpoint_dir(run)
    if not folder.is_dir():
        return []
    removed, size = [], 0
    for path in sorted(p for p in folder.iterdir() if _PARTIAL.search(p.name)):
        try:
            bytes_ = path.stat().st_size
            path.unlink()
        except OSError:  # gone already, or not ours to delete: it does not stop the run
            continue
        removed.append(path)
        size += bytes_
    if removed:
        names = listed([p.name for p in removed])
        warn(f"{folder}: removed {len(removed)} partial checkpoint{'s' if len(removed) > 1 else ''} left by a write "
             f"that was cut short ({names}; {size / 2**20:.1f} MiB)")
    return removed


def compressed_member(path: Path) -> str | None:
    """The first member of the zip file ``path`` stored compressed, if any. ``torch.save`` stores every
    record uncompressed, so a compressed one is a file made by hand, and may be a zip bomb (a few MB
    that inflate to many GB while torch reads it): refused before ``torch.load`` reads a byte of it.
    None also for a file that is no zip (torch's legacy format; torch.load judges it)."""
    try:
        with zipfile.ZipFile(path) as z:
            return next((i.filename for i in z.infolist() if i.compress_type != zipfile.ZIP_STORED), None)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return None


def refused_global(e: BaseException) -> str | None:
    """The object torch's restricted unpickler refused ("... unsupported GLOBAL posix.system ..."),
    if that is why it failed; its advice in the line before, to load the file with
    weights_only=False, is not passed on."""
    return next((line.strip() for line in str(e).splitlines()[1:] if "GLOBAL" in line), None)


def safe_torch_load(path: Path, what: str, pickled_hint: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, or a one-line :class:`UserError`
    ``"{path}: {what} ({why})"``; the one way vivi reads a torch file.

    Refused before torch reads a byte: an empty file (a full disk, a crash before the data reached
    the disk) and a compressed record (a zip bomb, see :func:`compressed_member`). Refused by
    torch's restricted unpickler: pickled objects (code), named; its advice to load the file with
    ``weights_only=False`` is not passed on; ``pickled_hint`` is said instead, after the reason.
    """
    try:
        why = _refused_unread(path)
        if why is None:
            with warnings.catch_warnings():  # torch's note on the pickle protocol adds nothing here
                warnings.simplefilter("ignore", UserWarning)
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = refused_global(e)
        why = f"it holds pickled objects, not only tensors: {refused}; vivi never loads those{pickled_hint}" if (
            refused) else _unreadable(e)  # fmt: skip
    except Exception as e:  # a cut file raises RuntimeError, random bytes others: all mean the same to the user
        why = _unreadable(e)
    raise UserError(f"{path}: {what} ({why})") from None


def _refused_unread(path: Path) -> str | None:
    if path.stat().st_size == 0:
        return "an empty file, 0 bytes"
    if member := compressed_member(path):
        return f"record {member} is compressed, which torch.save never does; refused unread"
    return None


def _unreadable(e: BaseException) -> str:
    """torch's first sentence only: the next ones ("This is an internal miniz error. If you are seeing
    this error, there is a high likelihood ...") were cut mid-sentence and say what this line says."""
    return f"unreadable, cut short or not written by torch.save: {first_line(e).split('. ')[0][:160]}"


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load tensors and plain containers only: a checkpoint is never unpickled as code."""
    state = safe_torch_load(path, "corrupt or unreadable checkpoint")
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise UserError(f"{path}: not a vivi checkpoint (missing model/step)")
    return state


CORRUPT_SUFFIX = ".corrupt"


def load_resumable(ckpts: list[Path], main: bool = True) -> tuple[Path, dict[str, Any]]:
    """The newest of ``ckpts`` (oldest first) that loads, and its state.

    A checkpoint cut short or of zero bytes (a full disk, a node that crashed before the file reached
    its disk) stopped every resume with "corrupt or unreadable checkpoint", although the previous one
    was good. Each unreadable one is skipped with a warning and, by rank 0 (``main``), renamed to
    ``step_N.pt.corrupt``: kept for a look, but out of the list, so the resumed run's pruning of old
    checkpoints cannot delete the good ones and keep the bad. Every rank reads the same files and so
    picks the same one (a file rank 0 has renamed is unreadable to the others too). None readable: a
    :class:`JobError` (every rank meets it alike) naming the newest and its reason; nothing is renamed.
    """
    unreadable: list[tuple[Path, UserError]] = []
    for path in reversed(ckpts):
        try:
            state = load_checkpoint(path)
        except UserError as e:
            unreadable.append((path, e))
            continue
        for bad, e in unreadable:
            if main:
                try:
                    bad.replace(bad.with_name(bad.name + CORRUPT_SUFFIX))
                except OSError:
                    pass
            warn(f"{e}; skipped (kept as {bad.name}{CORRUPT_SUFFIX}), resuming from the previous good one, {path}")
        return path, state
    more = f" (and the {len(ckpts) - 1} older one{'s' if len(ckpts) > 2 else ''} too)" if len(ckpts) > 1 else ""
    raise JobError(f"{unreadable[0][1]}{more}; no checkpoint to resume from: move {ckpts[0].parent} away to "
                    "start afresh")


def load_run_model(run: Path) -> tuple[nn.Module, RunConfig]:
    """The whole trained network of a run (heads and pooling included), from its newest checkpoint;
    ``run`` may also be one of its checkpoints, ``RUN/checkpoints/step_N.pt``, to take that one."""
    chosen = run if run.is_file() else None
    run = run.parent.parent if chosen else run
    config = run / "config.json"
    if not config.is_file():
        raise UserError(f"{run}: not a run folder (no config.json)")
    try:
        cfg = from_dict(json.loads(config.read_text()))
    except (ValueError, TypeError, KeyError) as e:  # a damaged or hand-edited file: a traceback before
        raise UserError(f"{config}: not a vivi run config ({first_line(e)})") from e
    ckpts = [chosen] if chosen else list_checkpoints(run)
    if not ckpts:
        raise UserError(f"{run}: no checkpoint yet (checkpoints/step_*.pt)")
    from vivi.models import build_model

    model = build_model(cfg)
    try:
        model.load_state_dict(load_checkpoint(ckpts[-1])["model"])
    except RuntimeError as e:  # the config was changed after training (pooling, sizes): the weights do not fit
        raise UserError(f"{ckpts[-1]}: does not fit the model {config} describes ({detail_line(e)}); was config.json "
                        "edited after training?") from e
    return model.eval(), cfg
