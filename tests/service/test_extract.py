"""service.extract: the contract readers refuse what their type does not allow; the search finds images by their
bytes, wherever a request puts them."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

from service.errors import ServiceError
from service.extract import ImageFinder, form_images, json_images, multipart_part_count, npy_array

from .serving import npy
from .test_sniff import encoded


@pytest.fixture(scope="module")
def png() -> bytes:
    return encoded("PNG")


@pytest.fixture()
def finder() -> ImageFinder:
    return ImageFinder("image", 1 << 20, 1000)


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


@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28),
        np.asfortranarray(np.arange(2 * 28 * 28 * 3, dtype=np.uint8).reshape(2, 28, 28, 3)),
        np.arange(28 * 28, dtype=">u2").reshape(1, 28, 28),
        np.linspace(0, 255, 28 * 28, dtype=np.float32).reshape(1, 28, 28),
    ],
    ids=["uint8", "fortran-hwc", "big-endian-u16", "float32"],
)
@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_npy_reader_matches_numpy(array, version):
    """The cached-header reader gives exactly what np.load gives, for every layout np.save can write."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version)
    body = buffer.getvalue()
    for _ in range(2):  # the second read hits the header cache
        parsed = npy_array(body)
        np.testing.assert_array_equal(parsed, np.load(io.BytesIO(body)))
        assert parsed.dtype == array.dtype and parsed.shape == array.shape


def test_truncated_or_padded_npy_is_a_clear_400():
    body = npy(np.zeros((2, 28, 28), np.uint8))
    for broken in (body[:-1], body + b"\0", body[:20]):
        with pytest.raises(ServiceError) as caught:
            npy_array(broken)
        assert caught.value.status == 400 and caught.value.code == "bad_npy"


def form_part(name: bytes, content: bytes, filename: bytes | None = b"x.png") -> tuple[bytes, bytes]:
    disposition = b'Content-Disposition: form-data; name="' + name + b'"'
    if filename is not None:
        disposition += b'; filename="' + filename + b'"'
    return disposition, content


def test_form_images_are_the_files_parts_in_order(png):
    body = multipart(form_part(b"files", png), form_part(b"note", b"hi", None), form_part(b"files", b"second"))
    assert form_images(MULTIPART, body, 4, 1 << 20) == [png, b"second"]
    assert multipart_part_count(MULTIPART, body) == 3
    assert multipart_part_count("multipart/form-data", body) == 1  # no boundary: unsure


@pytest.mark.parametrize(
    "body, status, code, index",
    [
        (multipart(form_part(b"files", b"a"), form_part(b"files", b"abc", None)), 400, "not_a_file", 1),
        (multipart(form_part(b"other", b"a")), 400, "no_images", None),
        (multipart(*[form_part(b"files", b"a")] * 3), 413, "too_many_images", None),
        (multipart(*[form_part(b"f", b"a", None)] * 3, form_part(b"files", b"a")), 413, "too_many_images", None),
        (multipart((b"Content-Disposition: form-data", b"a")), 400, "bad_multipart", None),
        (multipart(form_part(b"files", b"a"))[:-8], 400, "bad_multipart", None),  # cut short: nothing is lost unsaid
        (b"\x00\x01garbage", 400, "bad_multipart", None),
    ],
    ids=["not-a-file", "no-files", "too-many-files", "too-many-fields", "no-name", "cut-short", "garbage"],
)
def test_form_images_refuse_what_the_contract_does_not_allow(body, status, code, index):
    with pytest.raises(ServiceError) as caught:
        form_images(MULTIPART, body, 2, 1 << 20)
    assert (caught.value.status, caught.value.code, caught.value.index) == (status, code, index)
    with pytest.raises(ServiceError) as caught:
        form_images("multipart/form-data", body, 2, 1 << 20)
    assert (caught.value.status, caught.value.code) == (400, "bad_multipart")  # no boundary


def test_json_images_decode_strict_base64_and_name_the_image(png):
    assert json_images(b'{"images": [{"b64": "' + base64.b64encode(png) + b'"}]}') == [png]
    with pytest.raises(ServiceError) as caught:
        json_images(b'{"images": [{"b64": "aGk="}, {"b64": "a GVsbG8="}]}')
    assert (caught.value.code, caught.value.index) == ("bad_base64", 1)


def test_the_search_caps_multipart_parts_as_configured(png):
    body = multipart(*[(b'Content-Disposition: form-data; name="a"', b"x")] * 3)
    assert ImageFinder("image", 1 << 20, 3).find(MULTIPART, body) == []
    with pytest.raises(ServiceError) as caught:
        ImageFinder("image", 1 << 20, 2).find(MULTIPART, body)
    assert caught.value.code == "bad_multipart" and "more than 2 multipart parts" in caught.value.message
