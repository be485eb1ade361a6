"""service.extract: images are found by their bytes, wherever a request puts them."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from service.errors import ServiceError
from service.extract import ImageFinder, from_base64, is_image_bytes

FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO"]


def encoded(fmt: str) -> bytes:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(16, 16, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def png() -> bytes:
    return encoded("PNG")


@pytest.fixture()
def finder() -> ImageFinder:
    return ImageFinder("image", 1 << 20)


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


def multipart(*parts: tuple[bytes, bytes]) -> bytes:
    body = b"".join(b"--zz\r\n" + headers + b"\r\n\r\n" + content + b"\r\n" for headers, content in parts)
    return body + b"--zz--\r\n"


def test_multipart_parts_are_searched_by_their_bytes(finder, png):
    body = multipart(
        (b'Content-Disposition: form-data; name="a"; filename="a.txt"\r\nContent-Type: text/plain', png),
        (b'Content-Disposition: form-data; name="b"', base64.b64encode(png)),
        (b'Content-Disposition: form-data; name="c"', b"just a note"),
        (
            b'Content-Disposition: form-data; name="d"\r\nContent-Type: application/json',
            b'{"image": "' + base64.b64encode(png) + b'"}',
        ),
    )
    assert finder.find("multipart/form-data; boundary=zz", body) == [png, png, png]


def test_json_strict_at_the_path_sniffed_elsewhere(finder, png):
    b64 = base64.b64encode(png).decode()
    assert finder.find("application/json", f'{{"image": "{b64}", "x": [{{"y": "{b64}"}}], "n": "text"}}'.encode()) == [
        png,
        png,
    ]
    with pytest.raises(ServiceError) as caught:
        finder.find("application/json", b'{"image": "not base64!"}')
    assert caught.value.code == "bad_base64"


MULTIPART = "multipart/form-data; boundary=zz"


@pytest.mark.parametrize(
    "content_type, body, code",
    [
        (MULTIPART, multipart((b'Content-Disposition: form-data; name="a"', b"x"))[:-8], "bad_multipart"),
        (MULTIPART, b"no boundary at all", "bad_multipart"),
        ("multipart/form-data", b"--zz--\r\n", "bad_multipart"),
        ("application/json", b'{"image": "a", "image": "b"}', "duplicate_key"),
        ("application/json", b"[" * 100_000, "bad_json"),
        ("application/json", b"{nope", "bad_json"),
    ],
)
def test_what_parsers_could_read_differently_is_a_400(finder, content_type, body, code):
    with pytest.raises(ServiceError) as caught:
        finder.find(content_type, body)
    assert (caught.value.status, caught.value.code) == (400, code)


def test_undeclared_json_is_searched_too_and_broken_json_is_just_text(finder, png):
    b64 = base64.b64encode(png).decode()
    assert finder.find("", f'{{"deep": {{"er": "{b64}"}}}}'.encode()) == [png]
    assert finder.find("text/plain", b"{not json") == []


def test_query_values_are_searched(finder, png):
    query = b"a=1&img=" + base64.urlsafe_b64encode(png)
    assert finder.find("", b"", query) == [png]
