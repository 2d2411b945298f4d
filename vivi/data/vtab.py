"""The 19 VTAB tasks, read from a local copy: CLIP-benchmark WebDataset exports or a TFDS data dir.

Nothing is downloaded. Under one root folder (``--vtab-root`` or ``$VIVI_VTAB_ROOT``) each
task is found as either

- ``ROOT/wds_vtab-<name>/{train,test}/*.tar`` (+ optional ``validation/``,
  ``classnames.txt``): the layout of CLIP-benchmark's ``wds_vtab-*`` exports; each sample
  is ``<key>.webp|png|jpg`` plus ``<key>.cls`` holding the integer class; or
- ``ROOT/<tfds dataset>[/<config>]/<version>/<dataset>-<split>.tfrecord-*``: a TFDS data dir
  (read without TensorFlow; the label is derived from the Example as VTAB does).

Splits: val is the ``validation`` split when present, otherwise train[800:1000] (fewer
than 1000 train examples: the last fifth), and train is the rest, so VTAB-1k's train800 /
val200 are the first 1000 examples of the train split. TFDS datasets without a labelled
test split use the one named in the table (or the last fifth of train).
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from vivi.data.tasks import ImageSplit, ImageTask, resize
from vivi.data.tfrecord import TFRecordError, int_feature, parse_example, read_record, read_records
from vivi.errors import UserError

ROOT_ENV = "VIVI_VTAB_ROOT"
WDS_IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")
N_TRAIN, N_VAL = 800, 200


def _label(key: str) -> Callable[[dict], int]:
    return lambda ex: int(int_feature(ex, key)[0])


def _binned(key: str, levels: int, bins: int) -> Callable[[dict], int]:
    """VTAB's dSprites tasks: ``levels`` label values coarsened to ``bins`` classes."""
    return lambda ex: int(int_feature(ex, key)[0]) * bins // levels


def _clevr_count(ex: dict) -> int:
    return len(ex.get("objects/size", [])) - 3  # 3..10 objects -> 8 classes


def _clevr_dist(ex: dict) -> int:
    """Depth of the closest object, in VTAB's bins [0, 8, 8.5, 9, 9.5, 10, 100)."""
    z = np.asarray(ex.get("objects/pixel_coords", []), dtype=np.float64).reshape(-1, 3)[:, 2]
    return int(np.digitize(z.min(), [8.0, 8.5, 9.0, 9.5, 10.0]))


def _kitti_closest_vehicle(ex: dict) -> int:
    """Depth of the closest Car/Van/Truck (TFDS kitti types 0-2), as VTAB bins it: <= 8 m, <= 20 m,
    farther, or no vehicle at all (class 3)."""
    types = np.asarray(ex.get("objects/type", []), dtype=np.int64)
    z = np.asarray(ex.get("objects/location", []), dtype=np.float64).reshape(-1, 3)[:, 2]
    if len(types) != len(z):
        raise ValueError(f"{len(types)} object types but {len(z)} locations")
    vehicles = z[types < 3]
    dist = vehicles.min() if len(vehicles) else 1000.0
    return int(np.sum(dist > np.array([8.0, 20.0, 999.0])))


@dataclass(frozen=True)
class VtabTask:
    """Where a VTAB task lives in each layout, and how its label is derived from a TFDS Example."""

    name: str
    group: str
    wds: str  # CLIP-benchmark folder name
    tfds: str  # TFDS dataset[/config] folder
    tfds_label: Callable[[dict], int]
    tfds_test: str = "test"


VTAB_TASKS: dict[str, VtabTask] = {
    t.name: t
    for t in [
        VtabTask("caltech101", "natural", "wds_vtab-caltech101", "caltech101", _label("label")),
        VtabTask("cifar100", "natural", "wds_vtab-cifar100", "cifar100", _label("label")),
        VtabTask("dtd", "natural", "wds_vtab-dtd", "dtd", _label("label")),
        VtabTask("oxford_flowers102", "natural", "wds_vtab-flowers", "oxford_flowers102", _label("label")),
        VtabTask("oxford_iiit_pet", "natural", "wds_vtab-pets", "oxford_iiit_pet", _label("label")),
        VtabTask("sun397", "natural", "wds_sun397", "sun397", _label("label")),
        VtabTask("svhn", "natural", "wds_vtab-svhn", "svhn_cropped", _label("label")),
        VtabTask("patch_camelyon", "specialized", "wds_vtab-pcam", "patch_camelyon", _label("label")),
        VtabTask("eurosat", "specialized", "wds_vtab-eurosat", "eurosat/rgb", _label("label"), tfds_test=""),
        VtabTask("resisc45", "specialized", "wds_vtab-resisc45", "resisc45", _label("label"), tfds_test=""),
        VtabTask("diabetic_retinopathy", "specialized", "wds_vtab-diabetic_retinopathy",
                 "diabetic_retinopathy_detection/btgraham-300", _label("label")),  # fmt: skip
        VtabTask("clevr_count", "structured", "wds_vtab-clevr_count_all", "clevr", _clevr_count, "validation"),
        VtabTask("clevr_dist", "structured", "wds_vtab-clevr_closest_object_distance", "clevr", _clevr_dist,
                 "validation"),  # fmt: skip
        VtabTask("dmlab", "structured", "wds_vtab-dmlab", "dmlab", _label("label")),
        VtabTask("kitti_dist", "structured", "wds_vtab-kitti_closest_vehicle_distance", "kitti", _kitti_closest_vehicle),
        VtabTask("dsprites_loc", "structured", "wds_vtab-dsprites_label_x_position", "dsprites",
                 _binned("label_x_position", 32, 16), tfds_test=""),  # fmt: skip
        VtabTask("dsprites_ori", "structured", "wds_vtab-dsprites_label_orientation", "dsprites",
                 _binned("label_orientation", 40, 16), tfds_test=""),  # fmt: skip
        VtabTask("smallnorb_azi", "structured", "wds_vtab-smallnorb_label_azimuth", "smallnorb",
                 _label("label_azimuth")),  # fmt: skip
        VtabTask("smallnorb_ele", "structured", "wds_vtab-smallnorb_label_elevation", "smallnorb",
                 _label("label_elevation")),  # fmt: skip
    ]
}


class BlobSplit(ImageSplit):
    """Images stored as byte ranges of container files (tar members, TFRecord records)."""

    def __init__(self, blobs: Sequence[tuple[Path, int, int, str]], labels: np.ndarray,
                 extract: Callable[[bytes], bytes] | None = None) -> None:  # fmt: skip
        super().__init__(labels)
        if len(blobs) != len(self.labels):
            raise ValueError(f"{len(blobs)} images but {len(self.labels)} labels")
        self.blobs = list(blobs)  # (file, offset, length, name for errors)
        self.extract = extract  # container record -> encoded image bytes

    def images(self, indices: Sequence[int] | np.ndarray, size: int | None = None) -> torch.Tensor:
        batch = [resize(self._decode(int(i)), size) for i in np.asarray(indices, dtype=np.int64)]
        shapes = {tuple(x.shape) for x in batch}
        if len(shapes) > 1:
            raise ValueError(f"images differ in size {sorted(shapes)}; pass size= to resize them")
        return torch.stack(batch)

    def _decode(self, i: int) -> torch.Tensor:
        path, offset, length, name = self.blobs[i]
        try:
            data = read_record(path, offset, length)
            if self.extract is not None:
                data = self.extract(data)
            with Image.open(io.BytesIO(data)) as img:
                rgb = img.convert("RGB")
        except (OSError, ValueError, SyntaxError, TFRecordError, Image.DecompressionBombError) as e:
            raise UserError(f"{path} ({name}): unreadable image ({e})") from e
        return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).contiguous()

    def subset(self, indices: Sequence[int] | np.ndarray) -> BlobSplit:
        idx = np.asarray(indices, dtype=np.int64)
        return BlobSplit([self.blobs[i] for i in idx], self.labels[idx], self.extract)


def vtab_root(root: Path | None) -> Path:
    """``root``, else ``$VIVI_VTAB_ROOT``; says how to provide one when neither is set."""
    if root is None:
        if not os.environ.get(ROOT_ENV):
            raise UserError(
                f"VTAB data: pass --vtab-root DIR or set {ROOT_ENV}; DIR holds one folder per task, "
                "e.g. DIR/wds_vtab-cifar100/{train,test}/*.tar (CLIP-benchmark) or DIR/cifar100/<version>/ (TFDS)"
            )
        root = Path(os.environ[ROOT_ENV])
    return Path(root).expanduser()


def load_vtab(names: Sequence[str], root: Path | None = None) -> list[ImageTask]:
    """The named VTAB tasks (all 19 when empty), each from whichever layout is present under root."""
    unknown = [n for n in names if n not in VTAB_TASKS]
    if unknown:
        raise UserError(f"vtab: unknown task {', '.join(unknown)} (available: {', '.join(VTAB_TASKS)})")
    specs = [VTAB_TASKS[n] for n in (names or VTAB_TASKS)]
    root = vtab_root(root)
    missing = [s for s in specs if not (root / s.wds).is_dir() and _tfds_dir(root, s) is None]
    if missing:
        where = "; ".join(
            f"{s.name}: {root / s.wds}/{{train,test}}/*.tar or {root / s.tfds}/<version>/" for s in missing
        )
        raise UserError(f"VTAB data missing for {len(missing)} task(s) under {root} ({where})")
    return [_load_wds(root / s.wds, s) if (root / s.wds).is_dir() else _load_tfds(root, s) for s in specs]


def _train_val(train: ImageSplit, val: ImageSplit | None) -> tuple[ImageSplit, ImageSplit]:
    """Val: the given split, else train[800:1000] (or the last fifth of a smaller train); train: the rest."""
    if val is not None:
        return train, val
    n = len(train)
    n_val = N_VAL if n >= N_TRAIN + N_VAL else max(1, n // 5) if n > 1 else 0
    start = min(N_TRAIN, n - n_val)
    held = np.arange(start, start + n_val)
    return train.subset(np.setdiff1d(np.arange(n), held)), train.subset(held)


def _task(spec: VtabTask, train: ImageSplit, val: ImageSplit | None, test: ImageSplit,
          classes: list[str], source: Path) -> ImageTask:  # fmt: skip
    n, given = len(train), val is not None
    train, val = _train_val(train, val)
    start = min(N_TRAIN, n - len(val))  # where _train_val took val from, when it did
    val_from = "validation split" if given else f"train[{start}:{start + len(val)}]"
    for split_name, split in (("train", train), ("val", val), ("test", test)):
        if len(split) == 0:
            raise UserError(f"{source}: the {split_name} split of {spec.name} is empty")
    n_classes = max(len(classes), int(max(train.labels.max(), test.labels.max(), val.labels.max())) + 1)
    classes = classes + [str(c) for c in range(len(classes), n_classes)]
    return ImageTask(spec.name, spec.group, classes, train, val, test, source=str(source), val_from=val_from)


# ---- CLIP-benchmark WebDataset exports


def _shard_number(path: Path) -> tuple[int, str]:
    digits = re.findall(r"\d+", path.stem)
    return (int(digits[-1]) if digits else -1, path.name)


def _load_wds(folder: Path, spec: VtabTask) -> ImageTask:
    splits = {}
    for name in ("train", "validation", "val", "test"):
        if (folder / name).is_dir():
            splits[name] = _read_wds_split(folder / name)
    for need in ("train", "test"):
        if need not in splits:
            raise UserError(f"{folder}: no {need}/ folder with .tar shards (CLIP-benchmark layout: {need}/0.tar, ...)")
    val = splits.get("validation", splits.get("val"))
    names_file = folder / "classnames.txt"
    classes = []
    if names_file.exists():
        classes = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
    return _task(spec, splits["train"], val, splits["test"], classes, folder)


def _read_wds_split(split_dir: Path) -> BlobSplit:
    """Index every sample of the split's shards: image member location + the class from ``.cls``."""
    shards = sorted(split_dir.glob("*.tar"), key=_shard_number)
    if not shards:
        raise UserError(f"{split_dir}: no .tar shards")
    blobs, labels = [], []
    for shard in shards:
        samples: dict[str, dict] = {}
        try:
            with tarfile.open(shard) as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    base = m.name.rsplit("/", 1)[-1]
                    key, _, ext = base.partition(".")
                    sample = samples.setdefault(m.name[: len(m.name) - len(base)] + key, {})
                    ext = ext.lower()
                    if ext == "cls":
                        sample["cls"] = tar.extractfile(m).read().decode().strip()
                    elif ext in WDS_IMAGE_EXTENSIONS:
                        sample["image"] = (m.offset_data, m.size, base)
        except (tarfile.TarError, OSError, UnicodeDecodeError) as e:
            raise UserError(f"{shard}: unreadable shard ({e})") from e
        for key, sample in samples.items():
            if "image" not in sample or "cls" not in sample:
                lacks = "an image (.webp/.png/.jpg)" if "image" not in sample else "a .cls label"
                raise UserError(f"{shard}: sample {key} lacks {lacks}")
            try:
                label = int(sample["cls"])
            except ValueError:
                raise UserError(f"{shard}: sample {key} has a non-integer class {sample['cls']!r}") from None
            offset, size, name = sample["image"]
            blobs.append((shard, offset, size, name))
            labels.append(label)
    return BlobSplit(blobs, np.asarray(labels, dtype=np.int64))


# ---- TFDS data dirs


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", path.name))


def _tfds_dir(root: Path, spec: VtabTask) -> Path | None:
    """The newest version folder of the task's TFDS dataset holding TFRecord files, if any."""
    base = root / spec.tfds
    if not base.is_dir():
        return None
    versions = sorted((p for p in base.iterdir() if p.is_dir() and any(p.glob("*.tfrecord*"))), key=_version_key)
    return versions[-1] if versions else None


def _load_tfds(root: Path, spec: VtabTask) -> ImageTask:
    folder = _tfds_dir(root, spec)
    assert folder is not None
    dataset = spec.tfds.split("/")[0]
    train = _read_tfds_split(folder, dataset, "train", spec.tfds_label)
    if train is None:
        raise UserError(f"{folder}: no {dataset}-train.tfrecord* files")
    val = _read_tfds_split(folder, dataset, "validation", spec.tfds_label) if spec.tfds_test != "validation" else None
    test = _read_tfds_split(folder, dataset, spec.tfds_test, spec.tfds_label) if spec.tfds_test else None
    if test is None:  # no labelled test split: the last fifth of train
        n = len(train)
        cut = n - n // 5
        train, test = train.subset(np.arange(cut)), train.subset(np.arange(cut, n))
    return _task(spec, train, val, test, [], folder)


def _tfds_image(record: bytes) -> bytes:
    values = parse_example(record).get("image")
    if not values:
        raise TFRecordError("Example has no 'image' feature")
    return values[0]


def _read_tfds_split(folder: Path, dataset: str, split: str, label: Callable[[dict], int]) -> BlobSplit | None:
    files = sorted(folder.glob(f"{dataset}-{split}.tfrecord*"))
    if not files:
        return None
    blobs, labels = [], []
    for path in files:
        try:
            for i, (offset, data) in enumerate(read_records(path)):
                labels.append(label(parse_example(data)))
                blobs.append((path, offset, len(data), f"record {i}"))
        except (TFRecordError, IndexError, ValueError, OSError) as e:
            raise UserError(f"{path}: unreadable TFRecord of Examples ({e})") from e
    return BlobSplit(blobs, np.asarray(labels, dtype=np.int64), extract=_tfds_image)
