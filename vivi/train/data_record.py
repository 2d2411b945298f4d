"""What a run trains on, written beside its config (``RUN/data.json``) and checked on resume.

Every batch is a function of (seed, step) over the table of usable videos (or images), so a
resume is exact only on the same table. ``--data`` is not part of the config: without this
record a run stopped and resumed on another folder, or on one that gained videos meanwhile,
would go on silently as if it were the same run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from vivi.data.batches import VideoTable
from vivi.data.images import ImageFolder, unreadable_images
from vivi.atomic import write_json_atomic
from vivi.errors import JobError, UserError, warn

NAME = "data.json"


def data_record(
    data: list[Path | str], source: VideoTable | ImageFolder, labelled: ImageFolder | None, labelled_spec: str = "",
) -> dict:
    """Sources as given, sizes, and a fingerprint of the training table (and of the labelled images,
    with their ``--labelled`` spec, so a refused resume names that folder too)."""
    record: dict[str, Any] = {"sources": [str(d) for d in data], **_describe(source)}
    if labelled is not None:
        record["labelled"] = {"sources": [labelled_spec], **_describe(labelled)} if labelled_spec else _describe(labelled)
    return record


def check_same_data(run: Path, record: dict, main: bool = True) -> None:
    """On resume: refuse training data (or labelled images) other than the run's, naming both."""
    path = run / NAME
    if not path.is_file():
        if main:
            warn(f"{run}: no record of the data it was trained on (a run of an older vivi); resuming on "
                 f"{', '.join(record['sources'])} unchecked")  # fmt: skip
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e}); restore it or use a new --out folder") from None
    for what, was, now in (("training data", old, record), ("labelled images", old.get("labelled"), record.get("labelled"))):
        if (was or {}).get("fingerprint") != (now or {}).get("fingerprint"):
            raise JobError(
                f"{run}: was trained on other {what}: {_text(was)} then, {_text(now)} now; a resume needs the same "
                f"data (each batch is a function of the step over it): pass that data or use a new --out folder"
                f"{_older_order(was, now)}"
            )


def write_data_record(run: Path, record: dict) -> None:
    write_json_atomic(run / NAME, record)


def _text(d: dict | None) -> str:
    if not d:
        return "none"
    where = f"{', '.join(d['sources'])} " if d.get("sources") else ""
    broken = f", {d['unreadable']} unreadable" if d.get("unreadable") else ""
    return f"{where}({d.get('items', '?')} {d.get('kind', 'items')}{broken}, fingerprint {d.get('fingerprint', '?')})"


def _older_order(was: dict | None, now: dict | None) -> str:
    """The reason a run made before videos were ordered by key (its ``data.json`` has no ``order``)
    cannot resume even on the same data: its batches were drawn from the videos in index order."""
    if was and now and was.get("kind") == "videos" and "order" not in was and was.get("items") == now.get("items"):
        return ("; if it is the same data: this run was made by a vivi that ordered the videos as the index lists "
                "them (now by key), so its batches cannot be continued; start it afresh in a new --out folder")
    return ""


def _describe(source: VideoTable | ImageFolder) -> dict:
    h = hashlib.blake2b(digest_size=8)
    if isinstance(source, VideoTable):
        for video in range(len(source)):  # the key and the shape of each video: what the sampler draws from
            h.update(f"{source.key(video)}:{source.shot_lengths(video)};".encode())
        # "order": the videos are ordered by key (a record without it was made when they came in index order)
        return {"kind": "videos", "items": len(source), "order": "key", "fingerprint": h.hexdigest()}
    for p, label in zip(source.paths, source.labels.tolist()):  # every file: a broken one still takes its place
        h.update(f"{os.path.relpath(p, source.root)}:{label};".encode())
    h.update(repr(list(source.classes)).encode())
    unreadable = len(unreadable_images(source))  # not items: each is replaced by the next readable image
    return {"kind": "images", "items": len(source.paths) - unreadable, "unreadable": unreadable,
            "fingerprint": h.hexdigest()}
