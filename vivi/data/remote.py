"""Ingested folders in object stores: paths that are URLs (``s3://``, ``gs://``, ``https://``, any
fsspec URL) are read through fsspec, local paths with plain ``open``.

Training reads one byte span per video (see :mod:`vivi.data.batches`): :func:`read_range` asks for
exactly those bytes, one ranged GET (s3fs, gcsfs and http implement ``cat_file`` so), with no
open file to hold, no size lookup per shard and no read-ahead block. URLs are kept as strings and
joined as strings (``pathlib`` would fold ``s3://`` into ``s3:/``).
Backends raise their own exception types (botocore, aiohttp, google-auth), so every failure of a
remote read becomes one :class:`UserError` line naming the URL and the reason.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from vivi.errors import UserError

LOCAL_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, tarfile.TarError)


def is_url(path: str | Path) -> bool:
    """A URL for fsspec (``scheme://...``); anything else is a local path."""
    return "://" in str(path)


def join(base: str | Path, relative: str) -> str:
    """``base/relative``; a URL stays a URL, a local path becomes absolute."""
    if is_url(base):
        return f"{str(base).rstrip('/')}/{relative}"
    return str((Path(base) / relative).resolve())


def read_failed(path: str, error: Exception) -> bool:
    """Whether ``error`` means "could not read ``path``": for a URL anything its backend raises
    (botocore, aiohttp and google-auth each have their own types) except what only a bug raises;
    for a local file the OS and format errors."""
    if is_url(path):
        return not isinstance(error, (TypeError, AttributeError, NameError, AssertionError))
    return isinstance(error, LOCAL_ERRORS)


def reason(error: BaseException) -> str:
    """One line about an exception: its type and the first line of its message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _filesystem(url: str) -> tuple[Any, str]:
    """fsspec's file system and path for ``url``; a missing backend names the package to install."""
    import fsspec.core

    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:
        missing = getattr(e.__cause__, "name", None) or getattr(e, "name", None) or "the fsspec backend"
        scheme = url.split("://", 1)[0]
        raise UserError(f"{url}: reading {scheme}:// needs `pip install {missing}` ({e})") from None
    except Exception as e:  # "Protocol not known: xyz", or a backend refusing its settings
        if not read_failed(url, e):
            raise
        raise UserError(f"{url}: {reason(e)}") from None


def open_file(path: str) -> BinaryIO:
    """``path`` opened for a sequential binary read (a URL with fsspec's read-ahead)."""
    if not is_url(path):
        return open(path, "rb")  # noqa: SIM115 - the caller closes it
    fs, inner = _filesystem(path)
    return fs.open(inner, "rb")


def read_chunks(path: str, size: int = 1 << 24) -> Iterator[bytes] | None:
    """The file as consecutive chunks of up to ``size`` bytes, each read when it is consumed (an
    index of millions of videos is GBs, and every process of a run reads it); None when it does not
    exist. A URL is read as ranged requests of one chunk each (one request where the server gives no
    size). Any other failure (no credentials, no such bucket, the network), also one mid-stream, is a
    one-line error naming the file."""
    if not is_url(path):
        if not Path(path).is_file():
            return None
        return _guarded(path, _local_chunks(path, size))
    fs, inner = _filesystem(path)
    try:
        total = fs.size(inner)
    except FileNotFoundError as e:
        if not _absent(e):
            raise _cannot_read(path, e.__cause__) from None
        return None
    except Exception as e:
        raise _cannot_read(path, e) from None
    if total is None:
        return _guarded(path, (fs.cat_file(inner) for _ in range(1)))
    ranges = ((start, min(start + size, total)) for start in range(0, total, size))
    return _guarded(path, (_ranged(fs, inner, path, start, end) for start, end in ranges))


def _absent(error: FileNotFoundError) -> bool:
    """Whether a backend's FileNotFoundError means that the file is not there. fsspec's http(s) backend
    raises it for any failure of its HEAD and GET (a 500, a refused or dropped connection), with the real
    failure as its cause, and a server that was down was reported as a folder never ingested: only a cause
    that is a 404/410 response (or none, or another backend's own) means "not there"."""
    cause = error.__cause__
    if cause is None:
        return True
    status = getattr(cause, "status", None)
    if isinstance(status, int):
        return status in (404, 410)
    from_http = type(cause).__module__.partition(".")[0] == "aiohttp"
    return not from_http and not (isinstance(cause, OSError) and not isinstance(cause, FileNotFoundError))


def _local_chunks(path: str, size: int) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from iter(lambda: f.read(size), b"")


def _guarded(path: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """``chunks`` with a failure to read ``path`` made one line."""
    while True:
        try:
            chunk = next(chunks)
        except StopIteration:
            return
        except UserError:  # already one line (a server ignoring ranges)
            raise
        except Exception as e:
            raise _cannot_read(path, e) from None
        yield chunk


def _cannot_read(path: str, error: Exception) -> UserError:
    """The one line for a failure to read ``path``: no credentials, no such bucket, the network
    (every backend has its own types). What only a bug raises is raised again as it is."""
    if not read_failed(path, error):
        raise error
    return UserError(f"{path}: cannot read ({reason(error)})")


def read_range(url: str, start: int, end: int) -> bytes:
    """Bytes ``start:end`` of the file at ``url``: one ranged request of just those bytes. fsspec
    keeps one file system instance per process (a forked loader worker makes its own)."""
    fs, inner = _filesystem(url)
    return _ranged(fs, inner, url, start, end)


def _ranged(fs: Any, inner: str, url: str, start: int, end: int) -> bytes:
    """``fs.cat_file`` of bytes ``start:end``, refusing a whole file in their place: a web server that
    ignores range requests (Python's http.server) answers each with the whole file, which fsspec returns as
    is, so a video's span was reported as an index that does not match its shards (re-ingest), and an index
    read in several ranges as the same records again and again."""
    data = fs.cat_file(inner, start=start, end=end)
    if len(data) > end - start:
        raise UserError(f"{url}: asked for bytes {start}-{end}, the server sent {len(data)} (it ignores range "
                        "requests); serve the folder with a server that allows them (nginx, Apache, a bucket)")
    return data


def url_info(url: str) -> dict[str, Any]:
    """What the store says of the file at ``url`` (size, ETag, generation, modification time, as its
    fsspec backend names them)."""
    fs, inner = _filesystem(url)
    return fs.info(inner)
