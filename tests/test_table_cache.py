"""The training table saved in the run folder: read back on restart only while the index and the
data settings are unchanged, equal to the table built from the index, never unpickled."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from vivi.config import apply_overrides, preset
from vivi.data import table_cache
from vivi.data.batches import VideoTable, training_videos
from vivi.data.shards import INDEX_NAME, iter_index
from vivi.data.table_cache import NAME, cache_key, load_table, save_table
from vivi.train import loop
from vivi.train.checkpoint import list_checkpoints
from vivi.train.loop import pretrain

SETTINGS = ["data.videos=2", "data.workers=0", "optim.steps=3", "ckpt_every=1", "log_every=1", "device=cpu"]


def _cfg(*more: str):
    return apply_overrides(preset("VIVI-Ex(4)"), [*SETTINGS, *more])


def _table(data: Path, cfg) -> VideoTable:
    return training_videos(iter_index([data]), cfg.data, str(data))


def _assert_same(a: VideoTable, b: VideoTable) -> None:
    for name in ("keys", "shot_starts", "shot_frames", "spans"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert getattr(a, name).dtype == getattr(b, name).dtype
    assert a.shards == b.shards


@pytest.fixture
def data(tiny_data, tmp_path) -> Path:
    """A copy of the ingested world whose index a test may append to."""
    copy = tmp_path / "data"
    shutil.copytree(tiny_data, copy)
    return copy


def test_saved_table_reads_back_equal(data, tmp_path):
    cfg = _cfg()
    built = _table(data, cfg)
    key = cache_key([data], cfg.data)
    save_table(tmp_path, key, built)
    loaded = load_table(tmp_path, key)
    assert loaded is not None
    _assert_same(loaded, built)
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file left behind"


def test_key_follows_the_index_and_the_settings_that_shape_the_table(data):
    cfg = _cfg()
    key = cache_key([data], cfg.data)
    assert cache_key([data], _cfg("data.workers=3", "data.cache_mb=0").data) == key  # how, not what, is loaded
    assert cache_key([data], _cfg("data.shots=2").data) != key
    assert cache_key([data], _cfg("data.frames=2").data) != key
    index = data / INDEX_NAME
    first = index.read_text().splitlines()[0]
    with index.open("a") as f:  # a video appended by a resumed ingest
        f.write(json.dumps({**json.loads(first), "key": "appended"}) + "\n")
    assert cache_key([data], cfg.data) != key


def test_a_url_without_a_version_is_not_cached(monkeypatch):
    monkeypatch.setattr(table_cache, "url_info", lambda url: {"size": 10, "name": url})
    assert cache_key(["s3://bucket/data"], _cfg().data) is None
    monkeypatch.setattr(table_cache, "url_info", lambda url: {"size": 10, "ETag": '"abc"'})
    monkeypatch.setattr(table_cache, "read_range", lambda url, start, end: b"x" * (end - start))
    key = cache_key(["s3://bucket/data"], _cfg().data)
    assert key is not None
    monkeypatch.setattr(table_cache, "url_info", lambda url: {"size": 10, "ETag": '"abd"'})
    assert cache_key(["s3://bucket/data"], _cfg().data) != key


@pytest.mark.parametrize("headers", [{"ETag": '"5237-18ee26f3"'}, {"Last-Modified": "Fri, 04 Dec 2026 20:28:48 GMT"}])
def test_a_web_server_s_version_headers_are_versions(monkeypatch, headers):
    """fsspec's http(s) info() is what a local server's HEAD gave it (recorded): the response headers by
    their own names. A server sending only Last-Modified (plain file servers) was never cached."""
    url = "http://127.0.0.1:8763/data"
    info = {"name": f"{url}/index.jsonl", "size": 10, "url": f"{url}/index.jsonl", "type": "file"}
    monkeypatch.setattr(table_cache, "read_range", lambda url, start, end: b"x" * (end - start))
    monkeypatch.setattr(table_cache, "url_info", lambda url: info)
    assert cache_key([url], _cfg().data) is None, "no version header: read every time"
    monkeypatch.setattr(table_cache, "url_info", lambda url: {**info, **headers})
    key = cache_key([url], _cfg().data)
    assert key is not None
    changed = {name: value.replace("2", "3") for name, value in headers.items()}
    monkeypatch.setattr(table_cache, "url_info", lambda url: {**info, **changed})
    assert cache_key([url], _cfg().data) not in (key, None)


def test_damaged_foreign_or_pickled_files_are_ignored(data, tmp_path):
    cfg = _cfg()
    key = cache_key([data], cfg.data)
    save_table(tmp_path, key, _table(data, cfg))
    path = tmp_path / NAME
    assert load_table(tmp_path, "another key") is None
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # cut short (a full disk, a killed copy)
    assert load_table(tmp_path, key) is None
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    meta = json.dumps({"key": key, "shards": [], "videos": 1})
    np.savez(path, meta=np.array(meta), keys=np.array([Payload()], dtype=object), shot_starts=np.zeros(2),
             shot_frames=np.zeros(1), spans=np.zeros((1, 3)))
    assert load_table(tmp_path, key) is None
    assert not marker.exists(), "an object array in the file was unpickled"


def _rewind(run: Path) -> None:
    """As if the run had been stopped before its last step: its last checkpoint goes."""
    list_checkpoints(run)[-1].unlink()


def test_a_restart_reads_the_saved_table_not_the_index(data, tmp_path, monkeypatch, one_thread):
    run = tmp_path / "run"
    pretrain(_cfg(), [data], run, progress=False)
    assert (run / NAME).is_file()
    _rewind(run)

    def no_index(*args, **kwargs):
        raise AssertionError("the index was read again")

    monkeypatch.setattr(loop, "training_videos", no_index)
    pretrain(_cfg(), [data], run, progress=False)  # resumes at step 2
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_an_index_that_grew_is_read_again(data, tmp_path, one_thread):
    run = tmp_path / "run"
    pretrain(_cfg(), [data], run, progress=False)
    saved = (run / NAME).read_bytes()
    index = data / INDEX_NAME
    records = [json.loads(line) for line in index.read_text().splitlines()]
    ok = next(r for r in records if r.get("status") == "ok")
    with index.open("a") as f:
        f.write(json.dumps({**ok, "status": "error", "key": "failed-later"}) + "\n")  # same usable videos
    _rewind(run)
    pretrain(_cfg(), [data], run, progress=False)
    assert (run / NAME).read_bytes() != saved  # built from the index again and saved under the new key
    _assert_same(load_table(run, cache_key([data], _cfg().data)), _table(data, _cfg()))


def test_a_table_that_cannot_be_written_is_a_warning(data, tmp_path, monkeypatch, capsys):
    cfg = _cfg()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setattr(np, "savez", full_disk)
    save_table(run, cache_key([data], cfg.data), _table(data, cfg))
    assert "cannot save the training table (No space left on device)" in capsys.readouterr().err
    assert not list(run.iterdir()), "neither the table nor a temporary file"
