"""Results and records written whole or not at all.

A run or an evaluation can be killed at any moment; a half-written JSON file would then stop
the next resume with a parse error and lose what it held. Every such file is written beside
its place and renamed over it (atomic on one filesystem).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


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
