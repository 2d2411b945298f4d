"""Training from a real web server (a local one, with range requests): the run a user whose data lies
behind http(s) gets, through fsspec's http backend (aiohttp), from the first request to a restart.

Python's ``http.server`` ignores ``Range``, so :class:`_Server` answers ranges itself; which version
headers it sends (ETag, Last-Modified, none) and which request fails (a 500, a dropped connection)
are set per test.
"""

from __future__ import annotations

import email.utils
import http.server
import json
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from vivi.config import apply_overrides, preset
from vivi.data.batches import training_videos
from vivi.data.shards import INDEX_NAME, read_index
from vivi.data.table_cache import NAME
from vivi.errors import UserError
from vivi.train.checkpoint import list_checkpoints
from vivi.train import loop
from vivi.train.loop import pretrain

pytest.importorskip("aiohttp", reason="fsspec reads http(s) with aiohttp")
from safetensors.torch import load_file  # noqa: E402

SETTINGS = ["data.videos=2", "data.workers=0", "optim.steps=4", "ckpt_every=2", "log_every=1", "device=cpu"]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root: Path
    versions: tuple[str, ...] = ()  # "ETag", "Last-Modified"
    fail: tuple[str, int, str] | None = None  # (part of the path, from the n-th such request, "500" | "drop")
    seen: dict[str, int] = {}

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        cls = type(self)
        if cls.fail and cls.fail[0] in self.path:
            cls.seen[cls.fail[0]] = n = cls.seen.get(cls.fail[0], 0) + 1
            if n >= cls.fail[1]:
                if cls.fail[2] == "drop":
                    self.close_connection = True
                    return
                return self._empty(500)
        path = cls.root / self.path.lstrip("/")
        if not path.is_file():
            return self._empty(404)
        data, st = path.read_bytes(), path.stat()
        start, end, status = 0, len(data), 200
        if m := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "")):
            start, end, status = int(m[1]), min(len(data), int(m[2]) + 1 if m[2] else len(data)), 206
        self.send_response(status)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        if "ETag" in cls.versions:
            self.send_header("ETag", f'"{st.st_mtime_ns:x}-{st.st_size:x}"')
        if "Last-Modified" in cls.versions:
            self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
        self.end_headers()
        if body:
            self.wfile.write(data[start:end])

    def _empty(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def served(tiny_data, tmp_path) -> Iterator[tuple[type[_Handler], str, Path]]:
    """A copy of the ingested world behind a local server: (its handler class, its URL, the folder)."""
    folder = tmp_path / "www" / "data"
    shutil.copytree(tiny_data, folder)
    handler = type("Handler", (_Handler,), {"root": folder.parent, "seen": {}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{server.server_port}/data", folder
    server.shutdown()
    server.server_close()


def _cfg():
    return apply_overrides(preset("VIVI-Ex(4)"), SETTINGS)


def _rewind(run: Path) -> None:
    list_checkpoints(run)[-1].unlink()


def _same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a / "backbone.safetensors")), load_file(str(b / "backbone.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture
def builds(monkeypatch) -> list[int]:
    """One entry per training table built from the index (not read back from the run folder)."""
    made: list[int] = []

    def counted(*args, **kwargs):
        made.append(1)
        return training_videos(*args, **kwargs)

    monkeypatch.setattr(loop, "training_videos", counted)
    return made


@pytest.mark.parametrize("versions", [("ETag",), ("Last-Modified",), ()])
def test_a_web_server_trains_as_the_local_folder_and_restarts_from_the_saved_table(
        served, tmp_path, versions, builds, one_thread):  # fmt: skip
    handler, url, folder = served
    handler.versions = versions
    local, remote = tmp_path / "local", tmp_path / "remote"
    pretrain(_cfg(), [folder], local, progress=False)
    pretrain(_cfg(), [url], remote, progress=False)
    assert _same_weights(local, remote)
    fingerprint = [json.loads((run / "data.json").read_text())["fingerprint"] for run in (local, remote)]
    assert fingerprint[0] == fingerprint[1], "keys and shot lengths, wherever they are read from"
    assert (remote / NAME).is_file() == bool(versions), "cached only where the server gives a version"

    _rewind(remote)
    builds.clear()
    pretrain(_cfg(), [url], remote, progress=False)
    assert len(builds) == (0 if versions else 1), "a restart reads the saved table"
    assert _same_weights(local, remote)

    with (folder / INDEX_NAME).open("a") as f:  # a later ingest appended a failed video: same batches
        first = json.loads((folder / INDEX_NAME).read_text().splitlines()[0])
        f.write(json.dumps({**first, "status": "error", "key": "failed-later"}) + "\n")
    _rewind(remote)
    builds.clear()
    pretrain(_cfg(), [url], remote, progress=False)
    assert len(builds) == 1, "an index that changed is read again"
    assert _same_weights(local, remote)


@pytest.mark.parametrize("how", ["500", "drop"])
def test_a_server_failing_mid_run_is_one_line_and_the_checkpoint_stays(served, tmp_path, how, one_thread):
    handler, url, folder = served
    run = tmp_path / "run"
    pretrain(_cfg(), [url], run, progress=False)
    _rewind(run)
    handler.fail = ("/shards/", 2, how)  # the second shard read of the restart: in step 3
    with pytest.raises(UserError) as e:
        pretrain(_cfg(), [url], run, progress=False)
    assert re.fullmatch(rf"{url}/shards/shard-\d+\.tar: sample \S+: unreadable \(.+\); check the connection and "
                        "credentials, then re-run the same command to resume", str(e.value)), str(e.value)
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002.pt"], "the checkpoint stays"
    handler.fail = None
    pretrain(_cfg(), [url], run, progress=False)
    local = tmp_path / "local"
    pretrain(_cfg(), [folder], local, progress=False)
    assert _same_weights(local, run)


def test_a_server_down_or_failing_at_start_is_not_a_missing_index(served):
    """fsspec's http backend turns every failed HEAD/GET into FileNotFoundError: only a 404 is "no index"."""
    handler, url, _ = served
    with pytest.raises(UserError, match=rf"^{url}/nothing: no {INDEX_NAME} \(run `vivi ingest`"):
        read_index([f"{url}/nothing"])
    handler.fail = (INDEX_NAME, 1, "500")
    with pytest.raises(UserError, match=rf"^{url}/{INDEX_NAME}: cannot read \(ClientResponseError: 500"):
        read_index([url])
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{s.getsockname()[1]}/data"
    with pytest.raises(UserError, match=rf"^{gone}/{INDEX_NAME}: cannot read \(ClientConnectorError: "):
        read_index([gone])
