"""WebDataset shards and index.jsonl: writing them crash-safely and reading them back.

An ingest output folder OUT holds ``OUT/shards/shard-NNNNNN.tar`` and ``OUT/index.jsonl``.
One shard sample per video: ``<key>.json`` (its index record) and
``<key>.s<shot:03d>.f<idx:03d>.jpg``. Shards are written as ``*.tar.tmp`` and renamed when
complete; the index records of a shard's videos are appended (one write, fsynced) only after
the rename; each sample is flushed to the OS as soon as it is written. A killed run (SIGKILL, power
loss) therefore leaves at worst a ``.tar.tmp`` or a renamed shard whose records did not all reach
the index. On resume :func:`recover` salvages a ``.tar.tmp`` (:func:`salvage`: its whole samples
are kept as a complete shard, the video cut short is decoded again; a tmp with no whole sample is
deleted), then copies the records missing from the index back from the shards' own ``.json``
members, so every video ends up exactly once.
Each index record carries ``"shard_span": [start, end]``, the tar byte range of its sample (headers
included), so a loader can read a video with one range request without scanning the shard first;
the ``.json`` copy inside the shard lacks it (it is written before its own size is known), and
:func:`recover` computes it from the shard's headers.
Workers spool a video's JPEGs to ``OUT/spool/<key>.jpgs`` while decoding it; the writer
copies them into the shard and deletes the file, and :func:`recover` deletes leftovers.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from pathlib import Path
from typing import BinaryIO, Union

from vivi.atomic import fsync_folder
from vivi.data.remote import is_url, join, open_file, read_chunks, read_failed, reason
from vivi.errors import UserError, warn

INDEX_NAME = "index.jsonl"
SHARDS_DIR = "shards"
SPOOL_DIR = "spool"  # JPEGs of videos in progress; only ever partial, emptied on every start
_SHARD_NAME = re.compile(r"shard-(\d+)\.tar")
_BLOCK = tarfile.BLOCKSIZE


def shard_name(number: int) -> str:
    return f"shard-{number:06d}.tar"


def image_name(key: str, shot: int, frame: int) -> str:
    """Shard member name of the ``frame``-th kept frame of the ``shot``-th shot of a video."""
    return f"{key}.s{shot:03d}.f{frame:03d}.jpg"


@dataclass
class SpooledImages:
    """A video's JPEGs in a spool file, appended as they were made, so a worker's memory does
    not grow with the video's length; the shard writer reads them back one at a time.
    Picklable (no open file): workers hand it to the main process."""

    path: str
    names: list[str] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)  # (offset, length) per name

    def sizes(self) -> list[int]:
        return [length for _, length in self.spans]

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        with open(self.path, "rb") as f:
            for name, (offset, length) in zip(self.names, self.spans, strict=True):
                f.seek(offset)
                yield name, f.read(length)

    def __len__(self) -> int:
        return len(self.names)

    def discard(self) -> None:
        Path(self.path).unlink(missing_ok=True)


class JpegSpool:
    """The writing side of a spool file (in the worker): :meth:`append` returns the span."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = open(path, "wb")
        self._offset = 0

    def append(self, data: bytes) -> tuple[int, int]:
        self._file.write(data)
        span = (self._offset, len(data))
        self._offset += len(data)
        return span

    def close(self) -> None:
        self._file.close()


Images = Union[list[tuple[str, bytes]], SpooledImages]


class ShardWriter:
    """Packs one sample per video into size-bounded tar shards, renaming each when complete.

    :meth:`add` and :meth:`close` return the records of the shards they completed: those are
    safe to append to the index now.
    """

    def __init__(self, shards_dir: Path, max_bytes: int, first_number: int) -> None:
        self._dir = shards_dir
        self._max_bytes = max_bytes
        self._number = first_number
        self._tar: tarfile.TarFile | None = None
        self._size = 0
        self._records: list[dict] = []

    def add(self, record: dict, images: Images) -> list[dict]:
        """Write one video's sample; sets ``record["shard"]`` and ``record["shard_span"]``. Returns
        the records of a shard this completed (when the video did not fit into the open one)."""
        record["shard"] = self._shard_path()
        sizes = images.sizes() if isinstance(images, SpooledImages) else [len(d) for _, d in images]
        size = _member_size(len(json.dumps(record))) + sum(_member_size(n) for n in sizes)
        done = []
        if self._records and self._size + size > self._max_bytes:
            done = self.close()
            record["shard"] = self._shard_path()
        if self._tar is None:
            self._open()
        start = self._tar.offset
        for name, data in chain([(f"{record['key']}.json", json.dumps(record).encode())], images):
            _add_member(self._tar, name, data)
            self._size += _member_size(len(data))
        record["shard_span"] = [start, self._tar.offset]  # what sample_spans reads from the headers
        self._records.append(record)
        self._tar.fileobj.flush()  # the sample reaches the OS whole: after a SIGKILL, salvage() keeps it
        return done

    def close(self) -> list[dict]:
        """Finish the open shard (if any): close, fsync, rename. Returns its records."""
        if self._tar is None:
            return []
        tmp = self._tmp_path()
        self._tar.close()
        _fsync_file(tmp)
        tmp.rename(tmp.with_suffix(""))
        fsync_folder(self._dir)
        records, self._records = self._records, []
        self._tar, self._size, self._number = None, 0, self._number + 1
        return records

    def _open(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._tar = tarfile.open(self._tmp_path(), "w", format=tarfile.USTAR_FORMAT)

    def _shard_path(self) -> str:
        return f"{SHARDS_DIR}/{shard_name(self._number)}"

    def _tmp_path(self) -> Path:
        return self._dir / f"{shard_name(self._number)}.tmp"


def append_records(index: Path, records: Iterable[dict]) -> None:
    """Append records with a single write and fsync, so a kill leaves all of them or none."""
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    if not data:
        return
    fd = os.open(index, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(index: Path) -> list[dict]:
    """Records of one index.jsonl; a torn last line (a write cut short) is ignored."""
    if not index.exists():
        return []
    return parse_records(index.read_bytes(), str(index))


def parse_records(data: bytes, index: str) -> list[dict]:
    """The records in the bytes of index.jsonl ``index``; a torn last line is ignored."""
    return list(iter_records([data], index))


def iter_records(chunks: Iterable[bytes], index: str, on_torn: Callable[[int], None] | None = None) -> Iterator[dict]:
    """The records of index.jsonl ``index``, given as its bytes in consecutive chunks (the whole
    file, or a stream of it), one at a time; a torn last line is ignored (``on_torn`` is told its
    length in bytes)."""
    pending: list[bytes] = []  # the pieces of a line that no chunk has ended yet (joined once)
    number = 0  # of the last line read
    for chunk in chunks:
        lines = chunk.split(b"\n")
        if pending:
            pending.append(lines[0])
            if len(lines) == 1:
                continue
            lines[0] = b"".join(pending)
        pending = [lines.pop()]  # the line the next chunk goes on with
        for line in lines:
            number += 1
            if line.strip():
                yield _record(line, number, index)
    rest = b"".join(pending)
    if rest.strip():  # unterminated, so it may be torn: skipped unless it is whole
        try:
            json.loads(rest)
        except (ValueError, RecursionError):
            if on_torn is not None:
                on_torn(len(rest))
            return
        yield _record(rest, number + 1, index)


def _record(line: bytes, number: int, index: str) -> dict:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested too deeply for the parser
        raise UserError(f"{index}: line {number} is not JSON") from None
    if not isinstance(record, dict):
        raise UserError(f"{index}: line {number} is JSON but not an object (one record per line, as `vivi ingest` writes)")
    return record


def read_index(outs: Iterable[str | Path]) -> list[dict]:
    """All records of one or several ingest outputs (local folders or URLs), with ``shard`` made
    an absolute path or a URL."""
    return list(iter_index(outs))


def iter_index(outs: Iterable[str | Path]) -> Iterator[dict]:
    """The records of :func:`read_index` one at a time, streamed from each index.jsonl, for a reader
    that keeps little of each: a million videos' index is GBs of bytes and tens of GB of Python
    objects, and under torchrun every process reads it."""
    for out in outs:
        index = join(out, INDEX_NAME)
        chunks = read_chunks(index)
        if chunks is None:
            hint = "; upload the whole ingest folder as is" if is_url(out) else ""
            raise UserError(f"{out}: no {INDEX_NAME} (run `vivi ingest` into it first{hint})")
        located: dict[str, str] = {}  # a shard as recorded -> its path, resolved once (a few syscalls each)
        for record in iter_records(chunks, index, partial(_torn_note, index, out)):
            if shard := record.get("shard"):
                if not (isinstance(shard, str) and shard in located):
                    located[shard] = _inside(out, shard, index)  # checked once per shard; raises for a non-string
                record["shard"] = located[shard]
            yield record


def _torn_note(index: str, out: str | Path, size: int) -> None:
    """A record cut short (a kill or a full disk during ingest's append) is a video that is left out:
    said, with the repair (`vivi ingest` finds the video in its shard and writes its record again)."""
    fix = "" if is_url(out) else f"; `vivi ingest` into {out} restores it from its shard"
    warn(f"{index}: its last line is cut short ({size} bytes, a write that did not finish): that video is left out{fix}")


def _inside(out: str | Path, shard: object, index: str) -> str:
    """``out/shard`` for a record's shard, which ingest writes as ``shards/shard-NNNNNN.tar``. An index
    from someone else could name any file (``/dev/stdin``, a FIFO: a read that never ends; ``../..``;
    a URL of their own, read with the user's credentials): only a relative path inside ``out`` is read."""
    if not isinstance(shard, str) or is_url(shard) or Path(shard).is_absolute() or ".." in Path(shard).parts:
        raise UserError(f"{index}: a record's shard is {str(shard)[:100]!r}, expected a path inside its folder "
                        f"such as {SHARDS_DIR}/{shard_name(0)} (as `vivi ingest` writes it); not read")  # fmt: skip
    return join(out, shard)


def sample_spans(shard: str) -> dict[str, tuple[int, int]]:
    """Byte range of each sample (all members sharing a key) in a tar shard, from its headers only."""
    spans: dict[str, tuple[int, int]] = {}
    try:
        with open_file(shard) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for member in tar:
                key = member.name.split(".", 1)[0]
                end = member.offset_data + -(-member.size // _BLOCK) * _BLOCK
                spans[key] = (spans[key][0] if key in spans else member.offset, end)
    except Exception as e:
        if isinstance(e, UserError) or not read_failed(shard, e):
            raise
        raise UserError(f"{shard}: unreadable shard ({reason(e)}); re-run `vivi ingest` on its folder") from None
    return spans


def shard_records(shard: Path) -> Iterator[dict]:
    """The index records stored in a shard's ``<key>.json`` members."""
    with tarfile.open(shard) as tar:
        for member in tar:
            if member.name.endswith(".json"):
                yield json.load(tar.extractfile(member))


def recover(out: Path) -> tuple[list[dict], int]:
    """Make OUT consistent after a kill; returns the index records and the next shard number.

    Salvages ``*.tar.tmp`` (see :func:`salvage`), deletes spool files, drops a torn last index line, and
    appends to the index the records of complete shards that are missing from it (a salvaged shard, or a
    kill between rename and index append).
    """
    index, shards_dir = out / INDEX_NAME, out / SHARDS_DIR
    for tmp in sorted(shards_dir.glob("*.tar.tmp")):
        salvage(tmp)
    for spooled in (out / SPOOL_DIR).glob("*"):
        spooled.unlink()
    records = read_records(index)
    _rewrite_if_torn(index, records)
    shards = sorted(shards_dir.glob("shard-*.tar"))
    referenced = [r["shard"] for r in records if r.get("shard")]
    indexed = set(referenced)
    suspects = [s for s in shards if f"{SHARDS_DIR}/{s.name}" not in indexed]
    if referenced:  # the last shard whose records were being appended when the run died
        suspects.append(out / referenced[-1])
    keys = {r["key"] for r in records}
    missing = [r for s in suspects if s.exists() for r in _with_spans(s) if r["key"] not in keys]
    append_records(index, missing)
    numbers = [int(m.group(1)) for s in shards if (m := _SHARD_NAME.fullmatch(s.name))]
    return records + missing, max(numbers, default=-1) + 1


def salvage(tmp: Path) -> int:
    """Turn a shard that a kill left as ``*.tar.tmp`` into a complete shard of the videos it holds whole.

    A shard's records reach the index only when it closes, so the open one can hold hours of decoding:
    keep it, do not delete it. Samples are written one after another, so the whole ones are a prefix of
    the file; it is cut after the last one, ended as tarfile ends an archive, and renamed to the name its
    records give (the index records are then copied from it by :func:`recover`). A file with no whole
    sample is deleted. Repeating this after a kill during it gives the same shard. Returns the videos kept.
    """
    final = tmp.with_suffix("")  # shard-NNNNNN.tar
    keys: list[str] = []
    if not final.exists():  # a renamed shard is complete: never replace it with a tmp of the same number
        with open(tmp, "rb+") as f:
            keys, end = _whole_prefix(f, f"{SHARDS_DIR}/{final.name}")
            if keys:
                _end_archive(f, end)
                f.flush()
                os.fsync(f.fileno())
    if not keys:
        tmp.unlink()
        return 0
    tmp.rename(final)
    fsync_folder(tmp.parent)
    videos = f"{len(keys)} video{'s' if len(keys) != 1 else ''}"
    warn(f"{tmp}: kept {videos} complete in this shard cut short by a kill, as {final.name}; "
         "later videos are decoded again")  # fmt: skip
    return len(keys)


@dataclass(frozen=True)
class _Member:
    """A regular tar member whose data lies wholly in the file."""

    name: str
    data: int  # offset of its data
    size: int

    @property
    def end(self) -> int:
        """Where the next header starts (the data padded to a block)."""
        return self.data + -(-self.size // _BLOCK) * _BLOCK


@dataclass
class _OpenSample:
    """A sample being checked: its key and the frames its record lists that have not been seen whole."""

    key: str
    missing: set[str]


def _whole_prefix(f: BinaryIO, shard: str) -> tuple[list[str], int]:
    """Keys of the whole samples at the start of a cut-short shard, and the offset where the last one ends.

    A sample is whole when its ``.json`` record parses, names this shard, and every frame it lists follows
    with all its bytes, as a whole JPEG; the scan stops at the first member that breaks this.
    """
    keys: list[str] = []
    end = 0
    sample: _OpenSample | None = None
    for member in _members(f):
        if sample is None or not sample.missing:  # the previous sample is whole: a record comes next
            sample = _sample_record(f, member, shard)
            if sample is None:
                break
        elif member.name in sample.missing and _whole_jpeg(f, member):
            sample.missing.remove(member.name)
        else:
            break
        if not sample.missing:
            keys.append(sample.key)
            end = member.end
    return keys, end


def _members(f: BinaryIO) -> Iterator[_Member]:
    """The members of a tar file in order, up to the first that is not whole: a zero block (the archive's
    end, or a tail that a power loss left as zeros), a torn or damaged header, data running past the end."""
    size = os.fstat(f.fileno()).st_size
    offset = 0
    while offset + _BLOCK <= size:
        f.seek(offset)
        try:
            info = tarfile.TarInfo.frombuf(f.read(_BLOCK), tarfile.ENCODING, "surrogateescape")
        except tarfile.HeaderError:
            return
        member = _Member(info.name, offset + _BLOCK, info.size)
        if not info.isreg() or member.data + member.size > size:
            return
        yield member
        offset = member.end


def _sample_record(f: BinaryIO, member: _Member, shard: str) -> _OpenSample | None:
    """The sample a ``<key>.json`` member starts, with the frame names its record lists; None when the
    member is something else or its record is not whole (cut, zeroed, or not this shard's)."""
    key, _, ext = member.name.partition(".")
    if ext != "json":
        return None
    f.seek(member.data)
    try:
        record = json.loads(f.read(member.size))
        if not isinstance(record, dict) or record.get("key") != key or record.get("shard") != shard:
            return None
        names = {image_name(key, s, i) for s, shot in enumerate(record["shots"]) for i in range(len(shot["frames"]))}
    except (ValueError, KeyError, TypeError):
        return None
    return _OpenSample(key, names)


def _whole_jpeg(f: BinaryIO, member: _Member) -> bool:
    """A JPEG starts with SOI (FF D8) and ends with EOI (FF D9); a tail a power loss zeroed does not."""
    if member.size < 4:
        return False
    f.seek(member.data)
    head = f.read(2)
    f.seek(member.data + member.size - 2)
    return head == b"\xff\xd8" and f.read(2) == b"\xff\xd9"


def _end_archive(f: BinaryIO, end: int) -> None:
    """Cut the file at ``end`` and end it as ``TarFile.close`` does: two zero blocks, then zeros up to a
    multiple of ``tarfile.RECORDSIZE``, so tarfile, webdataset and :func:`sample_spans` read it as whole."""
    closed = end + 2 * _BLOCK
    f.seek(end)
    f.write(bytes(2 * _BLOCK + -closed % tarfile.RECORDSIZE))
    f.truncate()


def _with_spans(shard: Path) -> list[dict]:
    """A shard's own records with the ``shard_span`` their ``.json`` copies could not hold."""
    spans = sample_spans(str(shard))
    return [{**r, "shard_span": list(spans[r["key"]])} for r in shard_records(shard)]


def _rewrite_if_torn(index: Path, records: list[dict]) -> None:
    """Drop an unterminated last line so later appends start on a fresh line."""
    if index.exists() and index.stat().st_size and not index.read_bytes().endswith(b"\n"):
        tmp = index.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        _fsync_file(tmp)
        tmp.replace(index)


def _member_size(n: int) -> int:
    return _BLOCK + -(-n // _BLOCK) * _BLOCK


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
