"""The training table kept in the run folder (``RUN/video_table.npz``), so a restart skips the index.

Building the :class:`~vivi.data.batches.VideoTable` parses every record of every ``index.jsonl``:
~7 s per 100k videos on one core (benchmarks/results/index-read), so minutes for YouTube-8M's
millions, paid again by every process at every restart of a pre-empted job. The table is a
function of the index files and the data settings only, so it is saved once and read back
(~270 bytes a video, plain arrays) while neither has changed.

"Unchanged" is judged as ``make`` and ``rsync`` judge it, plus the file's last MiB: an index only
grows by appending, so any new video changes its size and its tail. A URL is cached only where its
store gives a version (ETag, generation, modification time) beside the size; otherwise it is read
every time. A cache that does not match is ignored and replaced; it can always be deleted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from vivi.config import DataConfig
from vivi.data.batches import VideoTable
from vivi.data.remote import is_url, join, read_range, url_info
from vivi.data.shards import INDEX_NAME
from vivi.errors import warn

NAME = "video_table.npz"
VERSION = 2  # of the table's meaning (2: videos ordered by key): bump when training_videos keeps or orders videos differently
_TAIL = 1 << 20
_ARRAYS = ("keys", "shot_starts", "shot_frames", "spans")
# settings that do not change which videos are usable or where they lie
_RUNTIME = ("workers", "cache_mb", "labelled", "labelled_fraction", "labelled_batch")
# what object stores call the version of a file, in fsspec's info(): s3fs ("ETag", "LastModified"), gcsfs
# ("generation", "md5Hash", "updated"), and http(s), whose info() holds the response headers under their own
# names ("ETag", "Last-Modified", "Content-MD5", "Digest"): a web server that sends only Last-Modified, as
# plain file servers do, was never cached
_VERSION_FIELDS = ("ETag", "etag", "generation", "md5Hash", "mtime", "LastModified", "last_modified", "updated",
                   "Last-Modified", "Content-MD5", "Digest")


def cache_key(data: list[Path | str], cfg: DataConfig) -> str | None:
    """A digest of everything the table depends on; None when a source cannot be stamped."""
    stamps = [_stamp(join(d, INDEX_NAME)) for d in data]
    if any(s is None for s in stamps):
        return None
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _RUNTIME}
    text = json.dumps({"version": VERSION, "sources": [str(d) for d in data], "index": stamps, "data": settings},
                      sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def load_table(run: Path, key: str | None) -> VideoTable | None:
    """The table saved in ``run`` under ``key``; None when there is none, it is another's, or unreadable."""
    path = run / NAME
    if key is None or not path.is_file():
        return None
    try:
        if not _sizes_fit(path):
            return None
        with np.load(path, allow_pickle=False) as saved:  # plain arrays only: nothing in it runs
            meta = json.loads(str(saved["meta"]))
            if meta.get("key") != key:
                return None
            return VideoTable(**{name: saved[name] for name in _ARRAYS}, shards=list(meta["shards"]))
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, MemoryError, RecursionError):
        return None  # cut, damaged, foreign: build anew


def _sizes_fit(path: Path) -> bool:
    """Whether every array in the ``.npz`` declares no more bytes than its member holds, and every member
    is stored uncompressed (as ``np.savez`` writes it) within the file's size. ``np.load`` allocates an
    array of the size its header declares before reading it, so a crafted file of a few bytes declaring
    ``shape=(10**12,)`` (or a zip bomb) made a huge allocation; checked here from the headers alone."""
    fmt = np.lib.format
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        if any(i.compress_type != zipfile.ZIP_STORED for i in infos) or sum(i.file_size for i in infos) > path.stat().st_size:
            return False
        for info in infos:
            with z.open(info) as f:
                version = fmt.read_magic(f)
                read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
                if read is None:
                    return False
                shape, _, dtype = read(f, max_header_size=10_000)
                if math.prod(shape) * dtype.itemsize > info.file_size:
                    return False
    return True


def save_table(run: Path, key: str | None, table: VideoTable) -> None:
    """Write the table under ``key`` beside its place and rename it in: a reader sees a whole file.
    A table that cannot be written (a full disk) is a warning: it only saves time, training goes on."""
    if key is None:
        return
    path = run / NAME
    tmp = path.with_name(f".{NAME}.tmp{os.getpid()}")
    meta = json.dumps({"key": key, "shards": table.shards, "videos": len(table)})
    try:
        with tmp.open("wb") as f:
            np.savez(f, meta=np.array(meta), **{name: getattr(table, name) for name in _ARRAYS})
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        warn(f"{path}: cannot save the training table ({e.strerror or e}); a restart will read the index again")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _stamp(index: str) -> dict[str, Any] | None:
    """Size, version and a digest of the last MiB of one index file; None where that is not knowable."""
    if not is_url(index):
        try:
            st = os.stat(index)
            with open(index, "rb") as f:
                f.seek(max(0, st.st_size - _TAIL))
                tail = f.read()
        except OSError:
            return None
        return {"path": os.path.abspath(index), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino,
                "tail": hashlib.blake2b(tail, digest_size=16).hexdigest()}
    try:
        info = url_info(index)
        size = int(info["size"])
        version = {k: str(info[k]) for k in _VERSION_FIELDS if info.get(k) is not None}
        if not version:
            return None
        tail = read_range(index, max(0, size - _TAIL), size)
    except Exception:  # noqa: BLE001 - no stamp means no cache: the index is read as before
        return None
    return {"path": index, "size": size, **version, "tail": hashlib.blake2b(tail, digest_size=16).hexdigest()}
