"""Files a user may have received from someone else, crafted as an attacker would craft them: each must
end in a one-line UserError naming the file (or a quiet refusal, for a cache), quickly and without a
large allocation, and never unpickle code."""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from vivi.config import BackboneConfig, preset
from vivi.errors import UserError

SPEC = BackboneConfig(layers=[1, 1, 1, 1], channels=[8, 8, 8, 8], stem_chs=8)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> tuple[bytes, dict]:
    """A tiny real backbone.safetensors: its bytes and its parsed header."""
    from vivi.models.backbone import build_backbone, save_backbone

    path = tmp_path_factory.mktemp("bb") / "b.safetensors"
    save_backbone(build_backbone(SPEC), SPEC, path, extra={"image_size": "32"})
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return raw, json.loads(raw[8 : 8 + n])


def _safetensors(path: Path, header: bytes, body: bytes = b"") -> Path:
    path.write_bytes(len(header).to_bytes(8, "little") + header + body)
    return path


def _edited(raw: bytes, header: dict, edit) -> tuple[bytes, bytes]:
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(json.dumps(header))
    edit(header)
    return json.dumps(header).encode(), raw[8 + n :]


def _refused(fn, *words: str) -> str:
    with pytest.raises(UserError) as e:
        fn()
    message = str(e.value)
    assert "\n" not in message and all(w in message for w in words), message
    return message


def _meta_backbone(field, value):
    def edit(h):
        spec = json.loads(h["__metadata__"]["backbone"])
        spec[field] = value
        h["__metadata__"]["backbone"] = json.dumps(spec)

    return edit


def _tensor(name: str, key: str, value):
    def edit(h):
        tensors = sorted(k for k in h if k != "__metadata__")
        h[tensors[0] if name == "first" else tensors[1]][key] = value if value != "same" else h[tensors[0]][key]

    return edit


@pytest.mark.parametrize(
    "edit, words",
    [
        (_tensor("first", "data_offsets", [0, 10**12]), ["not a readable safetensors file"]),
        (_tensor("second", "data_offsets", "same"), ["not a readable safetensors file"]),
        (_tensor("first", "dtype", "F16"), ["not a readable safetensors file"]),
        # 10**7 blocks: building even on the meta device took minutes and GBs before it was refused
        (_meta_backbone("layers", [10**7, 1, 1, 1]), ["residual blocks"]),
        (_meta_backbone("channels", [10**9, 8, 8, 8]), ["do not match the stored architecture"]),
        (_meta_backbone("width_factor", 10**6), ["do not match the stored architecture"]),
        (_meta_backbone("layers", [1.5, 1, 1, 1]), ["expected a list of positive integers"]),
        (lambda h: h["__metadata__"].__setitem__("image_size", str(10**9)), ["'image_size'"]),
    ],
)
def test_a_tampered_backbone_file_is_one_line_naming_it(backbone, tmp_path, edit, words):
    from vivi.models.backbone import load_backbone

    path = _safetensors(tmp_path / "b.safetensors", *_edited(*backbone, edit))
    _refused(lambda: load_backbone(path), str(path), *words)


def test_a_backbone_header_of_absurd_length_or_not_json_is_refused(tmp_path):
    from vivi.models.backbone import load_backbone

    huge = tmp_path / "huge.safetensors"
    huge.write_bytes((2**62).to_bytes(8, "little") + b"{}")
    _refused(lambda: load_backbone(huge), str(huge), "header too large")
    text = _safetensors(tmp_path / "text.safetensors", b"not json at all")
    _refused(lambda: load_backbone(text), str(text), "not a readable safetensors file")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickled_code_is_never_run_from_weights_or_checkpoints(tmp_path, monkeypatch):
    from vivi.evaluate.encoders import load_encoder
    from vivi.train.checkpoint import load_checkpoint

    monkeypatch.chdir(tmp_path)
    weights = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _Evil()}, weights)
    _refused(lambda: load_encoder(f"timm:resnet18:{weights}"), str(weights), "GLOBAL posix.system")
    ckpt = tmp_path / "run" / "checkpoints" / "step_1.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"step": 1, "model": _Evil()}, ckpt)
    _refused(lambda: load_encoder(str(ckpt)), str(ckpt), "pickled objects")
    message = _refused(lambda: load_checkpoint(ckpt), str(ckpt), "pickled objects")  # resume
    assert "weights_only" not in message  # torch's advice to turn the protection off is not passed on
    assert not (tmp_path / "pwned").exists()


def _bomb(path: Path, inflated: int = 64 << 20) -> Path:
    """A real checkpoint whose tensor record is stored deflated: 64 MiB of zeros in ~64 KiB."""
    buf = io.BytesIO()
    torch.save({"step": 1, "model": {"w": torch.zeros(4)}}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            if info.filename.endswith("/data/0"):
                out.writestr(info.filename, b"\0" * inflated, compress_type=zipfile.ZIP_DEFLATED)
            else:
                out.writestr(info, src.read(info))
    return path


def test_a_zip_bomb_checkpoint_is_refused_before_torch_reads_it(tmp_path):
    from vivi.evaluate.encoders import load_encoder
    from vivi.train.checkpoint import load_checkpoint

    ckpt = tmp_path / "run" / "checkpoints" / "step_1.pt"
    ckpt.parent.mkdir(parents=True)
    _bomb(ckpt)
    assert ckpt.stat().st_size < 1 << 20
    _refused(lambda: load_checkpoint(ckpt), str(ckpt), "compressed")
    _refused(lambda: load_encoder(str(ckpt)), str(ckpt), "compressed")
    pth = _bomb(tmp_path / "w.pth")
    _refused(lambda: load_encoder(f"timm:resnet18:{pth}"), str(pth), "compressed")


@pytest.mark.parametrize("field, value, words", [
    ("layers", [10**7, 1, 1, 1], ["does not fit the network", "residual blocks"]),  # minutes of building, even on the meta device
    ("channels", [10**6] * 4, ["does not fit the network"]),  # a 9 TB allocation when built for real
])  # fmt: skip
def test_a_checkpoint_whose_config_asks_for_a_huge_network_is_refused_unbuilt(tmp_path, field, value, words):
    from vivi.evaluate.encoders import load_encoder
    from vivi.models import build_model
    from vivi.train.checkpoint import checkpoint_path, save_checkpoint

    cfg = preset("VIVI-Ex(4)", "tiny")
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run, 1, {"step": 1, "model": build_model(cfg).state_dict()})
    config = json.loads(cfg.to_json())
    config["model"]["backbone"][field] = value
    (run / "config.json").write_text(json.dumps(config))
    _refused(lambda: load_encoder(str(checkpoint_path(run, 1))), *words)


def _npz(path: Path, **members: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(f"{name}.npy", data)
    return path


def _npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_a_video_table_declaring_huge_arrays_is_ignored_unread(tmp_path, monkeypatch):
    """np.load allocates what an npy header declares before reading it: 8 TB for these few bytes."""
    from vivi.data import table_cache

    loaded = []  # np.load is never reached: the headers alone refuse these files
    monkeypatch.setattr(table_cache.np, "load", lambda *a, **k: loaded.append(a) or pytest.fail("np.load called"))
    _npz(tmp_path / table_cache.NAME, meta=_npy_header((10**12,), "<U1") + b"x" * 16)
    assert table_cache.load_table(tmp_path, "key") is None
    _npz(tmp_path / table_cache.NAME, meta=b"\x93NUMPY" + b"\xff" * 64)  # not an npy header at all
    assert table_cache.load_table(tmp_path, "key") is None
    bad = tmp_path / table_cache.NAME
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("meta.npy", _npy_header((4,), "<U1") + b"\0" * (1 << 20), compress_type=zipfile.ZIP_DEFLATED)
    assert table_cache.load_table(tmp_path, "key") is None  # a compressed member: np.savez never writes one
    assert not loaded


def _tar_header(name: str, size: int, kind: bytes = b"0", extra: bytes = b"") -> bytes:
    header = bytearray(512)
    header[: len(name)] = name.encode()
    header[100:108] = b"0000644\0"
    header[124:136] = f"{size:011o}".encode() + b"\0" if size >= 0 else b"-0000000007\0"
    header[136:148] = b"00000000000\0"
    header[156:157] = kind
    header[257:263] = b"ustar\0"
    header[263:265] = b"00"
    header[386 : 386 + len(extra)] = extra
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    return bytes(header)


def test_shard_members_that_lie_about_their_size_are_refused(tmp_path):
    from vivi.data.frames import tar_members

    with pytest.raises(ValueError, match="truncated"):
        tar_members(_tar_header("k.s000.f000.jpg", 10**12) + b"\0" * 512)
    with pytest.raises(ValueError, match="negative"):
        tar_members(_tar_header("k.s000.f000.jpg", -7) + b"\0" * 1024)
    # an old-GNU sparse member: one 512-byte chunk, then holes up to a declared 64 GiB, which tarfile
    # filled with zeros in memory on read
    sparse = b"00000000000\0" + b"00000001000\0"  # one entry: offset 0, 512 bytes
    header = bytearray(_tar_header("k.s000.f000.jpg", 512, b"S", sparse))
    header[483:495] = f"{64 << 30:011o}\0".encode()  # realsize
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    with pytest.raises(ValueError, match="sparse"):
        tar_members(bytes(header) + b"\xff" * 512 + b"\0" * 1024)
    # names with ../ are only ever dictionary keys: nothing is written anywhere
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("../../k.s000.f000.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    assert list(tar_members(buf.getvalue()).values()) == [b"abc"]


def test_a_frame_declaring_a_huge_image_is_refused_as_a_bomb_not_decoded():
    from PIL import Image

    from vivi.data.frames import load_frame

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    png = bytearray(buf.getvalue())
    png[16:24] = (60000).to_bytes(4, "big") * 2  # IHDR: 60000 x 60000 = 3.6 Gpx, in 70 bytes
    png[29:33] = zlib.crc32(bytes(png[12:29])).to_bytes(4, "big")
    with pytest.raises(ValueError, match="decompression bomb"):  # the loader names the sample for a ValueError
        load_frame(bytes(png), 32)


@pytest.mark.parametrize("shard", ["/dev/stdin", "../../elsewhere.tar", "s3://their-bucket/x.tar", ["a"]])
def test_an_index_naming_a_shard_outside_its_folder_is_refused(tmp_path, shard):
    from vivi.data.shards import read_index

    (tmp_path / "index.jsonl").write_text(json.dumps({"key": "a", "status": "ok", "shard": shard}) + "\n")
    _refused(lambda: read_index([tmp_path]), "index.jsonl", "expected a path inside its folder")


def test_deeply_nested_json_is_one_line_not_a_recursion_error(tmp_path, capsys):
    from vivi.cli import main
    from vivi.data.shards import read_index
    from vivi.evaluate.report import load_metrics

    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "index.jsonl").write_text(deep + "\n")
    _refused(lambda: read_index([tmp_path]), "index.jsonl", "line 1 is not JSON")
    results = tmp_path / "results.json"
    results.write_text(deep)
    assert main(["report", str(results), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(results) in err and "nested too deeply" in err and "Traceback" not in err
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(deep + "\n")
    _refused(lambda: load_metrics(metrics), str(metrics))


def test_an_index_claiming_a_huge_span_reads_no_further_than_the_shard(tiny_data, tmp_path):
    """The loader reads a sample's recorded byte range in one read, which allocates its length first:
    a span of 2**50 bytes was a MemoryError. Now a read stops at the shard's end and is "truncated"."""
    import shutil

    from vivi.data.batches import StepClips, training_videos
    from vivi.data.shards import read_index

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    records = read_index([data])
    lying = next(r for r in records if r.get("status") == "ok")
    lying["shard_span"] = [lying["shard_span"][0], 2**50]
    cfg = preset("VIVI-Ex(4)").data
    cfg.videos, cfg.cache_mb = 1, 0
    table = training_videos([lying], cfg, str(data))
    with pytest.raises(UserError, match=f"{Path(lying['shard']).name}: sample {lying['key']}"):
        StepClips(table, cfg, seed=0)[0]


@pytest.mark.parametrize("edit", [
    lambda r: r.pop("key"),
    lambda r: r.update(key=7),
    lambda r: r.update(shots=[1, 2]),
    lambda r: r.update(shots=3),
    lambda r: r["shots"][0].update(frames=9),
])  # fmt: skip
def test_a_malformed_index_record_is_one_line_naming_the_folder(tiny_data, edit):
    from vivi.data.batches import training_videos
    from vivi.data.shards import read_index

    records = read_index([tiny_data])
    edit(next(r for r in records if r.get("status") == "ok"))
    with pytest.raises(UserError, match="DATA: the index record of .* is malformed"):
        training_videos(records, preset("VIVI-Ex(4)").data, "DATA")
