"""Read TFRecord files of ``tf.train.Example`` protos without TensorFlow.

A TFRecord file is a sequence of records: uint64 length, uint32 masked CRC of the length,
``length`` bytes of data, uint32 masked CRC of the data (all little-endian). TFDS stores
one serialized ``tf.train.Example`` per record. The Example proto is small enough to
decode by hand: Example{features=1: Features{feature=1: map<string, Feature>}} and
Feature{bytes_list=1 | float_list=2 | int64_list=3: {value=1: repeated}}.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterator

import numpy as np

Value = list[bytes] | list[float] | list[int]


class TFRecordError(ValueError):
    """A file that is not a well-formed TFRecord of Examples."""


def record_offsets(path: Path) -> Iterator[tuple[int, int]]:
    """(data offset, data length) of every record in ``path``, reading only the headers."""
    size = path.stat().st_size
    with path.open("rb") as f:
        pos = 0
        while pos < size:
            header = f.read(12)
            if len(header) != 12:
                raise TFRecordError(f"truncated record header at byte {pos}")
            (length,) = struct.unpack("<Q", header[:8])
            if pos + 12 + length + 4 > size:
                raise TFRecordError(f"record at byte {pos} claims {length} bytes past the end of the file")
            yield pos + 12, length
            pos += 12 + length + 4
            f.seek(pos)


def read_records(path: Path) -> Iterator[tuple[int, bytes]]:
    """(data offset, data) of every record, in one sequential pass over the file."""
    with path.open("rb") as f:
        for offset, length in record_offsets(path):
            f.seek(offset)
            data = f.read(length)
            if len(data) != length:
                raise TFRecordError(f"truncated record at byte {offset}")
            yield offset, data


def read_record(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise TFRecordError("truncated varint")
        b = buf[pos]
        result |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of a serialized message: ints for varints, bytes otherwise."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise TFRecordError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise TFRecordError("truncated field")
        yield number, wire, value


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _feature(buf: bytes) -> Value:
    """One Feature's values: its BytesList, FloatList or Int64List (packed or not)."""
    for kind, _, inner in _fields(buf):
        values: list = []
        for _, wire, v in _fields(inner):  # the list message: field 1 repeated
            if kind == 1:
                values.append(bytes(v))
            elif kind == 2:
                values.extend(struct.unpack(f"<{len(v) // 4}f", v) if wire == 2 else struct.unpack("<f", v))
            elif kind == 3:
                if wire == 2:
                    pos = 0
                    while pos < len(v):
                        x, pos = _varint(v, pos)
                        values.append(_signed(x))
                else:
                    values.append(_signed(v))
        return values
    return []


def parse_example(buf: bytes) -> dict[str, Value]:
    """``{feature name: list of values}`` of a serialized ``tf.train.Example``."""
    out: dict[str, Value] = {}
    for number, _, features in _fields(buf):
        if number != 1:
            continue
        for entry_number, _, entry in _fields(features):
            if entry_number != 1:
                continue
            key, value = "", b""
            for n, _, v in _fields(entry):
                if n == 1:
                    key = bytes(v).decode()
                elif n == 2:
                    value = v
            out[key] = _feature(value)
    return out


def int_feature(example: dict[str, Value], key: str) -> np.ndarray:
    return np.asarray(example.get(key, []), dtype=np.int64)
