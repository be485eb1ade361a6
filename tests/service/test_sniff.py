"""service.sniff: images are known by their bytes (signatures), raw or in base64."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from service.sniff import from_base64, is_image_bytes

FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO"]


def encoded(fmt: str) -> bytes:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(16, 16, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_pillow_writes_is_sniffed_raw_and_in_base64(fmt):
    blob = encoded(fmt)
    assert is_image_bytes(blob)
    assert from_base64(base64.b64encode(blob)) == blob
    assert from_base64(base64.urlsafe_b64encode(blob)) == blob
    assert from_base64(b"data:image/x;base64," + base64.encodebytes(blob)) == blob  # MIME line breaks too


@pytest.mark.parametrize(
    "text",
    [b"hello world, nothing to see", b"BMW is a car maker and not a bitmap", b'{"a": 1}', b"P1xyz", b"", b"\x00" * 64],
)
def test_ordinary_text_and_bytes_are_not_images(text):
    assert not is_image_bytes(text)
    assert from_base64(text) is None
    assert from_base64(base64.b64encode(text)) is None
