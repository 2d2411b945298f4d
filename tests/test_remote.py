"""Training from a bucket: an ingested folder read through fsspec (``memory://`` here, no network)
gives byte for byte the batches of the local folder, reading only each video's span.

``ranges://`` is ``memory://`` that logs every file it opens and every ``cat_file`` with its byte
range (s3fs, gcsfs and http send one ranged GET for it), so the tests see what a bucket would be
asked for. Loader workers are forked (Linux), so they see the same in-memory bucket.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import json
import shutil
from pathlib import Path

import fsspec
import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem

from vivi.cli import main
from vivi.config import apply_overrides, preset
from vivi.data.batches import StepClips, step_loader, training_videos
from vivi.data import shards
from vivi.data.remote import read_chunks
from vivi.data.shards import INDEX_NAME, read_index, read_records, recover, sample_spans, shard_records
from vivi.data.stats import ingest_stats
from vivi.errors import UserError

CFG = apply_overrides(preset("VIVI-Ex(4)"), ["data.load_size=64", "data.videos=3", "data.cache_mb=0"]).data
_names = itertools.count()


class RangeFS(MemoryFileSystem):
    """``memory://`` under another name, logging what it is asked for."""

    protocol = "ranges"
    opens: list[str] = []
    fetches: list[tuple[str, int, int]] = []
    fail: str | None = None
    down: BaseException | None = None  # info() fails as fsspec's http backend does: FileNotFoundError from this
    whole = False  # a server that ignores range requests: every cat_file gets the whole file

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(str(path).replace("ranges://", "memory://", 1))

    def cat_file(self, path, start=None, end=None, **kwargs):
        if RangeFS.fail:
            raise RuntimeError(RangeFS.fail)  # backends raise their own (non-OSError) types
        RangeFS.fetches.append((self._strip_protocol(path), start, end))
        if RangeFS.whole:
            return super().cat_file(path, **kwargs)
        return super().cat_file(path, start, end, **kwargs)

    def info(self, path, **kwargs):
        if RangeFS.down is not None:
            raise FileNotFoundError(path) from RangeFS.down
        return super().info(path, **kwargs)

    def _open(self, path, *args, **kwargs):
        RangeFS.opens.append(self._strip_protocol(path))
        return super()._open(path, *args, **kwargs)


fsspec.register_implementation("ranges", RangeFS, clobber=True)


@pytest.fixture
def bucket(tiny_data):
    """``tiny_data`` uploaded as is to a fresh in-memory bucket; yields its path there."""
    root = f"bucket-{next(_names)}/ingest-part-0"
    fs = fsspec.filesystem("memory")
    for path in sorted(p for p in tiny_data.rglob("*") if p.is_file()):
        fs.pipe_file(f"{root}/{path.relative_to(tiny_data).as_posix()}", path.read_bytes())
    RangeFS.opens.clear()
    RangeFS.fetches.clear()
    yield root
    fs.rm(root.split("/")[0], recursive=True)
    RangeFS.fail, RangeFS.down, RangeFS.whole = None, None, False


def rewrite_index(root: str, change) -> None:
    """Apply ``change(record)`` to every record of the bucket's index.jsonl."""
    fs = fsspec.filesystem("memory")
    records = [json.loads(line) for line in fs.cat_file(f"{root}/{INDEX_NAME}").decode().splitlines()]
    for record in records:
        change(record)
    fs.pipe_file(f"{root}/{INDEX_NAME}", "".join(json.dumps(r) + "\n" for r in records).encode())


def table_of(*outs):
    return training_videos(read_index(outs), CFG, ", ".join(map(str, outs)))


def test_spans_recorded_at_ingest_are_those_of_the_shard_headers(tiny_data):
    records = [r for r in read_index([tiny_data]) if r["status"] == "ok"]
    assert records and all(r["shard_span"] == list(sample_spans(r["shard"])[r["key"]]) for r in records)


def test_recover_computes_the_spans_of_records_it_copies_from_a_shard(tiny_data, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(tiny_data, out)
    index = out / INDEX_NAME
    lines = index.read_text().splitlines(keepends=True)
    index.write_text("".join(lines[:-1]))  # killed before the last shard's records reached the index
    lost = json.loads(lines[-1])
    stored = next(r for r in shard_records(out / lost["shard"]) if r["key"] == lost["key"])
    assert "shard_span" not in stored, "the record copy inside the shard cannot know its own span"
    recover(out)
    assert read_records(index)[-1] == lost


def test_a_bucket_gives_the_batches_of_the_local_folder(tiny_data, bucket):
    local, remote = table_of(tiny_data), table_of(f"memory://{bucket}")
    assert remote.shards[0].startswith(f"memory://{bucket}/shards/") and (remote.spans == local.spans).all()
    here, there = StepClips(local, CFG, seed=5), StepClips(remote, CFG, seed=5)
    expected = [here[step] for step in range(4)]
    assert all(torch.equal(a, there[step]) for step, a in enumerate(expected))
    assert all(torch.equal(a, b) for a, b in zip(expected[2:], step_loader(there, 2, 4, workers=1), strict=True))
    opened, here._pid = here._files[0], -1  # as in a loader worker forked after this process opened the shard
    assert torch.equal(here[1], expected[1]) and here._files[0] is not opened, "a forked worker opens its own"


def test_pretrain_takes_a_url(bucket, tmp_path):
    args = ["--set", "data.videos=2", "--set", "data.workers=0", "--set", "log_every=1"]
    assert main(["pretrain", "--preset", "VIVI-Ex(4)", "--data", f"memory://{bucket}", "--out", str(tmp_path), "--steps", "1", *args]) == 0
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["step"] == 1


def test_only_the_spans_are_read(bucket):
    table = table_of(f"ranges://{bucket}")
    index = f"/{bucket}/{INDEX_NAME}"
    size = fsspec.filesystem("memory").size(index)
    assert RangeFS.opens == [] and RangeFS.fetches == [(index, 0, size)], "the index in one range, no shard at start-up"
    RangeFS.fetches.clear()
    clips = StepClips(table, CFG, seed=0)
    for step in range(3):
        clips[step]
    spans = {("/" + table.shards[s].removeprefix("ranges://"), start, end) for s, start, end in table.spans.tolist()}
    assert len(RangeFS.fetches) == 3 * CFG.videos, "one request per video"
    assert set(RangeFS.fetches) <= spans, "each request is exactly one video's span"


def test_a_large_index_is_read_in_ranges_of_one_chunk(tiny_data, bucket, monkeypatch):
    monkeypatch.setattr(shards, "read_chunks", functools.partial(read_chunks, size=1000))
    remote = read_index([f"ranges://{bucket}"])
    index = f"/{bucket}/{INDEX_NAME}"
    size = fsspec.filesystem("memory").size(index)
    assert RangeFS.fetches == [(index, start, min(start + 1000, size)) for start in range(0, size, 1000)]
    local = read_index([tiny_data])
    assert len(remote) == len(local) > 2 and [r["key"] for r in remote] == [r["key"] for r in local]
    assert all(r["shard"] == f"ranges://{bucket}/" + Path(l["shard"]).relative_to(tiny_data).as_posix()
               for r, l in zip(remote, local, strict=True) if l.get("shard"))


def test_a_network_error_while_reading_the_index_is_one_line(bucket, monkeypatch):
    monkeypatch.setattr(shards, "read_chunks", functools.partial(read_chunks, size=1000))
    records = shards.iter_index([f"ranges://{bucket}"])
    next(records)
    RangeFS.fail = "Connection reset by peer"
    with pytest.raises(UserError, match=rf"^ranges://{bucket}/index.jsonl: cannot read \(RuntimeError: Connection reset by peer\)$"):
        list(records)


def test_an_index_without_spans_is_located_from_the_shard_headers(tiny_data, bucket, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_data, old)
    records = read_records(old / INDEX_NAME)
    (old / INDEX_NAME).write_text("".join(json.dumps({k: v for k, v in r.items() if k != "shard_span"}) + "\n" for r in records))
    rewrite_index(bucket, lambda r: r.pop("shard_span", None))
    new, local, remote = table_of(tiny_data), table_of(old), table_of(f"ranges://{bucket}")
    assert (local.spans == new.spans).all() and (remote.spans == new.spans).all()
    assert RangeFS.opens == [f"/{bucket}/shards/shard-000000.tar"], "each shard's headers scanned once"
    assert torch.equal(StepClips(remote, CFG, seed=1)[2], StepClips(new, CFG, seed=1)[2])


@pytest.mark.parametrize(
    ("shift", "says"),
    [
        ((512, 0), "the index places it at bytes .* which gave no tar header"),  # one block late
        ((-512, 0), "the index places it at bytes .* which gave no tar header"),  # one block early
        ("previous", "the index places it at bytes .* which gave member '.*json'"),  # another video's span
        ((0, -512), "unreadable .*truncated"),  # its last member cut
        ((0, 1 << 30), "the index places it at bytes .* which gave \\d+ bytes"),  # past the shard's end
    ],
)
def test_a_wrong_span_is_one_line_naming_shard_and_sample(bucket, shift, says):
    records = read_index([f"memory://{bucket}"])
    shard = records[0]["shard"]
    same = [r for r in records if r["status"] == "ok" and r["shard"] == shard]
    record = next(r for r in same if r["shard_span"][0] > 0)
    if shift == "previous":
        record["shard_span"] = same[same.index(record) - 1]["shard_span"]
    else:
        record["shard_span"] = [record["shard_span"][0] + shift[0], record["shard_span"][1] + shift[1]]
    table = training_videos([record], CFG, bucket)
    with pytest.raises(UserError, match=f"^{shard}: sample {record['key']}: {says}.*re-run `vivi ingest`") as e:
        StepClips(table, CFG)[0]
    assert "\n" not in str(e.value)


def test_a_malformed_span_is_named(bucket):
    rewrite_index(bucket, lambda r: r.update(shard_span=[3]) if r["status"] == "ok" else None)
    with pytest.raises(UserError, match="malformed shard_span"):
        table_of(f"memory://{bucket}")


def test_a_network_error_mid_run_is_one_line(bucket):
    clips = StepClips(table_of(f"ranges://{bucket}"), CFG)
    clips[0]
    RangeFS.fail = "Connection reset by peer\nwith a second line"
    with pytest.raises(UserError, match=r"ranges://.*: sample .*RuntimeError: Connection reset by peer\).*resume$") as e:
        clips[1]
    assert "\n" not in str(e.value)


class _Response(Exception):
    """What aiohttp raises for an HTTP error status (``ClientResponseError.status``)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"{status}, message='...'")
        self.status = status


@pytest.mark.parametrize("cause", [ConnectionRefusedError(111, "Connect call failed"), _Response(500)])
def test_a_server_that_is_down_is_not_a_missing_index(bucket, cause):
    """fsspec's http(s) info() raises FileNotFoundError for any failed HEAD/GET, the failure as its cause: a
    server that was down or failing said "no index.jsonl (run `vivi ingest` into it first...)"."""
    RangeFS.down = cause
    with pytest.raises(UserError, match=rf"^ranges://{bucket}/index.jsonl: cannot read \({type(cause).__name__}: "):
        read_index([f"ranges://{bucket}"])
    RangeFS.down = _Response(404)
    with pytest.raises(UserError, match=rf"^ranges://{bucket}: no index.jsonl"):
        read_index([f"ranges://{bucket}"])


def test_a_server_that_ignores_ranges_is_named(bucket, monkeypatch):
    """Such a server (Python's http.server) sends the whole file for each ranged GET: a video's read said
    the index did not match its shards (re-ingest), and an index read in chunks repeated its records."""
    table = table_of(f"ranges://{bucket}")
    RangeFS.whole = True
    with pytest.raises(UserError, match=r"^ranges://.*shard-000000.tar: asked for bytes \d+-\d+, the server sent "
                                        r"\d+ \(it ignores range requests\); serve the folder with a server"):
        StepClips(table, CFG)[0]
    monkeypatch.setattr(shards, "read_chunks", functools.partial(read_chunks, size=1000))
    with pytest.raises(UserError, match=rf"^ranges://{bucket}/index.jsonl: asked for bytes 0-1000, the server sent"):
        read_index([f"ranges://{bucket}"])


def test_a_missing_url_or_backend_is_one_line(capsys, tmp_path):
    with pytest.raises(UserError, match="^memory://nowhere/x: no index.jsonl"):
        read_index(["memory://nowhere/x"])
    # the command line keeps the URL a URL (pathlib would make it memory:/nowhere/x)
    assert main(["pretrain", "--preset", "VIVI-Ex(4)", "--data", "memory://nowhere/x", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        "vivi: error: memory://nowhere/x: no index.jsonl "
        "(run `vivi ingest` into it first; upload the whole ingest folder as is)\n"
    )
    fsspec.register_implementation("vivitest", "vivi_no_such_backend.FS", clobber=True, errtxt="Install it")
    with pytest.raises(UserError, match=r"^vivitest://b/x/index.jsonl: reading vivitest:// needs `pip install vivi_no_such_backend`"):
        read_index(["vivitest://b/x"])
    with pytest.raises(UserError, match="Protocol not known: nosuchproto"):
        read_index(["nosuchproto://b/x"])


def test_s3_without_s3fs_says_what_to_install():
    if importlib.util.find_spec("s3fs") is not None:
        pytest.skip("s3fs is installed here")
    with pytest.raises(UserError, match=r"^s3://bucket/x/index.jsonl: reading s3:// needs `pip install s3fs`"):
        read_index(["s3://bucket/x"])


def test_ingest_stats_reads_a_bucket(tiny_data, bucket, tmp_path):
    local, _ = ingest_stats([tiny_data], tmp_path / "a")
    remote, pngs = ingest_stats([f"memory://{bucket}"], tmp_path / "b")
    assert remote == local and all(p.is_file() for p in pngs)
    with pytest.raises(UserError, match="give -o DIR"):
        ingest_stats([f"memory://{bucket}"])


def test_an_http_video_from_a_server_without_range_requests_says_how_to_read_it(tiny_world, tmp_path):
    """FFmpeg reads an http(s) URL itself and seeks in it; Python's http.server ignores ranges, and the
    record said only "no decodable video frames (... Input/output error)"."""
    import http.server
    import threading

    from vivi.data.ingest import ingest

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(tiny_world / "videos"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        video = sorted((tiny_world / "videos").glob("*.mp4"))[0].name
        listing = tmp_path / "list.txt"
        listing.write_text(f"http://127.0.0.1:{server.server_port}/{video}\n")
        ingest(listing, tmp_path / "out", progress=False)
    finally:
        server.shutdown()
    (record,) = read_records(tmp_path / "out" / INDEX_NAME)
    assert record["status"] == "error"
    assert "Input/output error" in record["error"], record["error"]
    assert record["error"].endswith("; if the server does not allow range requests, list it as a pipe:curl -sL URL "
                                    "line (read whole)")  # fmt: skip
