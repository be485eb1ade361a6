"""service.urlpath: one normal form of a path, or a 400."""

from __future__ import annotations

import pytest

from service.errors import ServiceError
from service.urlpath import normalise


@pytest.mark.parametrize(
    "raw, decoded, forwarded",
    [
        (b"/predict", "/predict", b"/predict"),
        (b"//predict///v1/", "/predict/v1/", b"/predict/v1/"),
        (b"/a%20b/c;x", "/a b/c;x", b"/a%20b/c;x"),
        (b"/", "/", b"/"),
        (b"/%2e%2ex", "/..x", b"/%2e%2ex"),
    ],
)
def test_normal_form(raw, decoded, forwarded):
    path = normalise(raw)
    assert (path.decoded, path.raw) == (decoded, forwarded)


@pytest.mark.parametrize(
    "raw",
    [
        b"/a/../b",
        b"/a/./b",
        b"/a/%2E%2e/b",
        b"/a/..;x/b",
        b"/a%2fb",
        b"/a%5Cb",
        b"/a\\b",
        b"/a%00",
        b"/a%0d%0a",
        b"x/y",
    ],
)
def test_paths_servers_read_differently_are_refused(raw):
    with pytest.raises(ServiceError) as caught:
        normalise(raw)
    assert (caught.value.status, caught.value.code) == (400, "bad_path")
