"""VTAB readers on fixtures written here: CLIP-benchmark WebDataset tars and a TFDS data dir."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vivi.data.tasks import ArraySplit, load_tasks
from vivi.data.tfrecord import parse_example
from vivi.data.vtab import VTAB_TASKS, _train_val
from vivi.errors import UserError

GROUPS = {"natural": 7, "specialized": 4, "structured": 8}


def _image_bytes(color: tuple[int, int, int], fmt: str = "webp", size: tuple[int, int] = (5, 3)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt, **({"lossless": True} if fmt == "webp" else {}))
    return buf.getvalue()


def _color(label: int, i: int) -> tuple[int, int, int]:
    return (10 * label, i, 200)


def _tar(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _wds(root: Path, folder: str, splits: dict[str, list[list[int]]], classnames: list[str] | None = None) -> Path:
    """root/folder/<split>/<shard>.tar with samples s%07d.webp + .cls, the CLIP-benchmark export layout."""
    base = root / folder
    index = 0
    for split, shards in splits.items():
        for shard_no, labels in enumerate(shards):
            members = {}
            for label in labels:
                members[f"s{index:07d}.webp"] = _image_bytes(_color(label, index))
                members[f"s{index:07d}.cls"] = str(label).encode()
                index += 1
            _tar(base / split / f"{shard_no}.tar", members)
        (base / split / "nshards.txt").write_text(f"{len(shards)}\n")
    if classnames:
        (base / "classnames.txt").write_text("\n".join(classnames) + "\n")
    return base


def test_table_has_the_19_tasks_in_their_groups():
    groups = [t.group for t in VTAB_TASKS.values()]
    assert {g: groups.count(g) for g in GROUPS} == GROUPS and len(VTAB_TASKS) == 19
    assert "dsprites_ori" in VTAB_TASKS and "kitti_dist" in VTAB_TASKS


def test_webdataset_export_is_read_with_labels_images_and_classnames(tmp_path):
    # train: 2 shards (the second named 10.tar sorts after 2.tar numerically), 10 samples; test: 4
    base = _wds(tmp_path, "wds_vtab-dtd", {"train": [[0, 1, 2], [1, 1]], "test": [[2, 0, 1, 0]]}, ["a", "b", "c"])
    (base / "train" / "1.tar").rename(base / "train" / "10.tar")
    _tar(base / "train" / "2.tar", {f"s{i:07d}.{ext}": data for i in (90, 91, 92, 93, 94) for ext, data in
         (("png", _image_bytes(_color(2, i), "png")), ("cls", b"2\n"))})  # fmt: skip
    (task,) = load_tasks("vtab:dtd", vtab_root=tmp_path)
    assert (task.name, task.group, task.classes, task.source) == ("dtd", "natural", ["a", "b", "c"], str(base))
    # train order: 0.tar (0, 1, 2), 2.tar (2 x5), 10.tar (1, 1); fewer than 1000 -> val is the last fifth (2)
    assert list(task.train.labels) + list(task.val.labels) == [0, 1, 2, 2, 2, 2, 2, 2, 1, 1]
    assert (len(task.train), len(task.val), list(task.test.labels)) == (8, 2, [2, 0, 1, 0])
    pixels = task.test.images([0, 3])
    assert pixels.shape == (2, 3, 3, 5) and pixels[0, :, 0, 0].tolist() == list(_color(2, 5))
    assert pixels[1, :, 0, 0].tolist() == list(_color(0, 8))  # test samples follow the 5 train ones
    assert task.train.images([3], size=4).shape == (1, 3, 4, 4)
    assert task.train.images([3])[0, :, 0, 0].tolist() == list(_color(2, 90))


def test_train_val_split_takes_val_from_800_to_1000():
    split = ArraySplit(np.zeros((1200, 1, 1, 3), np.uint8), np.arange(1200))
    train, val = _train_val(split, None)
    assert list(val.labels) == list(range(800, 1000))
    assert list(train.labels[:800]) == list(range(800)) and list(train.labels[800:]) == list(range(1000, 1200))


def test_missing_data_names_the_exact_folders(tmp_path, monkeypatch):
    monkeypatch.delenv("VIVI_VTAB_ROOT", raising=False)
    with pytest.raises(UserError, match="--vtab-root DIR or set VIVI_VTAB_ROOT"):
        load_tasks("vtab:dtd")
    monkeypatch.setenv("VIVI_VTAB_ROOT", str(tmp_path))
    _wds(tmp_path, "wds_vtab-dtd", {"train": [[0, 1]], "test": [[0, 1]]})
    with pytest.raises(UserError) as info:
        load_tasks("vtab-1k")
    message = str(info.value)
    assert "18 task(s)" in message and "dtd:" not in message and "\n" not in message
    assert f"cifar100: {tmp_path / 'wds_vtab-cifar100'}/{{train,test}}/*.tar or {tmp_path / 'cifar100'}/<version>/" in message
    assert f"{tmp_path / 'wds_vtab-dsprites_label_orientation'}" in message
    assert [t.name for t in load_tasks("vtab:dtd")] == ["dtd"]


def test_unknown_vtab_task_lists_the_available_ones(tmp_path):
    with pytest.raises(UserError, match=r"unknown task cifar \(available: caltech101, cifar100, dtd,"):
        load_tasks("vtab:cifar", vtab_root=tmp_path)


def test_bad_shards_are_named(tmp_path):
    base = _wds(tmp_path, "wds_vtab-svhn", {"train": [[0, 1]], "test": [[0, 1]]})
    with pytest.raises(UserError, match=r"no test/ folder"):
        (base / "test" / "0.tar").rename(base / "0.tar")
        (base / "test" / "nshards.txt").unlink()
        (base / "test").rmdir()
        load_tasks("vtab:svhn", vtab_root=tmp_path)
    _tar(base / "test" / "0.tar", {"s1.webp": _image_bytes((1, 2, 3))})
    with pytest.raises(UserError, match=r"0\.tar: sample s1 lacks a \.cls label"):
        load_tasks("vtab:svhn", vtab_root=tmp_path)
    _tar(base / "test" / "0.tar", {"s1.webp": b"RIFF garbage", "s1.cls": b"1"})
    (task,) = load_tasks("vtab:svhn", vtab_root=tmp_path)
    with pytest.raises(UserError, match=r"test/0\.tar \(s1\.webp\): unreadable image"):
        task.test.images([0])
    (base / "test" / "0.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(UserError, match=r"test/0\.tar: unreadable shard"):
        load_tasks("vtab:svhn", vtab_root=tmp_path)


# ---- TFDS: Examples encoded with protobuf itself (an independent encoder), framed by TensorBoard's writer


def _example_class():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="vivi_test_example.proto", package="vt", syntax="proto3")
    for name, kind in (("BytesList", F.TYPE_BYTES), ("FloatList", F.TYPE_FLOAT), ("Int64List", F.TYPE_INT64)):
        fdp.message_type.add(name=name).field.add(name="value", number=1, type=kind, label=F.LABEL_REPEATED)
    feature = fdp.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, name, msg in ((1, "bytes_list", "BytesList"), (2, "float_list", "FloatList"), (3, "int64_list", "Int64List")):
        feature.field.add(name=name, number=number, type=F.TYPE_MESSAGE, type_name=f".vt.{msg}",
                          label=F.LABEL_OPTIONAL, oneof_index=0)  # fmt: skip
    features = fdp.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, type_name=".vt.Feature", label=F.LABEL_OPTIONAL)
    features.field.add(name="feature", number=1, type=F.TYPE_MESSAGE, type_name=".vt.Features.FeatureEntry",
                       label=F.LABEL_REPEATED)  # fmt: skip
    fdp.message_type.add(name="Example").field.add(name="features", number=1, type=F.TYPE_MESSAGE,
                                                    type_name=".vt.Features", label=F.LABEL_OPTIONAL)  # fmt: skip
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("vt.Example"))


def _example(image: bytes, ints: dict[str, list[int]], floats: dict[str, list[float]] | None = None) -> bytes:
    ex = _example_class()()
    ex.features.feature["image"].bytes_list.value.append(image)
    for k, v in ints.items():
        ex.features.feature[k].int64_list.value.extend(v)
    for k, v in (floats or {}).items():
        ex.features.feature[k].float_list.value.extend(v)
    return ex.SerializeToString()


def _tfrecord(path: Path, records: list[bytes]) -> None:
    from tensorboard.summary.writer.record_writer import RecordWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        writer = RecordWriter(f)
        for r in records:
            writer.write(r)


def test_example_parser_matches_protobuf():
    data = _example(b"\x00img", {"label": [7], "neg": [-3, 300]}, {"xyz": [1.5, -2.0, 9.25]})
    ex = parse_example(data)
    assert ex == {"image": [b"\x00img"], "label": [7], "neg": [-3, 300], "xyz": [1.5, -2.0, 9.25]}


def test_tfds_data_dir_is_read(tmp_path):
    d = tmp_path / "cifar100" / "3.0.2"
    train = [_example(_image_bytes(_color(i % 3, i), "png"), {"label": [i % 3], "coarse_label": [0]}) for i in range(6)]
    _tfrecord(d / "cifar100-train.tfrecord-00000-of-00002", train[:4])
    _tfrecord(d / "cifar100-train.tfrecord-00001-of-00002", train[4:])
    _tfrecord(d / "cifar100-test.tfrecord-00000-of-00001", [_example(_image_bytes((9, 9, 9), "png"), {"label": [2]})])
    (tmp_path / "cifar100" / "1.0.0").mkdir()  # an older, empty version folder is ignored
    (task,) = load_tasks("vtab:cifar100", vtab_root=tmp_path)
    assert list(task.train.labels) + list(task.val.labels) == [0, 1, 2, 0, 1, 2] and len(task.val) == 1
    assert list(task.test.labels) == [2] and task.test.images([0])[0, :, 1, 1].tolist() == [9, 9, 9]
    assert task.train.images([4])[0, :, 0, 0].tolist() == list(_color(1, 4))


def test_tfds_structured_labels_follow_vtab(tmp_path):
    d = tmp_path / "dsprites" / "2.0.0"
    img = _image_bytes((1, 1, 1), "png")
    orientations = [0, 2, 3, 39, 20, 10, 5, 30, 25, 38]
    _tfrecord(d / "dsprites-train.tfrecord-00000-of-00001",
              [_example(img, {"label_orientation": [o], "label_x_position": [o % 32]}) for o in orientations])  # fmt: skip
    (task,) = load_tasks("vtab:dsprites_ori", vtab_root=tmp_path)
    # 40 orientations -> 16 bins; no test split: test is the last fifth, val the last fifth of the rest
    assert list(task.test.labels) == [10, 15] and list(task.val.labels) == [12]
    assert list(task.train.labels) == [0, 0, 1, 15, 8, 4, 2]

    d = tmp_path / "clevr" / "3.1.0"
    rows = [(5, [8.7, 12.0]), (3, [7.0]), (10, [9.9, 10.5])]
    examples = [_example(img, {"objects/size": [0] * n}, {"objects/pixel_coords": [v for z in zs for v in (1.0, 2.0, z)]})
                for n, zs in rows]  # fmt: skip
    _tfrecord(d / "clevr-train.tfrecord-00000-of-00001", examples * 2)
    _tfrecord(d / "clevr-validation.tfrecord-00000-of-00001", examples)
    count, dist = load_tasks("vtab:clevr_count,clevr_dist", vtab_root=tmp_path)
    assert list(count.test.labels) == [2, 0, 7]  # objects - 3
    assert list(dist.test.labels) == [2, 0, 4]  # closest depth 8.7, 7.0, 9.9 in bins [8, 8.5, 9, 9.5, 10]


def test_tfds_kitti_closest_vehicle_distance_is_binned_as_vtab(tmp_path):
    """Hand-worked: TFDS kitti types 0-2 are Car/Van/Truck; z is the 3rd of each location triple.
    VTAB's classes: closest vehicle <= 8 m, (8, 20], (20, 999], and no vehicle."""
    d = tmp_path / "kitti" / "3.3.0"
    img = _image_bytes((1, 1, 1), "png")
    rows = [  # (types, depths) -> label
        ([0, 3], [30.0, 2.0], 2),  # the pedestrian (3) at 2 m does not count; the car at 30 m does
        ([1, 2], [8.0, 25.0], 0),  # exactly 8 m is still the nearest bin
        ([2], [8.5], 1),
        ([3, 5], [4.0, 6.0], 3),  # no vehicle
        ([], [], 3),  # no object at all
        ([0, 0], [21.0, 20.0], 1),
    ]
    examples = [_example(img, {"objects/type": types}, {"objects/location": [v for z in zs for v in (0.5, 1.0, z)]})
                for types, zs, _ in rows]  # fmt: skip
    for split in ("train", "validation", "test"):
        _tfrecord(d / f"kitti-{split}.tfrecord-00000-of-00001", examples)
    (task,) = load_tasks("vtab:kitti_dist", vtab_root=tmp_path)
    assert list(task.test.labels) == [label for *_, label in rows]
    assert list(task.val.labels) == [label for *_, label in rows]
