"""Image folders as training data: labelled images for co-training (paper 3.1) and unlabelled
images for the image baselines (Ex-ImageNet, Rot-ImageNet).

A folder is ``DIR/<class>/*`` (or ``DIR/train/<class>/*`` when DIR has ``train/``); an unlabelled
folder may also hold its images directly. Images are decoded in loader workers and resized and
centre-cropped to ``data.load_size`` exactly as video frames are, then augmented on the device.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vivi.data.batches import rank_slice, step_loader, step_positions
from vivi.data.files import ignored_note, input_dir, is_hidden
from vivi.data.frames import centre_square, jpeg_size, load_frame
from vivi.data.tasks import (
    EXIF_ERRORS,
    IMAGE_EXTENSIONS,
    IMAGE_READ_ERRORS,
    JPEG_START,
    UnreadableImage,
    _scan_classes,
    check_one_label,
    check_regular_file,
    damaged_note,
    hidden_note,
    image_error,
    libjpeg_messages,
    not_regular_reason,
    over_pixel_limit,
    pixel_limit_reason,
    quiet_pil,
    read_image,
)
from vivi.errors import UserError, listed, warn

LABELLED_HELP = "use imagefolder:DIR with DIR/<class>/<image> or DIR/train/<class>/<image>"


@dataclass(frozen=True)
class ImageFolder:
    """Image files with integer labels (all 0 for a folder without class folders)."""

    root: Path
    classes: list[str]
    paths: list[Path]
    labels: np.ndarray
    selection: str = ""  # how ``paths`` were chosen from the folder, for error messages
    # filled once by :func:`unreadable_images`: position -> reason of the files whose header does not read
    probed: dict[str, dict[int, str]] = field(default_factory=dict, compare=False, repr=False)

    def subset(self, indices: np.ndarray, selection: str) -> ImageFolder:
        return ImageFolder(self.root, self.classes, [self.paths[i] for i in indices], self.labels[indices], selection)


def parse_labelled(spec: str) -> Path:
    """``imagefolder:DIR`` -> DIR (the one labelled source there is)."""
    kind, _, arg = spec.partition(":")
    if kind != "imagefolder" or not arg:
        raise UserError(f"{spec}: unknown labelled image source ({LABELLED_HELP})")
    return Path(arg).expanduser()


def scan_images(root: Path, labelled: bool) -> ImageFolder:
    """The images of ``root`` (its ``train/`` when present); ``labelled`` insists on >= 2 class folders."""
    input_dir(root)
    top = _image_root(root)
    by_class = _scan_classes(top)
    if labelled and len(by_class) < 2:
        found = "no class folders" if not by_class else "only one class folder"
        raise UserError(f"{top}: {found}; labelled images need at least 2 (<class>/<image>)")
    if by_class:
        classes = sorted(by_class)
        paths = [p for c in classes for p in by_class[c]]
        labels = np.array([i for i, c in enumerate(classes) for _ in by_class[c]], dtype=np.int64)
        if labelled:  # one file under two classes (a linked class folder) would be taught as both
            check_one_label(paths, labels, classes, top.name)
        return ImageFolder(top, classes, paths, labels)
    listed_files = [p for p in top.iterdir() if not p.is_dir() and not p.name.startswith(".")]  # broken links too
    paths = sorted(p for p in listed_files if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        hidden = sorted(p for p in top.iterdir() if p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)
        if hidden:  # ".00.png" only: "no images" misled
            raise UserError(f"{top}: no images, only hidden ones ({hidden_note(hidden)})")
        raise UserError(f"{top}: no images (extensions: {' '.join(e[1:] for e in IMAGE_EXTENSIONS)})")
    note = ignored_note([p for p in listed_files if p.suffix.lower() not in IMAGE_EXTENSIONS], "image")
    if note:
        warn(f"{top}: {note}")
    return ImageFolder(top, [""], paths, np.zeros(len(paths), dtype=np.int64))


def _image_root(root: Path) -> Path:
    """``root/train`` when it is the train split of ``root``, else ``root``.

    ``train/`` is a class, not the split, when it holds images and no folders, beside other class
    folders and no ``val/`` or ``test/`` (CIFAR-100 and many vehicle data sets have a class named
    "train"): taking it for the split used to train on that one class alone, without a word."""
    train = root / "train"
    if not train.is_dir():
        return root
    if (root / "val").is_dir() or (root / "test").is_dir():
        return train
    beside = [p for p in root.iterdir() if p.is_dir() and not is_hidden(p.name) and p.name != "train"]
    inside = [p for p in train.iterdir() if not is_hidden(p.name)]
    holds_only_images = bool(inside) and all(not p.is_dir() for p in inside) and any(
        p.suffix.lower() in IMAGE_EXTENSIONS for p in inside
    )
    return root if beside and holds_only_images else train


def balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices keeping ``fraction`` of every class (at least one each), drawn by ``seed``.

    The paper's Co(10%) uses a class-balanced 10% of ImageNet; the same seed gives the same subset.
    """
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep.extend(rng.permutation(idx)[: max(1, round(fraction * len(idx)))])
    return np.sort(np.asarray(keep, dtype=np.int64))


PROBE_SIZE = 32  # what a drawn image is decoded to, to know it decodes (the verdict does not depend on it)


def open_labelled(spec: str, fraction: float, seed: int, size: int = PROBE_SIZE) -> ImageFolder:
    """The labelled images of ``spec``, restricted to a class-balanced ``fraction`` drawn among the
    images that decode (:func:`readable_subset`; ``size``: what they are decoded to, as training will)."""
    folder = scan_images(parse_labelled(spec), labelled=True)
    if fraction >= 1:
        return folder
    subset = folder.subset(
        readable_subset(folder, fraction, seed, size), f" (labelled_fraction={fraction} of {len(folder.paths)})"
    )
    subset.probed["unreadable"] = {}  # every kept header was read by the draw: not read again
    return subset


def readable_subset(folder: ImageFolder, fraction: float, seed: int, size: int) -> np.ndarray:
    """:func:`balanced_subset` among the images that can be read: each class's seeded permutation
    is walked (:func:`_draw_class`), a broken file replaced by the next one, so the subset is the
    same as before when nothing is broken.

    Drawing among the files let the 10% of a class be its one broken file, and co-training stopped
    with "none of the 1 kept images of class 'cat' decodes" though the class had 6 readable images.
    Costs a header read per kept image and per broken one passed over (which :func:`unreadable_images`
    then does not repeat) and one decode per class (:func:`check_decodes`, run after, decodes one kept
    image per class again: the files may change in between). The files passed over are named in one
    warning; a class none of whose images can be read is refused in one line."""
    rng = np.random.default_rng(seed)
    classes = np.unique(folder.labels).tolist()
    orders = [rng.permutation(np.flatnonzero(folder.labels == c)) for c in classes]  # as balanced_subset draws

    def walk(order: np.ndarray) -> tuple[list[int], list[str]]:
        return _draw_class(folder.paths, order, max(1, round(fraction * len(order))), size)

    if len(classes) > 64:  # a read waits on the disk and decodes mostly without the GIL
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            walks = list(pool.map(walk, orders))
    else:
        walks = [walk(order) for order in orders]
    if lost := [(folder.classes[c], reasons) for c, (kept, reasons) in zip(classes, walks) if not kept]:
        name, reasons = lost[0]
        more = f" (and {len(lost) - 1} more such classes)" if len(lost) > 1 else ""
        raise UserError(
            f"{folder.root / name}: none of the {len(reasons)} images of class '{name}' decodes "
            f"({listed(reasons)}){more}, so training would never see the class its head has a logit for; "
            "replace the images or remove the class folder"
        )
    if passed := [r for _, reasons in walks for r in reasons]:
        warn(f"{folder.root}: passed over {len(passed)} unreadable image{'s' if len(passed) != 1 else ''} drawing the "
             f"labelled_fraction={fraction}, each replaced by another image of its class: {listed(passed)}")
    return np.sort(np.asarray([i for kept, _ in walks for i in kept], dtype=np.int64))


def _draw_class(paths: Sequence[Path], order: np.ndarray, wanted: int, size: int) -> tuple[list[int], list[str]]:
    """The first ``wanted`` positions of ``order`` whose header reads (the first one kept also
    decoded, so a class is known to train), and ``path (reason)`` of each passed over."""
    kept: list[int] = []
    passed: list[str] = []
    for i in order.tolist():
        if len(kept) == wanted:
            break
        reason = _header_problem(paths[i]) or (None if kept else _decode_problem(paths[i], size))
        if reason:
            passed.append(f"{paths[i]} ({reason})")
        else:
            kept.append(i)
    return kept, passed


def _decode_problem(path: Path, size: int) -> str | None:
    """Why ``path`` does not decode as training reads it, or None when it does."""
    try:
        load_image(path, size, [])  # libjpeg's complaints: said by the loader
    except UnreadableImage as e:
        return e.reason
    return None


def unreadable_images(folder: ImageFolder) -> dict[int, str]:
    """Positions of ``folder``'s images whose header PIL cannot read (an empty file, a web page
    saved as .jpg, a broken link, one over the pixel limit) -> reason; found once, in the main
    process, and named in one warning. Reading headers only (~35 us an image on a local disk, a
    few threads for a network one) keeps it cheap; a file damaged further in is found when a
    loader decodes it."""
    if "unreadable" not in folder.probed:
        found = {i: r for i, r in enumerate(_header_problems(folder.paths)) if r is not None}
        folder.probed["unreadable"] = found
        if found:
            named = [f"{folder.paths[i]} ({r})" for i, r in found.items()]
            verb = "is" if len(found) == 1 else "are"
            warn(f"{folder.root}: {len(found)} of {len(folder.paths)} images{folder.selection} {verb} unreadable, each "
                 f"replaced by the next image in the folder: {listed(named)}")
    return folder.probed["unreadable"]


def check_decodes(folder: ImageFolder, size: int, per_class: bool) -> None:
    """Refuse, in one line, a folder training would never draw an image of: with ``per_class``
    (co-training and Sup-ImageNet, whose head has a logit per class) a class none of whose kept
    images decodes, else (Ex-/Rot-ImageNet) a folder none of whose images decodes.

    Before, such a class was trained without in silence (each broken file named once, replaced by
    another class's image): the head reported N classes and learnt N-1. Checked once at start,
    before the run folder is written and alike on every rank, rather than counted at run time
    (a late warning, to be agreed across loader workers and ranks). Per class, the kept images
    (``folder`` is already the ``data.labelled_fraction`` subset) are decoded in folder order until
    one decodes: 1000 classes x 5 JPEGs with every 10th class starting broken took 0.4-0.8 s on
    2 busy cores, beside 3.7 s to decode all 5000."""
    broken = unreadable_images(folder)  # header-unreadable: named in one warning, cached for the loader
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(folder.labels.tolist() if per_class else [0] * len(folder.paths)):
        groups.setdefault(label, []).append(i)

    def named(i: int) -> str:  # in a class's folder its file name; in the whole folder, the path below it
        return folder.paths[i].name if per_class else os.path.relpath(folder.paths[i], folder.root)

    def none_decodes(positions: list[int]) -> list[str] | None:
        """The reasons of every position when none decodes, else None (stops at the first that does)."""
        reasons = []
        for i in positions:
            if i in broken:
                reasons.append(f"{named(i)} ({broken[i]})")
                continue
            try:
                load_image(folder.paths[i], size, [])  # libjpeg's complaints: said by the loader
                return None
            except UnreadableImage as e:
                reasons.append(f"{named(i)} ({e.reason})")
        return reasons

    order = sorted(groups)
    if len(order) > 64:  # a decode waits on the disk and decodes mostly without the GIL
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            verdicts = list(pool.map(lambda c: none_decodes(groups[c]), order))
    else:
        verdicts = [none_decodes(groups[c]) for c in order]
    lost = [(c, r) for c, r in zip(order, verdicts) if r is not None]
    if not lost:
        return
    n = len(folder.paths)
    if not per_class:
        raise UserError(f"{folder.root}: none of the {n} images{folder.selection} decodes: {listed(lost[0][1])}")
    c, reasons = lost[0]
    name = folder.classes[c]
    more = [folder.classes[k] for k, _ in lost[1:]]
    others = f" (and {len(more)} more such classes: {listed(more)})" if more else ""
    kept = " kept" if folder.selection else ""
    raise UserError(
        f"{folder.root / name}: none of the {len(reasons)}{kept} images of class '{name}'{folder.selection} decodes "
        f"({listed(reasons)}){others}, so training would never see the class its head has a logit for; "
        "replace the images or remove the class folder"
    )


def _header_problems(paths: Sequence[Path], chunk: int = 1024) -> list[str | None]:
    """:func:`_header_problem` of each path; a large folder in chunks over a few threads (opening a
    file waits on the disk, or the network, without the GIL)."""
    if len(paths) <= chunk:
        return [_header_problem(p) for p in paths]
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return [r for part in pool.map(lambda ps: [_header_problem(p) for p in ps], chunks) for r in part]


def _header_problem(path: Path) -> str | None:
    """Why PIL cannot open ``path``'s header, or None when it can (a named pipe is never opened)."""
    if reason := not_regular_reason(path):
        return reason
    try:
        with quiet_pil(), Image.open(path) as img:
            return pixel_limit_reason(img.size) if over_pixel_limit(img.size) else None
    except IMAGE_READ_ERRORS as e:
        return image_error(path, e).reason


def load_image(path: Path, size: int, notes: list[str] | None = None) -> torch.Tensor:
    """An image file -> uint8 ``[3, size, size]``, short side resized and centre-cropped like a frame
    (upright by its EXIF orientation); :class:`UnreadableImage` names the file and the reason.
    A JPEG that decodes with libjpeg's complaints is named in a warning (in ``notes`` when given:
    a loader worker's warnings are said once by whoever collects them)."""
    messages: list[str] = []
    check_regular_file(path)  # reading a named pipe blocks forever
    try:
        data = path.read_bytes()
        jpeg = data[:2] == JPEG_START
        if jpeg and (wh := jpeg_size(data)) and over_pixel_limit(wh):  # torchvision's decoder has no limit
            raise UnreadableImage(path, pixel_limit_reason(wh))
        with quiet_pil(), libjpeg_messages(messages) if jpeg else nullcontext():  # quiet_pil: as evaluation reads them
            image = load_frame(data, size)
    except IMAGE_READ_ERRORS as e:
        raise image_error(path, e) from e
    except EXIF_ERRORS:  # EXIF that PIL cannot rewrite after rotating: upright without it
        image = centre_square(read_image(path, size), size).contiguous()
    if messages:
        (warn if notes is None else notes.append)(damaged_note(path, messages))
    return image


def load_readable(paths: Sequence[Path], size: int, where: str) -> tuple[torch.Tensor, list[int]]:
    """The images of ``paths`` that decode, stacked, and their positions in ``paths``; the others
    are named in one warning (one broken file should not stop the command)."""
    images, kept, skipped = [], [], []
    for i, path in enumerate(paths):
        try:
            images.append(load_image(path, size))
            kept.append(i)
        except UnreadableImage as e:
            skipped.append(f"{e.path} ({e.reason})")
    if skipped:
        warn(f"{where}: skipped {len(skipped)} unreadable image{'s' if len(skipped) != 1 else ''}: {listed(skipped)}")
    if not images:
        raise UserError(f"{where}: no readable image ({len(paths)} tried)")
    return torch.stack(images), kept


class Once:
    """Whether a key is met for the first time by any process of a data loader: a marker file per
    key, created atomically in a folder the main process made (a loader worker forked or spawned
    gets the folder's name). Only for rare events, such as a broken file."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="vivi-once-")
        weakref.finalize(self, _remove_folder, self.folder, os.getpid())

    def first(self, key: str) -> bool:
        try:
            os.close(os.open(os.path.join(self.folder, key), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        except OSError:  # the folder is gone (the main process ended first): say it again, not never
            return True
        return True


def _remove_folder(folder: str, owner: int) -> None:
    """``folder`` removed by the process that made it (a forked worker holds a copy of its owner)."""
    if os.getpid() == owner:
        shutil.rmtree(folder, ignore_errors=True)


class StepImages(Dataset):
    """Item ``step`` -> this rank's ``(uint8 [B / world, 3, S, S] images, int64 labels)`` of that step.

    Like the video batches, a pure function of ``(seed, step)``: each pass over the folder is a
    seeded permutation, so runs resume exactly and ranks split one global batch.
    """

    def __init__(
        self, folder: ImageFolder, batch: int, size: int, seed: int, rank: int = 0, world: int = 1,
        setting: str = "data.labelled_batch",
    ) -> None:
        self.folder, self.batch, self.size, self.seed = folder, batch, size, seed
        self.slots = rank_slice(batch, rank, world, setting)
        # those the main process found (named there) are skipped quietly, and those a process finds
        # are tried once in it; a file is named by the first process to meet it, not by every worker
        self._broken = set(folder.probed.get("unreadable", {}))
        self._once = Once()

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = step_positions(step, self.batch, len(self.folder.paths), self.seed)[self.slots]
        loaded = [self._load(int(i)) for i in chosen]
        used = np.array([k for _, k in loaded], dtype=np.int64)
        return torch.stack([image for image, _ in loaded]), torch.from_numpy(self.folder.labels[used])

    def _load(self, i: int) -> tuple[torch.Tensor, int]:
        """Image ``i`` and ``i``; for a file that does not decode, the next one in the folder that
        does (a pure function of ``i``, so resuming stays exact), with a warning per broken file.
        A broken file must not stop a pretraining run again at every resume."""
        paths = self.folder.paths
        for k in (j % len(paths) for j in range(i, i + len(paths))):
            if k in self._broken:
                continue
            notes: list[str] = []
            try:
                image = load_image(paths[k], self.size, notes)
            except UnreadableImage as e:
                self._broken.add(k)
                if self._once.first(f"broken-{k}"):
                    warn(f"{e} (replaced by the next image in the folder)")
                continue
            if notes and self._once.first(f"damaged-{k}"):
                warn(notes[0])
            return image, k
        raise UserError(f"{self.folder.root}: none of the {len(paths)} images is readable")


def check_batch(folder: ImageFolder, batch: int, setting: str, world: int = 1) -> None:
    """Refuse a batch of ``batch`` images (set by ``setting``, e.g. ``data.labelled_batch``) that
    ``folder`` cannot fill or ``world`` processes cannot split, naming that setting alone.

    Called by the training loop before the run folder is written: found only when the loader
    started, it left a run folder with a config and a provenance line of a run that never trained,
    and its hint named both ``data.labelled_batch`` and ``data.videos`` (and a split "image batch")
    whichever of the two was at fault."""
    n = len(folder.paths)
    if n < batch:
        raise UserError(
            f"{folder.root}: {n} images{folder.selection}, fewer than the {batch} per batch requested; "
            f"add images or lower the batch (--set {setting}=N)"
        )
    rank_slice(batch, 0, world, setting)


def image_batches(
    folder: ImageFolder,
    batch: int,
    size: int,
    seed: int = 0,
    workers: int = 0,
    start: int = 0,
    steps: int = 1 << 62,
    rank: int = 0,
    world: int = 1,
    wrap: Callable[[Dataset], Dataset] | None = None,
    pin: bool = False,
    setting: str = "data.labelled_batch",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of uint8 images ``[batch / world, 3, size, size]`` and int64 labels for steps ``start ..``
    (``wrap``, ``pin``: as for :func:`vivi.data.batches.make_loader`; ``setting``: the one that sets
    ``batch``, named in errors)."""
    check_batch(folder, batch, setting, world)
    n = len(folder.paths)
    if len(unreadable_images(folder)) == n:  # named once here, before the workers start
        raise UserError(f"{folder.root}: none of the {n} images{folder.selection} is readable")
    images = StepImages(folder, batch, size, seed, rank, world, setting)
    return step_loader(wrap(images) if wrap else images, start, steps, workers, pin)
