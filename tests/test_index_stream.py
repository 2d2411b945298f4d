"""index.jsonl is streamed in chunks (an index of millions of videos is GBs, read by every
process of a run): the records must not depend on where the chunks end, a torn last line is
still ignored, and a bad line is still named by its number."""

from __future__ import annotations

import json

import pytest

from vivi.data import shards
from vivi.data.remote import read_chunks
from vivi.data.shards import INDEX_NAME, iter_index, iter_records
from vivi.errors import UserError

RECORDS = [{"key": f"v{i}", "status": "ok" if i % 3 else "error", "shots": [[0, i]], "note": "é" * i} for i in range(7)]


def reference(data: bytes) -> list[dict]:
    """What the index holds, read the slow way: every terminated non-blank line, then the last
    line if it is whole."""
    *lines, last = data.split(b"\n")
    records = [json.loads(line) for line in lines if line.strip()]
    try:
        return records + [json.loads(last)] if last.strip() else records
    except json.JSONDecodeError:
        return records


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("tail", [b"", b"\n", b'{"key": "torn", "sta', b'{"key": "whole"}', b"\n\n  \n"])
def test_the_records_do_not_depend_on_where_the_chunks_end(tail):
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" + ("\n" if i == 3 else "") for i, r in enumerate(RECORDS))
    data = data.encode() + tail
    expected = reference(data)
    assert len(expected) >= len(RECORDS)
    for size in (1, 2, 3, 7, 50, len(data) - 1, len(data), 10 * len(data)):
        assert list(iter_records(chunked(data, size), "i.jsonl")) == expected, size


def test_a_bad_line_is_named_by_its_number_wherever_the_chunks_end():
    data = b'{"key": "a"}\n\n{"key": "b"}\n{"key": \n{"key": "c"}\n'
    for size in (1, 5, 13, len(data)):
        records = iter_records(chunked(data, size), "i.jsonl")
        assert [r["key"] for r in (next(records), next(records))] == ["a", "b"]
        with pytest.raises(UserError, match=r"^i.jsonl: line 4 is not JSON$"):
            next(records)


def test_a_local_index_is_read_a_chunk_at_a_time(tmp_path, monkeypatch):
    (tmp_path / INDEX_NAME).write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    pulled = []

    def counting(path: str, size: int = 64):
        chunks = read_chunks(path, size=64)
        for chunk in chunks:
            pulled.append(len(chunk))
            yield chunk

    monkeypatch.setattr(shards, "read_chunks", counting)
    records = iter_index([tmp_path])
    assert next(records) == RECORDS[0]
    assert len(pulled) < (tmp_path / INDEX_NAME).stat().st_size // 64, "the first record came before the whole file"
    assert [RECORDS[0], *records] == RECORDS


def test_read_chunks_keeps_the_order_and_says_none_where_no_file_is(tmp_path):
    assert read_chunks(str(tmp_path / "none.jsonl")) is None
    assert read_chunks(str(tmp_path)) is None  # a folder is no index either
    (tmp_path / "i.jsonl").write_bytes(b"x" * 10)
    assert list(read_chunks(str(tmp_path / "i.jsonl"), size=4)) == [b"xxxx", b"xxxx", b"xx"]
    with pytest.raises(UserError, match=f"^{tmp_path}: no {INDEX_NAME}"):
        list(iter_index([tmp_path]))


def test_a_line_longer_than_many_chunks_is_read_whole():
    long = {"key": "long", "status": "ok", "shots": [[i, i + 1] for i in range(2000)]}
    data = (json.dumps(RECORDS[0]) + "\n" + json.dumps(long) + "\n" + json.dumps(RECORDS[1])).encode()
    for size in (1, 3, 1000):
        assert list(iter_records(chunked(data, size), "i.jsonl")) == [RECORDS[0], long, RECORDS[1]]


@pytest.mark.parametrize("line", [b"[1, 2]", b'"key"', b"7"])
def test_a_line_that_is_no_object_is_named(line):
    for data in (b'{"key": "a"}\n' + line + b"\n", b'{"key": "a"}\n' + line):  # terminated or last
        with pytest.raises(UserError, match=r"^i.jsonl: line 2 is JSON but not an object"):
            list(iter_records(chunked(data, 4), "i.jsonl"))


def test_a_torn_last_record_is_left_out_with_one_line(tmp_path, capsys):
    """A record cut short by a kill during ingest's append left its video out of training silently."""
    whole = "".join(json.dumps(r) + "\n" for r in RECORDS)
    (tmp_path / INDEX_NAME).write_text(whole + '{"key": "torn", "sta')
    assert [r["key"] for r in iter_index([tmp_path])] == [r["key"] for r in RECORDS]
    err = capsys.readouterr().err
    assert f"{tmp_path / INDEX_NAME}: its last line is cut short (20 bytes" in err and err.count("\n") == 1
    assert f"`vivi ingest` into {tmp_path} restores it" in err
    (tmp_path / INDEX_NAME).write_text(whole)
    list(iter_index([tmp_path]))
    assert capsys.readouterr().err == ""
