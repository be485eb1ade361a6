"""Reading JSON bodies: the fast parser gives what the standard library gave, and refuses the same way."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.api.body import load_json
from service.errors import ServiceError


@pytest.mark.parametrize(
    "text",
    [
        '{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [2, 2], "data": [0, 255, 17, 3]}]}',
        '{"a": 1e400, "b": -0.0, "c": 1.5e-7, "d": "\\u00e9\\ud83d\\ude00", "e": [true, false, null]}',
        '{"k": 1, "k": 2}',  # a repeated key: the last one wins in both parsers
        "[18446744073709551615, -9223372036854775808]",
    ],
)
def test_well_formed_bodies_parse_to_what_the_standard_library_gives(text):
    assert load_json(text.encode(), "the body") == json.loads(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"a": NaN, "b": Infinity}',  # the standard library takes these; so does the service, as before
        "[123456789012345678901234567890]",  # past 64 bits
    ],
)
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])  # the standard library detects UTF-16 and -32
def test_what_the_fast_parser_refuses_the_standard_library_still_decides(text, encoding):
    parsed = load_json(text.encode(encoding), "the body")
    assert json.dumps(parsed) == json.dumps(json.loads(text))


@pytest.mark.parametrize("body", [b"", b"{", b'{"a": 1,}', b"\xff\xfe\x00", b"[" * 5000 + b"]" * 5000])
def test_bad_json_is_a_400_with_the_standard_librarys_reason(body):
    with pytest.raises(ServiceError) as caught:
        load_json(body, "the inference request")
    assert caught.value.status == 400 and caught.value.code == "bad_json"
    assert "the inference request" in caught.value.message
    try:
        json.loads(body)
    except RecursionError:
        assert "nested too deeply" in caught.value.message
    except ValueError as exc:
        assert str(exc) in caught.value.message


def test_an_object_pairs_hook_still_sees_every_pair():
    seen = []
    load_json(b'{"a": 1, "a": 2}', "the body", object_pairs_hook=lambda pairs: seen.extend(pairs) or dict(pairs))
    assert seen == [("a", 1), ("a", 2)]


def test_pixel_lists_stay_integers():
    pixels = np.random.default_rng(0).integers(0, 256, 3 * 28 * 28)
    parsed = load_json(json.dumps({"data": pixels.tolist()}).encode(), "the body")
    assert parsed["data"] == pixels.tolist() and all(type(v) is int for v in parsed["data"][:10])
