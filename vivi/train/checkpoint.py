"""Checkpoints: atomic writes, safe loads (``weights_only=True``), newest-first discovery."""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vivi.config import RunConfig, from_dict
from vivi.errors import UserError, detail_line, first_line

_NAME = re.compile(r"step_(\d+)\.pt$")


def checkpoint_dir(run: Path) -> Path:
    return run / "checkpoints"


def checkpoint_path(run: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives (every rank can name it; rank 0 writes it)."""
    return checkpoint_dir(run) / f"step_{step:08d}.pt"


def save_checkpoint(run: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``checkpoints/step_<step>.pt`` via a temporary file; keep the newest ``keep``."""
    path = checkpoint_path(run, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    for old in list_checkpoints(run)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(run: Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    folder = checkpoint_dir(run)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.search(p.name)]
    return sorted(found, key=lambda p: int(_NAME.search(p.name).group(1)))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load tensors and plain containers only: a checkpoint is never unpickled as code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        raise UserError(f"{path}: corrupt or unreadable checkpoint ({first_line(e)[:160]})") from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise UserError(f"{path}: not a vivi checkpoint (missing model/step)")
    return state


def load_run_model(run: Path) -> tuple[nn.Module, RunConfig]:
    """The whole trained network of a run (heads and pooling included), from its newest checkpoint."""
    config = run / "config.json"
    if not config.is_file():
        raise UserError(f"{run}: not a run folder (no config.json)")
    try:
        cfg = from_dict(json.loads(config.read_text()))
    except (ValueError, TypeError, KeyError) as e:  # a damaged or hand-edited file: a traceback before
        raise UserError(f"{config}: not a vivi run config ({first_line(e)})") from e
    ckpts = list_checkpoints(run)
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
