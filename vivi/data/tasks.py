"""Downstream image-classification tasks: the built-in mini-VTAB suite, image folders, VTAB.

Every task has train/val/test splits of RGB images with integer labels. A split hands out
uint8 tensors ``[n, 3, H, W]`` one batch of indices at a time, so evaluation never holds a
whole data set as floats and image folders are decoded lazily.
"""

from __future__ import annotations

import json
import os
import re
import stat
import struct
import sys
import tempfile
import unicodedata
import warnings
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

from vivi.data.files import JUNK_NAMES, file_id, ignored_note, input_dir, is_hidden, walk_files_and_hidden
from vivi.data.frames import to_rgb
from vivi.errors import UserError, listed, warn

MINI_VTAB = "mini-vtab"
VTAB_1K = "vtab-1k"
# Extensions of formats PIL reads everywhere, then those it reads where its build can (AVIF needs
# libavif): a camera's .jpe, a favicon's .ico or a game's .tga was left out with a warning although
# PIL opens it. HEIC has no plugin in PIL and stays out.
BASE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pnm")
OPTIONAL_EXTENSIONS = {".jpe": "jpg", ".pbm": None, ".ico": None, ".tga": None, ".avif": "avif"}


def _readable_extensions() -> tuple[str, ...]:
    """:data:`BASE_EXTENSIONS` and those of :data:`OPTIONAL_EXTENSIONS` this PIL can open."""
    registered = Image.registered_extensions()
    extra = tuple(e for e, feature in OPTIONAL_EXTENSIONS.items()
                  if e in registered and (feature is None or _has_feature(feature)))  # fmt: skip
    return BASE_EXTENSIONS + extra


def _has_feature(name: str) -> bool:
    """Whether PIL was built with the codec or module ``name`` (``jpg``, ``avif``)."""
    from PIL import features

    with warnings.catch_warnings():  # a name this PIL does not know: a warning, and False
        warnings.simplefilter("ignore")
        return bool(features.check(name))


IMAGE_EXTENSIONS = _readable_extensions()
SPLITS = ("train", "val", "test")
VAL_FRACTION = 0.2  # held out of train/ when an image folder has no val/
VAL_SEED = 0
SPEC_HELP = "use mini-vtab, mini-vtab:<task>[,<task>...], vtab-1k, vtab:<task>[,<task>...] or imagefolder:DIR"


class ImageSplit(ABC):
    """Images with integer labels, read one batch of indices at a time."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        # file -> reason, for files that failed to decode when a batch was read (shared with
        # subsets); they were handed out as black images, and every consumer drops them
        self.broken: dict[Path, str] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def readable(self) -> np.ndarray:
        """Boolean mask of the images that decoded (all of them unless a read met a broken file)."""
        return np.ones(len(self), dtype=bool)

    @abstractmethod
    def images(self, indices: Sequence[int] | np.ndarray, size: int | None = None) -> torch.Tensor:
        """uint8 ``[n, 3, H, W]``; with ``size`` every image is resized to size x size first."""

    @abstractmethod
    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSplit:
        """The same images restricted to ``indices`` (for held-out splits and few-shot subsets)."""


class ArraySplit(ImageSplit):
    """A split held in memory as uint8 NHWC, the layout of the mini-VTAB ``.npz`` files."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        super().__init__(labels)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images [n, H, W, 3], got {images.dtype} {images.shape}")
        if len(images) != len(self.labels):
            raise ValueError(f"{len(images)} images but {len(self.labels)} labels")
        self.array = images

    def images(self, indices: Sequence[int] | np.ndarray, size: int | None = None) -> torch.Tensor:
        batch = torch.from_numpy(self.array[np.asarray(indices, dtype=np.int64)]).permute(0, 3, 1, 2)
        return resize(batch, size).contiguous()

    def subset(self, indices: Sequence[int] | np.ndarray) -> ArraySplit:
        idx = np.asarray(indices, dtype=np.int64)
        return ArraySplit(self.array[idx], self.labels[idx])


class FileSplit(ImageSplit):
    """A split of image files, decoded with PIL only when a batch is requested."""

    def __init__(self, paths: Sequence[Path], labels: np.ndarray, broken: dict[Path, str] | None = None) -> None:
        super().__init__(labels)
        if len(paths) != len(self.labels):
            raise ValueError(f"{len(paths)} paths but {len(self.labels)} labels")
        self.paths = list(paths)
        self.broken = self.broken if broken is None else broken

    def readable(self) -> np.ndarray:
        return np.array([p not in self.broken for p in self.paths], dtype=bool)

    def images(self, indices: Sequence[int] | np.ndarray, size: int | None = None) -> torch.Tensor:
        """Decoded images; a broken file becomes a black image recorded in :attr:`broken`
        (with ``size`` only: an hour of evaluation is not lost to one bad file)."""
        batch = [self._image(int(i), size) for i in np.asarray(indices, dtype=np.int64)]
        shapes = {tuple(x.shape) for x in batch}
        if len(shapes) > 1:
            raise ValueError(f"images differ in size {sorted(shapes)}; pass size= to resize them")
        return torch.stack(batch)

    def _image(self, i: int, size: int | None) -> torch.Tensor:
        try:
            return resize(read_image(self.paths[i], size), size)
        except UnreadableImage as e:
            if size is None:
                raise
            self.broken[self.paths[i]] = e.reason
            return torch.zeros(3, size, size, dtype=torch.uint8)

    def subset(self, indices: Sequence[int] | np.ndarray) -> FileSplit:
        idx = np.asarray(indices, dtype=np.int64)
        return FileSplit([self.paths[i] for i in idx], self.labels[idx], self.broken)


@dataclass(frozen=True)
class ImageTask:
    """One classification task; ``group`` is natural | specialized | structured | custom."""

    name: str
    group: str
    classes: list[str]
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    source: str = ""  # where the task was read from, for error messages
    val_from: str = ""  # how val was made (val/, held out of train/, ...): copied into results entries
    held_out: HeldOut | None = None  # val held out of train/: drawn again once it is known what decodes


@dataclass(frozen=True)
class HeldOut:
    """An image folder without val/: the files of train/ (``pool``) and the positions in it of the
    first draw's train and val (``train_idx``, ``val_idx``: what ``task.train`` / ``task.val`` hold).

    That draw is over every file, as which ones decode is known only once they are read. Drawn
    again by :meth:`redraw` over the files that decoded, after the features of train and val are
    extracted (each file decoded once): a class whose held-out files were all broken was missing
    from val, and the probe's C was chosen without it (50% instead of 100%)."""

    pool: FileSplit
    train_idx: np.ndarray
    val_idx: np.ndarray

    def redraw(self) -> tuple[np.ndarray, np.ndarray]:
        """(train, val) positions in ``pool``, held out among the files that decoded so far."""
        ok = np.flatnonzero(self.pool.readable())
        kept, held = stratified_holdout(self.pool.labels[ok], VAL_FRACTION, VAL_SEED)
        return _copies_held_too(self.pool, ok[kept], ok[held])


def check_readable(
    task: ImageTask, train_y: np.ndarray, test_y: np.ndarray, val_y: np.ndarray | None = None
) -> None:
    """After dropping unreadable images every class must still have training images and the
    test split some image: a class silently lost would change what is measured. With ``val_y``
    (protocols that choose a setting on val) val must keep an image too: a small folder's
    held-out fifth can be a single file, and when that one was broken the probe's sweep
    stopped with a scikit-learn traceback about an empty array."""
    lost = sorted(set(range(len(task.classes))) - set(np.unique(train_y).tolist()))
    if lost:
        names = ", ".join(task.classes[c] for c in lost)
        where = task.source or task.name
        raise UserError(f"{where}: no readable training image left in class {names}; {skipped_text(task)}")
    if len(test_y) == 0:
        raise UserError(f"{task.source or task.name}: no readable test image; {skipped_text(task)}")
    if val_y is not None and len(val_y) == 0:
        raise UserError(
            f"{task.source or task.name}: no readable validation image (val/, or the fifth of train/ held out "
            f"when there is no val/) to choose the probe's setting on; {skipped_text(task)}"
        )


def skipped_images(task: ImageTask) -> list[str]:
    """``path (reason)`` of every image of ``task`` that was found unreadable so far."""
    broken = {p: r for name in ("train", "val", "test") for p, r in getattr(task, name).broken.items()}
    return [f"{p} ({r})" for p, r in broken.items()]


def skipped_text(task: ImageTask) -> str:
    skipped = skipped_images(task)
    return f"skipped {len(skipped)} unreadable image{'s' if len(skipped) != 1 else ''}: {listed(skipped)}"


def resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Antialiased bilinear resize to size x size, no crop or augmentation (as VTAB does)."""
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    return TF.resize(images, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)


class UnreadableImage(UserError):
    """An image file that does not decode; ``reason`` is short and names no temporary object."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: unreadable image ({reason})")
        self.path, self.reason = path, reason


# RuntimeError: PIL's AVIF decoder (a web image saved under a .jpg name, say) raises it for a damaged file
IMAGE_READ_ERRORS = (OSError, ValueError, SyntaxError, RuntimeError, Image.DecompressionBombError)

# PIL refuses images over 2x its MAX_IMAGE_PIXELS (~179 Mpx) as possible decompression bombs and
# warns above 1x. A scan or panorama of one's own may be that large: the limit can be raised.
MAX_PIXELS_ENV = "VIVI_MAX_IMAGE_PIXELS"


def _env_pixel_limit() -> int | None:
    """The pixel count ``VIVI_MAX_IMAGE_PIXELS`` allows (None: unset, PIL's own limit applies).
    PIL refuses above twice its ``MAX_IMAGE_PIXELS``, so that is set to half the value, rounded
    up: an image of exactly the value is read, and :func:`over_pixel_limit` holds the rest to it."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not value:
        return None
    if not value.isdigit():
        warn(f"{MAX_PIXELS_ENV}={os.environ[MAX_PIXELS_ENV]}: not a whole number of pixels; PIL's limit "
             f"of {2 * Image.MAX_IMAGE_PIXELS} applies")  # fmt: skip
        return None
    Image.MAX_IMAGE_PIXELS = (int(value) + 1) // 2
    return int(value)


ENV_MAX_PIXELS = _env_pixel_limit()


def pixel_limit_reason(size: tuple[int, int] | None, pixels: int | None = None) -> str:
    """Why an image of ``size`` (``pixels`` when only the count is known) is refused: the limit a
    user set in ``VIVI_MAX_IMAGE_PIXELS``, named with its value (a low one read as "a possible
    decompression bomb" of "over 0 pixels"), or PIL's own, with the way to raise it."""
    if size is not None:
        pixels = size[0] * size[1]
    shape = f"{size[0]}x{size[1]} = {pixels} pixels" if size else f"{pixels} pixels" if pixels else "its size"
    if ENV_MAX_PIXELS is not None and Image.MAX_IMAGE_PIXELS == (ENV_MAX_PIXELS + 1) // 2:
        return f"{shape} exceeds the {MAX_PIXELS_ENV} limit of {ENV_MAX_PIXELS}; set it higher to read it"
    limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS is not None else "PIL's limit of"
    return (f"over {limit} pixels, refused as a possible decompression bomb ({shape}); "
            f"set {MAX_PIXELS_ENV} to a larger pixel count to read it")


def over_pixel_limit(size: tuple[int, int]) -> bool:
    """Whether an image of ``size`` is over ``VIVI_MAX_IMAGE_PIXELS`` (PIL checks its own limit,
    which is the value rounded up to even, and not at all for torchvision's JPEG decoder)."""
    return ENV_MAX_PIXELS is not None and size[0] * size[1] > ENV_MAX_PIXELS


@contextmanager
def quiet_pil() -> Iterator[None]:
    """PIL's warnings about a file it reads anyway, silenced: an image over 1x but under 2x the
    decompression-bomb limit (large, read), a palette image whose transparency is given per entry
    (what PNG optimisers write for the web; its colours convert alike), and damaged metadata
    ("Corrupt EXIF data", "Tag data larger than file": camera photos carry such). Each printed two
    lines naming PIL's source file, not the image, in the middle of the progress bar."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        yield


JPEG_START = b"\xff\xd8"
_capture: tuple[int, int] | None = None  # (pid, fd) of this process's file for libjpeg's messages


@contextmanager
def libjpeg_messages(into: list[str]) -> Iterator[None]:
    """libjpeg's warnings during the block ("Corrupt JPEG data: 3 extraneous bytes before marker
    0xd9", printed by torchvision's decoder straight to file descriptor 2, naming no file) appended
    to ``into`` instead, so the caller can name the file. A few system calls per decode."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to take over: nothing would be printed anyway
        yield
        return
    fd = _capture_fd()
    if sys.stderr is not None:  # what Python holds back goes out before the switch
        sys.stderr.flush()
    os.dup2(fd, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        end = os.lseek(fd, 0, os.SEEK_CUR)
        if end:
            os.lseek(fd, 0, os.SEEK_SET)
            text = os.read(fd, min(end, 4096)).decode("utf-8", "replace")
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            into += [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def _capture_fd() -> int:
    """An unlinked temporary file of this process (a forked loader worker makes its own: the
    parent's shares its offset)."""
    global _capture
    if _capture is None or _capture[0] != os.getpid():
        fd, name = tempfile.mkstemp(prefix="vivi-libjpeg-")
        os.unlink(name)
        _capture = (os.getpid(), fd)
    return _capture[1]


def damaged_note(path: Path | str, messages: list[str]) -> str:
    """One line naming a JPEG that decoded with libjpeg's complaints, and the first of them."""
    more = f" and {len(messages) - 1} more" if len(messages) > 1 else ""
    return f"{path}: damaged JPEG data, decoded anyway (libjpeg: {messages[0]}{more})"


_NOT_REGULAR = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
                (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))  # fmt: skip


def not_regular_reason(path: Path) -> str | None:
    """``not a regular file (a named pipe)`` for a FIFO, socket, device or folder named like an
    image (links followed: ``os.stat``), else None (a missing file or link loop: opening it says).
    Opening a named pipe with no writer blocks forever: one ``pipe.png`` hung a whole evaluation."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    kind = next((name for test, name in _NOT_REGULAR if test(mode)), None)
    return f"not a regular file ({kind})" if kind else None


def check_regular_file(path: Path) -> None:
    """Raise :class:`UnreadableImage` for a path that is no regular file, before anything opens it."""
    if reason := not_regular_reason(path):
        raise UnreadableImage(path, reason)


def image_error(path: Path, error: BaseException) -> UnreadableImage:
    """The user-facing error for ``path`` failing to decode with ``error``."""
    if path.is_symlink() and not path.exists():
        reason = "broken symbolic link"
    elif path.is_file() and path.stat().st_size == 0:
        reason = "empty file (0 bytes)"
    elif isinstance(error, UnidentifiedImageError):
        reason = "not an image format PIL can read"
    elif bomb := next((e for e in (error, error.__cause__) if isinstance(e, Image.DecompressionBombError)), None):
        reason = pixel_limit_reason(*_bomb_size(bomb))  # raised by PIL, or by load_frame naming it (its cause)
    else:
        reason = " ".join(str(error).split()) or type(error).__name__
    return UnreadableImage(path, reason)


def _bomb_size(error: Image.DecompressionBombError) -> tuple[tuple[int, int] | None, int | None]:
    """The refused image's ``(width, height)``, from the frame of PIL's check that raised (PIL's
    message gives only the pixel count), and that count; None where PIL changed either."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    size = tb.tb_frame.f_locals.get("size") if tb is not None else None
    if not (isinstance(size, tuple) and len(size) == 2 and all(isinstance(v, int) for v in size)):
        size = None
    found = re.search(r"\((\d+) pixels\)", str(error))
    return size, int(found.group(1)) if found else None


def read_image(path: Path, at_least: int | None = None) -> torch.Tensor:
    """Decode one file to uint8 ``[3, H, W]`` RGB, upright according to its EXIF orientation.
    With ``at_least``, a JPEG may be decoded at 1/2 .. 1/8 scale when both sides stay at least
    that large (a 12-megapixel phone photo decodes ~4x faster for a 64 px model)."""
    check_regular_file(path)
    try:
        with quiet_pil(), Image.open(path) as img:
            if over_pixel_limit(img.size):
                raise UnreadableImage(path, pixel_limit_reason(img.size))
            if at_least:
                img.draft("RGB", (at_least, at_least))
            img.load()  # the pixels: what fails after this is the metadata
            try:
                rgb = to_rgb(img)
            except EXIF_ERRORS:
                rgb = to_rgb(upright_without_metadata(img))
    except IMAGE_READ_ERRORS as e:
        raise image_error(path, e) from e
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).contiguous()


# What PIL's exif_transpose raises for a photo whose EXIF it reads but cannot write back after
# rotating (a tag of an unexpected type, a rational of denominator 0: Pillow issues #4665, #6882,
# #8605, #8965): the pixels are fine, and the command stopped with a traceback.
EXIF_ERRORS = (TypeError, ZeroDivisionError, struct.error, ValueError, IndexError, KeyError)
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}  # fmt: skip


def upright_without_metadata(img: Image.Image) -> Image.Image:
    """``img`` turned upright by its EXIF orientation, without EXIF or XMP (none to rewrite)."""
    try:
        orientation = int(img.getexif().get(0x0112, 1))
    except EXIF_ERRORS:
        orientation = 1
    method = _TRANSPOSE.get(orientation)
    upright = img.transpose(method) if method else img.copy()
    for key in ("exif", "xmp", "XML:com.adobe.xmp", "Raw profile type exif"):
        upright.info.pop(key, None)
    upright.getexif().clear()
    return upright


def default_cache_dir() -> Path:
    """Where generated suites live: ``$VIVI_CACHE`` or ``~/.cache/vivi``."""
    return Path(os.environ.get("VIVI_CACHE", Path.home() / ".cache" / "vivi")).expanduser()


def load_tasks(spec: str, cache_dir: Path | None = None, vtab_root: Path | None = None) -> list[ImageTask]:
    """Tasks named by ``spec``: ``mini-vtab[:<task>,...]``, ``vtab-1k`` (the 19 VTAB tasks),
    ``vtab:<task>[,<task>...]`` or ``imagefolder:DIR``.

    The mini-VTAB suite is read from ``cache_dir/mini-vtab`` and generated there on first use;
    VTAB tasks are read from ``vtab_root`` (default ``$VIVI_VTAB_ROOT``, see vivi.data.vtab).
    """
    kind, colon, arg = spec.partition(":")
    names = _once([n.strip() for n in arg.split(",") if n.strip()], spec)
    if colon and kind == MINI_VTAB and not names:  # "mini-vtab:" evaluated the whole suite
        raise UserError(f"{spec}: no task named after the colon ({SPEC_HELP})")
    if kind == MINI_VTAB:
        return _load_mini_vtab(Path(cache_dir or default_cache_dir()) / MINI_VTAB, names)
    if kind in (VTAB_1K, "vtab") and (kind == VTAB_1K) == (not arg):
        from vivi.data.vtab import load_vtab

        return load_vtab(names, vtab_root)
    if kind == "imagefolder" and arg:
        return [_load_image_folder(Path(arg).expanduser())]
    raise UserError(f"{spec}: unknown task spec ({SPEC_HELP})")


def _once(names: list[str], spec: str) -> list[str]:
    """``names`` without repeats, in order, with a warning naming them: ``vtab:dtd,dtd`` made the
    vtab1k protocol report dtd twice, counting it twice in the suite's mean."""
    unique = list(dict.fromkeys(names))
    if len(unique) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        warn(f"{spec}: {', '.join(twice)} named more than once; each task is evaluated once")
    return unique


def _load_mini_vtab(root: Path, names: list[str]) -> list[ImageTask]:
    """Read (building it first if absent) the suite; ``names`` selects tasks, empty means all."""
    suite_path = root / "suite.json"
    if _needs_build(suite_path):
        from vivi.data.synth import TASKS, build_suite

        if unknown := [n for n in names if n not in TASKS]:  # before minutes of rendering
            raise UserError(f"{MINI_VTAB}: unknown task {', '.join(unknown)} (available: {', '.join(TASKS)})")
        build_suite(root, seed=0)
    try:
        entries = {t["name"]: t for t in json.loads(suite_path.read_text())["tasks"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{suite_path}: not a task suite ({e})") from e
    unknown = [n for n in names if n not in entries]
    if unknown:
        raise UserError(f"{MINI_VTAB}: unknown task {', '.join(unknown)} (available: {', '.join(entries)})")
    return [_load_npz_task(root, entries[n]) for n in (names or entries)]


def _needs_build(suite_path: Path) -> bool:
    """Missing, or written by another version of the generator (a suite without a version is kept)."""
    if not suite_path.exists():
        return True
    from vivi.data.synth.tasks import SUITE_VERSION

    try:
        version = json.loads(suite_path.read_text()).get("version", SUITE_VERSION)
    except (OSError, ValueError, AttributeError):
        return True
    return version != SUITE_VERSION


def _load_npz_task(root: Path, entry: dict) -> ImageTask:
    """One suite task from ``<name>.npz`` (x_* uint8 NHWC, y_* integer labels per split)."""
    path = root / f"{entry['name']}.npz"
    try:
        with np.load(path) as data:
            splits = {s: ArraySplit(data[f"x_{s}"], data[f"y_{s}"]) for s in SPLITS}
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise UserError(f"{path}: not a task file with x_/y_ train, val, test arrays ({e})") from e
    empty = [s for s in SPLITS if len(splits[s]) == 0]
    if empty:
        raise UserError(f"{path}: empty split {', '.join(empty)}")
    classes = entry["classes"]
    class_names = [str(c) for c in range(classes)] if isinstance(classes, int) else [str(c) for c in classes]
    return ImageTask(entry["name"], entry["group"], class_names, **splits, source=str(path),
                     val_from="val split (rendered apart from train)")


def _load_image_folder(root: Path) -> ImageTask:
    """DIR/train/<class>/*, DIR/test/<class>/*, optional DIR/val/<class>/*; classes = train's."""
    input_dir(root)
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise UserError(f"{root}: no {split}/ folder (expected {split}/<class>/<image> inside it)")
    train_files = _scan_classes(root / "train")
    if len(train_files) < 2:
        found = "no class folders" if not train_files else "only one class folder"
        raise UserError(f"{root / 'train'}: {found}; need at least 2 (train/<class>/<image>)")
    classes = sorted(train_files)
    train = _file_split(train_files, classes)
    check_one_label(train.paths, train.labels, classes, "train")  # first: a linked class is also absent from test/
    test = _file_split(_checked_classes(root / "test", classes), classes)
    check_one_label(test.paths, test.labels, classes, "test")
    held_out = None
    if (root / "val").is_dir():
        val = _file_split(_checked_classes(root / "val", classes), classes)
        check_one_label(val.paths, val.labels, classes, "val")
        val_from = "val/"
    else:
        train_idx, val_idx = stratified_holdout(train.labels, VAL_FRACTION, VAL_SEED)
        if len(val_idx) == 0:
            raise UserError(f"{root / 'train'}: one image per class leaves none to hold out; add val/")
        train_idx, val_idx = _copies_held_too(train, train_idx, val_idx)
        held_out = HeldOut(train, train_idx, val_idx)
        train, val = train.subset(train_idx), train.subset(val_idx)
        val_from = f"held out of train/ ({VAL_FRACTION:.0%}, seed {VAL_SEED})"
    _check_disjoint({"train": train, "val": val, "test": test})
    name = root.resolve().name
    return ImageTask(name, "custom", classes, train, val, test, source=str(root), val_from=val_from,
                     held_out=held_out)


def check_one_label(paths: Sequence[Path], labels: np.ndarray, classes: list[str], where: str) -> None:
    """Refuse one file reached under two class labels (a class folder that is a link to another,
    ``ln -s a c``, or a link inside one class to another class's image): the same pixels taught as
    two classes cut accuracy to 50-57% without a word. One file twice in one class is left alone
    (one image, one label). A stat per file, as :func:`_check_disjoint` does anyway."""
    seen: dict[tuple[int, int], tuple[int, Path]] = {}
    for path, label in zip(paths, labels.tolist()):
        ident = file_id(path)
        if ident is None:
            continue
        first = seen.setdefault(ident, (label, path))
        if first[0] != label:
            raise UserError(
                f"{path}: the same file as {first[1]} (a link), under two classes of {where}/ "
                f"({classes[label]} and {classes[first[0]]}); an image with two labels cannot be learnt: remove one"
            )


def _copies_held_too(files: FileSplit, kept: np.ndarray, held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held) with every other path to a held-out file held out too: train/ reaching a file twice
    (two linked folders) would otherwise put it on both sides of the held-out val, by chance of the draw."""
    held_ids = {file_id(files.paths[i]) for i in held} - {None}
    copies = np.array([file_id(files.paths[i]) in held_ids for i in kept], dtype=bool)
    return kept[~copies], np.sort(np.concatenate([held, kept[copies]]))


def _check_disjoint(splits: dict[str, FileSplit]) -> None:
    """Refuse an image that is one file in two splits (a symlink or hard link: folders assembled
    with ``ln -s`` from one pool, or a val image held out of train/ that train/ holds twice): the
    probe or fine-tune would be fitted on an image it is then scored on. Plain copies (same bytes,
    two files) are not looked for: that would mean reading every image at each start."""
    seen: dict[tuple[int, int], tuple[str, Path]] = {}
    for split, files in splits.items():
        mine: dict[tuple[int, int], Path] = {}
        for path in files.paths:
            ident = file_id(path)
            if ident is None:
                continue
            if ident in seen and seen[ident][0] != split:
                other_split, other = seen[ident]
                raise UserError(f"{path}: the same file as {other} (a link), in both {split}/ and {other_split}/; "
                                "an image in two splits is scored on what the classifier was fitted to: remove one")
            mine.setdefault(ident, path)
        for ident, path in mine.items():
            seen.setdefault(ident, (split, path))


def _scan_classes(split_dir: Path) -> dict[str, list[Path]]:
    """Class folder name -> its image files (any depth, linked folders followed, hidden entries
    skipped), sorted. Other files are left out with a note counting them by extension; broken
    links to images are kept, so reading them reports them. Folders without images are skipped
    when no folder has images (see :func:`_skip_imageless`)."""
    found, others, imageless, hidden_images = {}, [], {}, {}
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not is_hidden(p.name)):
        if not os.access(class_dir, os.R_OK | os.X_OK):  # else listed as empty: "no images" misleads
            raise UserError(f"{class_dir}: cannot list the class folder (permission denied)")
        files, hidden = walk_files_and_hidden(class_dir)
        images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
        if images:
            found[class_dir.name] = images
            others += [p for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
        else:
            imageless[class_dir] = files
            hidden_images[class_dir] = [p for p in hidden if p.suffix.lower() in IMAGE_EXTENSIONS]
    _skip_imageless(split_dir, imageless, class_layout=bool(found), hidden_images=hidden_images)
    note = ignored_note(others, "image")
    if note:
        warn(f"{split_dir}: {note}")
    loose = sorted(p for p in split_dir.iterdir()
                   if not p.is_dir() and not is_hidden(p.name) and p.name.lower() not in JUNK_NAMES)  # fmt: skip
    if found and loose:
        images_first = sorted(loose, key=lambda p: p.suffix.lower() not in IMAGE_EXTENSIONS)
        files = f"{len(loose)} files" if len(loose) != 1 else "1 file"
        warn(f"{split_dir}: ignored {files} outside the class folders (<class>/<image>), e.g. {images_first[0].name}")
    return found


def _skip_imageless(
    split_dir: Path, imageless: dict[Path, list[Path]], class_layout: bool,
    hidden_images: dict[Path, list[Path]] | None = None,
) -> None:
    """Sub-folders without images beside no class folder are no classes: ``annotations/`` in a flat
    folder of images stopped the command with "no images" for that folder. They are skipped with
    one warning. Among class folders, one without images is still an error: a class lost (empty,
    or of a format PIL cannot read) would change what is measured."""
    if not imageless:
        return
    extensions = " ".join(e[1:] for e in IMAGE_EXTENSIONS)
    if class_layout:
        first, files = next(iter(imageless.items()))
        if hidden := (hidden_images or {}).get(first):  # ".00.png" only: "an empty folder" misled
            raise UserError(f"{first}: no images in this class folder, only hidden ones ({hidden_note(hidden)})")
        holds = _by_extension(files) or "an empty folder"
        raise UserError(f"{first}: no images in this class folder ({holds}; extensions read: {extensions})")
    named = [f"{d.name}/ ({_by_extension(files) or 'empty'})" for d, files in imageless.items()]
    folders = f"{len(named)} sub-folders" if len(named) != 1 else "1 sub-folder"
    warn(f"{split_dir}: skipped {folders} without images (extensions: {extensions}): {listed(named)}")


def hidden_note(hidden: list[Path]) -> str:
    """``.00.png, .01.png and 3 more: names starting with '.' are hidden; rename them to use them``."""
    more = f" and {len(hidden) - 2} more" if len(hidden) > 2 else ""
    names = ", ".join(p.name for p in hidden[:2])
    return f"{names}{more}: names starting with '.' are hidden; rename them to use them"


def _by_extension(files: list[Path]) -> str:
    """``.json: 12, .txt: 1``: what a folder holds instead of images."""
    counts = Counter(f.suffix.lower() or "(no extension)" for f in files if f.name.lower() not in JUNK_NAMES)
    return ", ".join(f"{ext}: {n}" for ext, n in counts.most_common(3))


def _checked_classes(split_dir: Path, classes: list[str]) -> dict[str, list[Path]]:
    """Scan a val/test folder and insist it has exactly the train classes."""
    found = _scan_classes(split_dir)
    extra = sorted(set(found) - set(classes))
    if extra:
        hint = _unicode_twins(extra, classes)
        raise UserError(f"{split_dir}: classes not present in train/: {', '.join(extra)}{hint}")
    missing = sorted(set(classes) - set(found))
    if missing and not found:  # val/ holding a README, or empty class folders only: "missing a, b" misled
        hint = "; or remove val/ to hold out a fifth of train/" if split_dir.name == "val" else ""
        raise UserError(f"{split_dir}: no images in class folders (train/'s classes: {listed(classes)}): add "
                        f"{split_dir.name}/<class>/<image>{hint}")  # fmt: skip
    if missing:
        raise UserError(f"{split_dir}: missing classes present in train/: {', '.join(missing)}")
    return found


def _unicode_twins(names: list[str], classes: list[str]) -> str:
    """A hint when a name differs from a train class only in its Unicode form: macOS writes "café"
    decomposed (NFD), most other systems composed (NFC), so the two print alike and the error
    "classes not present in train/: café" read as nonsense."""
    by_form = {unicodedata.normalize("NFC", c): c for c in classes}
    twins = [n for n in names if unicodedata.normalize("NFC", n) in by_form]
    if not twins:
        return ""
    return (f" ({', '.join(twins)}: the same letters as a train/ class, written in another Unicode normalisation "
            "form (NFD/NFC, e.g. one copied from macOS); rename the folder so both match)")


def _file_split(files: dict[str, list[Path]], classes: list[str]) -> FileSplit:
    paths = [p for c in classes for p in files[c]]
    labels = np.array([i for i, c in enumerate(classes) for _ in files[c]], dtype=np.int64)
    return FileSplit(paths, labels)


def stratified_holdout(
    labels: np.ndarray, fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, held-out) index arrays taking ``fraction`` of each class.

    Each class with at least two examples gives at least one and keeps at least one. With
    ``groups`` (an id per example: a frame's shot), whole groups are held out, ``fraction`` of a
    class's groups, so no group lies on both sides; a class of a single group gives examples.
    """
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        units = np.unique(groups[idx]) if groups is not None else idx
        if len(units) < 2:  # one group: its examples are held out as without groups
            units = idx
        n_held = min(len(units) - 1, max(1, round(fraction * len(units))))
        chosen = rng.permutation(units)[:n_held]
        held.extend(chosen if units is idx else idx[np.isin(groups[idx], chosen)])
    held_out = np.sort(np.asarray(held, dtype=np.int64))
    return np.setdiff1d(np.arange(len(labels)), held_out), held_out
