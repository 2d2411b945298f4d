"""Listing a user's folder the same way for videos and images.

Users' data often lives behind symbolic links (a dataset folder linked into a project) and
next to operating-system clutter (``.DS_Store``, ``._name`` AppleDouble files, ``.Trashes``).
``Path.rglob`` neither follows linked folders (their files vanish without a word) nor skips
hidden entries, so every listing goes through :func:`walk_files`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from vivi.errors import warn

# Clutter that is never data: left out of the "ignored files" notes.
JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini", "icon\r"})
CLUTTER_FOLDERS = frozenset({"__MACOSX"})  # unzipping a macOS archive elsewhere: ._name copies only


def is_hidden(name: str) -> bool:
    """A hidden entry (``.DS_Store``, ``._name``, ``.ipynb_checkpoints``) or a ``__MACOSX`` folder:
    searched nowhere, taken for a class nowhere."""
    return name.startswith(".") or name in CLUTTER_FOLDERS


def walk_files(root: Path) -> list[Path]:
    """Every non-hidden file under ``root`` at any depth, sorted. Symlinked folders are followed,
    each real folder once (a link loop ends); broken links are kept so callers can report them.
    A folder that cannot be read (no permission, a vanished mount) is named in a warning: its
    files used to be left out without a word."""
    return walk_files_and_hidden(root)[0]


def walk_files_and_hidden(root: Path) -> tuple[list[Path], list[Path]]:
    """:func:`walk_files`, and the hidden files it left out of the folders it searched (sorted;
    hidden folders are not searched), so a caller can say how many it skipped."""
    seen: set[str] = set()
    found: list[Path] = []
    hidden: list[Path] = []
    unreadable: list[OSError] = []
    for folder, subfolders, files in os.walk(root, followlinks=True, onerror=unreadable.append):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders[:] = [d for d in subfolders if not is_hidden(d)]
        found += [Path(folder) / f for f in files if not is_hidden(f)]
        hidden += [Path(folder) / f for f in files if is_hidden(f)]
    if unreadable:
        first = unreadable[0]
        more = f" and {len(unreadable) - 1} more" if len(unreadable) > 1 else ""
        reason = first.strerror or first.__class__.__name__
        warn(f"{root}: cannot read the folder {first.filename} ({reason}){more}; the files in it are left out")
    return sorted(found), sorted(hidden)


def ignored_note(files: Iterable[Path], kind: str) -> str | None:
    """``ignored 3 files that are not <kind>s (.txt: 2, .heic: 1)``, or None when there are none."""
    counts = Counter(p.suffix.lower() or "(no extension)" for p in files if p.name.lower() not in JUNK_NAMES)
    if not counts:
        return None
    by_ext = ", ".join(f"{ext}: {n}" for ext, n in counts.most_common(6))
    total = sum(counts.values())
    article = "an" if kind[0] in "aeiou" else "a"
    what = f"{total} files that are not {kind}s" if total != 1 else f"1 file that is not {article} {kind}"
    return f"ignored {what} ({by_ext})"


def output_dir(path: Path, create: bool = True) -> Path:
    """``path`` created if needed (or, not ``create``, checked to be creatable: a command that
    fails on its input later leaves no empty folder), or a one-line error saying why it cannot
    hold output."""
    from vivi.errors import UserError

    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is not a folder; choose another output folder")
    if not create:
        existing = next(p for p in [path, *path.absolute().parents] if p.exists())
        if not existing.is_dir():
            raise UserError(f"{path}: cannot create the output folder ({existing} is not a folder)")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(f"{path}: cannot create the output folder ({existing} is not writable)")
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{path}: cannot create the output folder ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{path}: the output folder is not writable")
    return path


def input_dir(path: Path) -> Path:
    """``path`` if it is a folder, else a one-line error that tells a missing path from a file
    (``imagefolder:photo.jpg`` is a file where a folder was meant, not a typo in the name)."""
    from vivi.errors import UserError

    if not path.is_dir():
        raise UserError(f"{path}: {'exists but is not a directory' if path.exists() else 'no such directory'}")
    return path


def file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a file, links followed; None for a broken link (reading reports it). Two
    paths with one id are one file (a symlink, a hard link): evaluation splits are checked with it,
    as a test image linked to a train image would be scored on what the probe was fitted to."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)
