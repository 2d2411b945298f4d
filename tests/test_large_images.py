"""A large image of one's own is read without PIL's warning; one over the bomb limit is skipped
with a reason that says how to raise the limit."""

from __future__ import annotations

import warnings

import pytest
from PIL import Image

from vivi.data.tasks import UnreadableImage, read_image


def test_large_images_are_read_quietly_and_huge_ones_refused_with_the_way_out(tmp_path, monkeypatch):
    path = tmp_path / "scan.png"
    Image.new("RGB", (100, 60)).save(path)  # 6000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # PIL warns above 4000, refuses above 8000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tuple(read_image(path).shape) == (3, 60, 100)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    with pytest.raises(UnreadableImage, match=r"scan\.png: unreadable image \(over 4000 pixels, .* set VIVI_MAX_IMAGE_PIXELS"):
        read_image(path)
