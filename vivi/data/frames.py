"""Frames out of shards, fast: the loader's per-frame work, which on a small CPU competes with the
training step for the same cores.

- ``tar_members``: a video's tar members from the bytes of its span, by reading the 512-byte
  ustar headers directly (``tarfile`` spends more time building ``TarInfo`` objects than the
  JPEG decoder spends on a 96 px frame); any other header kind falls back to ``tarfile``.
- ``load_frame``: JPEG -> uint8 square. Frames stored near the training size are decoded by
  torchvision's libjpeg-turbo binding (2-3x faster per 96 px frame than PIL's open-convert-copy,
  measured); frames at least twice that size go through PIL's ``draft``, which lets libjpeg
  decode them at 1/2, 1/4 or 1/8 scale directly.
"""

from __future__ import annotations

import io
import tarfile
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from vivi.errors import first_line

try:  # deprecated in torchvision 0.29 (pinned) in favour of torchcodec; PIL alone once it is gone
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # pragma: no cover - newer torchvision
    decode_jpeg = None

BLOCK = 512
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # start-of-frame markers


def tar_members(buf: bytes) -> dict[str, bytes]:
    """``{suffix: bytes}`` of the regular files in a run of tar members (``key.s000.f003.jpg`` ->
    ``s000.f003.jpg``)."""
    out: dict[str, bytes] = {}
    pos, n = 0, len(buf)
    while pos + BLOCK <= n:
        header = buf[pos : pos + BLOCK]
        if header.count(0) == BLOCK:  # end-of-archive blocks
            break
        if not _checksum_ok(header):  # tarfile would take a damaged header for the archive's end
            raise ValueError(f"damaged tar header at byte {pos} of the sample")
        kind = header[156:157]
        if kind not in (b"0", b"\0") or header[257:262] != b"ustar" or header[345] != 0:
            return _tarfile_members(buf)  # long names (pax/GNU) or a prefix field: let tarfile read it
        name = header[:100].split(b"\0", 1)[0].decode("utf-8")
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        if size < 0:  # int() reads "-7" in base 8 too; a crafted header is not read backwards
            raise ValueError(f"tar member {name} declares a negative size")
        start = pos + BLOCK
        if start + size > n:
            raise ValueError(f"tar member {name} is truncated")
        if "." in name:
            out[name.split(".", 1)[1]] = buf[start : start + size]
        pos = start + -(-size // BLOCK) * BLOCK
    return out


def first_member_name(buf: bytes) -> str | None:
    """The member name in the first tar header of ``buf``; ``""`` when that block is no valid ustar
    header; None for a header that keeps its name elsewhere (pax/GNU long names, a prefix field)."""
    header = buf[:BLOCK]
    if len(header) < BLOCK or header[257:262] != b"ustar" or not _checksum_ok(header):
        return ""
    if header[156:157] not in (b"0", b"\0") or header[345] != 0:
        return None
    return header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")


def _checksum_ok(header: bytes) -> bool:
    """The ustar header checksum: the byte sum with the checksum field read as spaces."""
    try:
        stored = int(header[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError:
        return False
    return stored == sum(header) - sum(header[148:156]) + 8 * 32


def _tarfile_members(buf: bytes) -> dict[str, bytes]:
    """Sparse members are refused, and any member larger than the bytes given: tarfile fills a sparse
    member's holes with zeros on read, so a crafted header declaring a 100 GB file of holes took
    100 GB of memory (a member's data can never be larger than the sample it lies in)."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(buf), mode="r:") as tar:
        for m in tar:
            if m.issparse() or m.size > len(buf):
                raise ValueError(f"tar member {m.name} declares {m.size} bytes{' (sparse)' if m.issparse() else ''}, "
                                 f"more than its sample holds ({len(buf)} bytes)")  # fmt: skip
            if m.isfile() and "." in m.name:
                out[m.name.split(".", 1)[1]] = tar.extractfile(m).read()
    return out


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a JPEG's start-of-frame marker without decoding; None if not a JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    pos, n = 2, len(data)
    while pos + 9 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _SOF:
            return int.from_bytes(data[pos + 7 : pos + 9], "big"), int.from_bytes(data[pos + 5 : pos + 7], "big")
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def load_frame(data: bytes, size: int) -> torch.Tensor:
    """JPEG (or any PIL-readable image) bytes -> uint8 ``[3, size, size]``: the centred square
    of side min(w, h), resized to ``size``."""
    wh = jpeg_size(data)
    if wh is None or min(wh) >= 2 * size or decode_jpeg is None:
        return _load_with_pil(data, size)
    try:
        image = decode_jpeg(  # EXIF orientation: phone photos stand upright (shard frames carry none)
            torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB, apply_exif_orientation=True
        )
    except RuntimeError:  # a JPEG flavour libjpeg-turbo's binding refuses: PIL decodes it or says why not
        return _load_with_pil(data, size)
    return centre_square(image, size)


def centre_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[3, h, w]`` -> short side resized to ``size`` (antialiased bilinear), centre crop:
    the geometry and filter of the PIL path, which it matches to within 1 grey level."""
    _, h, w = image.shape
    if min(h, w) != size:
        w, h = _short_side_to(size, w, h)
        resized = F.interpolate(image[None].float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        image = resized[0].round_().clamp_(0, 255).to(torch.uint8)
    top, left = (h - size) // 2, (w - size) // 2
    return image[:, top : top + size, left : left + size]  # a view; torch.stack or a copy_ follows


def _short_side_to(size: int, w: int, h: int) -> tuple[int, int]:
    """``(w, h)`` scaled so the short side is ``size``: the one geometry both decode paths use."""
    scale = size / min(w, h)
    return max(size, round(w * scale)), max(size, round(h * scale))


def to_rgb(img: Image.Image) -> Image.Image:
    """Upright 8-bit RGB of any PIL image: EXIF orientation applied (phone photos), and 16-bit or
    float greys scaled to 8 bits first (PIL's ``convert("RGB")`` clips them: a 16-bit PNG turns white).
    Greys beyond 16 bits (32-bit counts, a float depth map in millimetres) have no standard white:
    they are scaled by the image's own maximum rather than clipped to a white image."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        values = np.asarray(img, dtype=np.float64)
        top = values.max(initial=0.0)
        if img.mode.startswith("I;16") or (img.mode == "I" and 255 < top <= 65535):
            values = values / 257.0  # 16-bit range
        elif img.mode == "F" and top <= 1.0:
            values = values * 255.0  # float images in [0, 1]
        elif top > 255:
            values = values * (255.0 / top)
        img = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    return img if img.mode == "RGB" else img.convert("RGB")


def _load_with_pil(data: bytes, size: int) -> torch.Tensor:
    try:
        return _decode_with_pil(data, size)
    except Image.DecompressionBombError as e:  # an Exception, not the ValueError/OSError callers name the frame for
        raise ValueError(f"refused as a possible decompression bomb: {first_line(e)}") from e  # tasks.image_error reads it


def _decode_with_pil(data: bytes, size: int) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (size, size))
        img = to_rgb(img)
        w, h = img.size
        rw, rh = _short_side_to(size, w, h) if min(w, h) != size else (w, h)
        left, top = (rw - size) // 2, (rh - size) // 2
        if (rw, rh) == (w, h):
            img = img.crop((left, top, left + size, top + size))
        else:  # only the centre square is resized (the filter still reads past its edges, as in a
            # whole resize): a 1 x 20000 strip made a 64 x 1.28M image first, ~1 GB, to keep 64 x 64
            sx, sy = w / rw, h / rh
            box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
            img = img.resize((size, size), Image.BILINEAR, box=box, reducing_gap=None)
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


class FrameCache:
    """Decoded frames kept in memory, least recently used dropped first, at most ``max_bytes``.

    On a small machine the loader's decoding takes CPU from the training step; a laptop run
    revisits the same few thousand frames every pass, so keeping them decoded makes the
    loader nearly free after the first pass. Values are what decoding gives, so batches are
    unchanged (exact resume holds). Each loader process has its own cache.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = self.hits = self.misses = 0
        self._frames: OrderedDict[Hashable, torch.Tensor] = OrderedDict()

    def get(self, key: Hashable) -> torch.Tensor | None:
        frame = self._frames.get(key)
        if frame is None:
            self.misses += 1
            return None
        self.hits += 1
        self._frames.move_to_end(key)
        return frame

    def put(self, key: Hashable, frame: torch.Tensor) -> torch.Tensor:
        """Keep ``frame``; returns the kept copy (contiguous), or ``frame`` itself if not kept."""
        size = frame.numel() * frame.element_size()
        if size > self.max_bytes or key in self._frames:
            return frame
        # its own contiguous storage: a view would keep the whole decoded image alive, and stacking
        # decode_jpeg's permuted HWC layout is a slow strided copy
        kept = self._frames[key] = frame.clone(memory_format=torch.contiguous_format)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self._frames.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()
        return kept

    def __len__(self) -> int:
        return len(self._frames)
