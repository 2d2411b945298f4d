"""What produced a number: vivi's version and git commit, the libraries' versions, the threads.

A retrained model can differ from a published one by more than a seed's spread after a change to
a preset or a loss, or at another torch (a kernel) or thread count (a reduction's order: on CPU
one thread and two give the same first step and, after 20 steps at lr 0.1, other weights). The
config and the data fingerprint say what was asked for; this says which code did it. Written with
every study summary, every evaluation result and, once per start of a run, ``RUN/provenance.jsonl``.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path
from typing import Any


@functools.lru_cache(maxsize=1)
def _code() -> dict[str, Any]:
    """vivi's version, and its git commit and whether the tree had uncommitted changes (None where
    vivi does not run from a git checkout of its own: an installed copy inside another repository,
    e.g. a venv in a checkout, is not that repository's commit)."""
    import vivi

    package = Path(vivi.__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=package, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD") if git("ls-files", "--error-unmatch", "__init__.py") is not None else None
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"vivi": vivi.__version__, "git_commit": commit, "git_dirty": None if status is None else bool(status)}


def provenance() -> dict[str, Any]:
    """The code, torch, torchvision and Python versions, and torch's thread count now."""
    import torch
    import torchvision

    return {**_code(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads()}


RUN_LOG = "provenance.jsonl"


def record_start(run: Path, step: int, processes: int, device: str) -> None:
    """Append one line to ``RUN/provenance.jsonl`` for this start of a run (a resumed run may go on
    under other code, torch or thread count: each start says from which step it did)."""
    import json
    import socket
    import time

    line = {"step": step, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(),
            "processes": processes, "device": device, **provenance()}
    with (run / RUN_LOG).open("a") as f:
        f.write(json.dumps(line) + "\n")
