"""A corpus of bad inputs against a real server: every one gets its 4xx JSON error, never a 5xx.

One server on loopback in sidecar mode (so ``/score``, ``/v2`` and the proxy are all
exercised), limits set low so the size cases stay small. Each case names the status
and error code it must get; every answer must be JSON, name the problem, and carry no
Python exception text. The count of cases and of 5xx answers is what
docs/reliability.md reports.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import logging
import struct
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from service.app import create_app
from tests.service.serving import LiveServer, calibrated_root, npy, png, raw_http, settings, smooth_images

MAX_BYTES = 3 << 20  # room for the 2 MB of 1e6-deep JSON
MAX_IMAGES = 8
EXCEPTION_WORDS = ("Traceback", "RecursionError", "OverflowError", "TypeError", "AttributeError", "KeyError")


def upstream_app() -> Starlette:
    async def ok(request):
        return PlainTextResponse("upstream")

    return Starlette(routes=[Route("/{path:path}", ok, methods=["GET", "POST"])])


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_models_root):
    root = calibrated_root(tmp_path_factory.mktemp("calibrated"), tiny_models_root)
    upstream = LiveServer(upstream_app()).start(health="/health")
    overrides = {
        "upstream": upstream.url,
        "sidecar_paths": "/predict*",
        "max_request_bytes": MAX_BYTES,
        "max_images_per_request": MAX_IMAGES,
    }
    with LiveServer(create_app(settings(root, **overrides))) as live:
        yield live
    upstream.stop()


# ---- building blocks -------------------------------------------------------------------------------

GOOD = smooth_images(1)[0]  # uint8 [1, 28, 28]
GOOD_PNG = png(GOOD)


def encoded(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format=fmt)
    return buffer.getvalue()


def png_bomb() -> bytes:
    """A valid PNG header declaring 100000 x 100000 pixels (and no pixel data to speak of)."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    header = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + header + end


def npy_bytes(array) -> bytes:
    return npy(np.asarray(array))


def pickled_npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def files(*parts) -> dict:
    return {"files": [("files", part) for part in parts]}


def multipart(body: bytes, boundary: str = "b0") -> dict:
    return {"content": body, "headers": {"content-type": f"multipart/form-data; boundary={boundary}"}}


def as_json(document) -> dict:
    return {"content": json.dumps(document).encode(), "headers": {"content-type": "application/json"}}


def raw_json(text: bytes) -> dict:
    return {"content": text, "headers": {"content-type": "application/json"}}


def typed(body: bytes, content_type: str | None, **headers) -> dict:
    all_headers = {"content-type": content_type} if content_type else {}
    all_headers.update({k.replace("_", "-"): v for k, v in headers.items()})
    return {"content": body, "headers": all_headers}


DEEP = b"[" * 1_000_000 + b"]" * 1_000_000
HUGE = "9" * 400


def v2_tensor(**changes) -> dict:
    tensor = {"name": "images", "datatype": "UINT8", "shape": [1, 28, 28], "data": GOOD.ravel().tolist()}
    tensor.update(changes)
    return tensor


def v2(inputs=None, **fields) -> dict:
    return as_json({"inputs": [v2_tensor()] if inputs is None else inputs, **fields})


def v2_raw(prefix: bytes) -> dict:
    """An inference request whose JSON starts with ``prefix`` (for numbers JSON libraries will not write)."""
    tensor = json.dumps([v2_tensor()]).encode()
    return raw_json(b"{" + prefix + b', "inputs": ' + tensor + b"}")


V2 = "/v2/models/tiny/infer"

# (id, method, path, request kwargs, status, code)
CASES = [
    # --- POST /score: multipart ---
    ("truncated PNG", "POST", "/score", files(GOOD_PNG[:60]), 400, "truncated_image"),
    ("PNG decompression bomb", "POST", "/score", files(png_bomb()), 413, "decompression_bomb"),
    ("PNG of the wrong size", "POST", "/score", files(png(np.zeros((32, 32), np.uint8))), 422, "wrong_size"),
    (
        "RGB PNG for a grayscale model",
        "POST",
        "/score",
        files(encoded(np.zeros((28, 28, 3), np.uint8), "PNG")),
        422,
        "wrong_channels",
    ),
    (
        "truncated JPEG",
        "POST",
        "/score",
        files(encoded(np.zeros((28, 28), np.uint8), "JPEG")[:40]),
        400,
        "not_an_image",
    ),
    (
        "ICO, a format not served",
        "POST",
        "/score",
        files(encoded(np.zeros((28, 28), np.uint8), "ICO")),
        415,
        "unsupported_image_format",
    ),
    ("text instead of an image", "POST", "/score", files(b"hello, I am not a picture"), 400, "not_an_image"),
    ("empty file part", "POST", "/score", files(b""), 400, "empty_image"),
    ("more files than allowed", "POST", "/score", files(*[GOOD_PNG] * (MAX_IMAGES + 1)), 413, "too_many_images"),
    (
        "multipart without files parts",
        "POST",
        "/score",
        {"data": {"other": "x"}, "files": {"x": ("a", b"b")}},
        400,
        "no_images",
    ),
    (
        "files part without filename",
        "POST",
        "/score",
        multipart(b'--b0\r\nContent-Disposition: form-data; name="files"\r\n\r\nabc\r\n--b0--\r\n'),
        400,
        "not_a_file",
    ),
    (
        "multipart without boundary",
        "POST",
        "/score",
        typed(b"--x\r\n\r\n", "multipart/form-data"),
        400,
        "bad_multipart",
    ),
    ("multipart garbage", "POST", "/score", multipart(b"\x00\x01garbage"), 400, "bad_multipart"),
    # --- POST /score: JSON ---
    ("JSON nested 1e6 deep", "POST", "/score", raw_json(DEEP), 400, "bad_json"),
    ("JSON that does not parse", "POST", "/score", raw_json(b'{"images": [}'), 400, "bad_json"),
    ("JSON in Latin-1", "POST", "/score", raw_json('{"images": "\xe9"}'.encode("latin-1")), 400, "bad_json"),
    ("JSON without images", "POST", "/score", as_json({"pictures": []}), 400, "no_images"),
    ("JSON images empty", "POST", "/score", as_json({"images": []}), 400, "no_images"),
    ("JSON images not a list", "POST", "/score", as_json({"images": "abc"}), 400, "no_images"),
    ("JSON top level a list", "POST", "/score", as_json([1, 2]), 400, "no_images"),
    ("JSON b64 a number", "POST", "/score", as_json({"images": [{"b64": 5}]}), 400, "bad_json"),
    ("JSON b64 not base64", "POST", "/score", as_json({"images": [{"b64": "$$$"}]}), 400, "bad_base64"),
    (
        "JSON b64 of text",
        "POST",
        "/score",
        as_json({"images": [{"b64": base64.b64encode(b"hi").decode()}]}),
        400,
        "not_an_image",
    ),
    # --- POST /score: npy and raw ---
    ("npy pickled object array", "POST", "/score", typed(pickled_npy(), "application/x-npy"), 400, "bad_npy"),
    ("npy without magic", "POST", "/score", typed(b"not npy at all", "application/x-npy"), 400, "bad_npy"),
    (
        "npy truncated",
        "POST",
        "/score",
        typed(npy_bytes(smooth_images(2)[:, 0])[:-10], "application/x-npy"),
        400,
        "bad_npy",
    ),
    (
        "npy NaN pixels",
        "POST",
        "/score",
        typed(npy_bytes(np.full((1, 28, 28), np.nan)), "application/x-npy"),
        422,
        "non_finite",
    ),
    (
        "npy values past 255",
        "POST",
        "/score",
        typed(npy_bytes(np.full((1, 28, 28), 300.0)), "application/x-npy"),
        422,
        "out_of_range",
    ),
    (
        "npy fractional pixels",
        "POST",
        "/score",
        typed(npy_bytes(np.full((1, 28, 28), 0.5)), "application/x-npy"),
        422,
        "not_integer",
    ),
    ("npy strings", "POST", "/score", typed(npy_bytes(np.array([["a"]])), "application/x-npy"), 422, "bad_dtype"),
    (
        "npy two dimensions",
        "POST",
        "/score",
        typed(npy_bytes(np.zeros((28, 28), np.uint8)), "application/x-npy"),
        422,
        "wrong_shape",
    ),
    (
        "npy wrong image size",
        "POST",
        "/score",
        typed(npy_bytes(np.zeros((1, 5, 5), np.uint8)), "application/x-npy"),
        422,
        "wrong_size",
    ),
    (
        "npy zero images",
        "POST",
        "/score",
        typed(npy_bytes(np.zeros((0, 28, 28), np.uint8)), "application/x-npy"),
        400,
        "no_images",
    ),
    (
        "npy too many images",
        "POST",
        "/score",
        typed(npy_bytes(np.zeros((9, 28, 28), np.uint8)), "application/x-npy"),
        413,
        "too_many_images",
    ),
    (
        "body past the byte limit",
        "POST",
        "/score",
        typed(b"\x00" * (MAX_BYTES + 1), "image/png"),
        413,
        "body_too_large",
    ),
    ("raw image/png that is not one", "POST", "/score", typed(b"GIF89a-not-really", "image/png"), 400, "not_an_image"),
    ("text/plain body", "POST", "/score", typed(GOOD_PNG, "text/plain"), 415, "unsupported_media_type"),
    ("no content type", "POST", "/score", typed(GOOD_PNG, None), 415, "unsupported_media_type"),
    ("empty body", "POST", "/score", typed(b"", "image/png"), 400, "empty_body"),
    # --- POST /score: query ---
    ("alpha not a number", "POST", "/score?alpha=abc", files(GOOD_PNG), 422, "invalid_parameter"),
    ("alpha 2", "POST", "/score?alpha=2", files(GOOD_PNG), 422, "invalid_alpha"),
    ("alpha NaN", "POST", "/score?alpha=nan", files(GOOD_PNG), 422, "invalid_alpha"),
    ("alpha of 400 digits", "POST", f"/score?alpha={HUGE}", files(GOOD_PNG), 422, "invalid_alpha"),
    ("alpha 1e999", "POST", "/score?alpha=1e999", files(GOOD_PNG), 422, "invalid_alpha"),
    ("timeout_ms -5", "POST", "/score?timeout_ms=-5", files(GOOD_PNG), 422, "invalid_parameter"),
    ("timeout_ms NaN", "POST", "/score?timeout_ms=nan", files(GOOD_PNG), 422, "invalid_parameter"),
    ("timeout_ms zero", "POST", "/score?timeout_ms=0", files(GOOD_PNG), 422, "invalid_parameter"),
    ("levels not a boolean", "POST", "/score?levels=maybe", files(GOOD_PNG), 422, "invalid_parameter"),
    ("unknown score", "POST", "/score?score=nope", files(GOOD_PNG), 422, "unknown_score"),
    ("unknown model", "POST", "/score?model=nope", files(GOOD_PNG), 404, "unknown_model"),
    ("unknown version", "POST", "/score?model=tiny&version=99", files(GOOD_PNG), 404, "unknown_model"),
    ("GET on /score", "GET", "/score", {}, 405, "method_not_allowed"),
    # --- POST /v2/models/{name}/infer ---
    ("v2 JSON nested 1e6 deep", "POST", V2, raw_json(DEEP), 400, "bad_json"),
    ("v2 not JSON", "POST", V2, raw_json(b"\xff\xfe"), 400, "bad_json"),
    ("v2 top level a list", "POST", V2, as_json([]), 400, "bad_json"),
    ("v2 empty body", "POST", V2, raw_json(b""), 400, "empty_body"),
    (
        "v2 timeout_ms of 400 digits",
        "POST",
        V2,
        v2_raw(b'"parameters": {"timeout_ms": ' + HUGE.encode() + b"}"),
        422,
        "invalid_parameter",
    ),
    (
        "v2 alpha of 400 digits",
        "POST",
        V2,
        v2_raw(b'"parameters": {"alpha": ' + HUGE.encode() + b"}"),
        422,
        "invalid_parameter",
    ),
    ("v2 timeout_ms -5", "POST", V2, v2(parameters={"timeout_ms": -5}), 422, "invalid_parameter"),
    ("v2 timeout_ms NaN", "POST", V2, v2_raw(b'"parameters": {"timeout_ms": NaN}'), 422, "invalid_parameter"),
    ("v2 alpha Infinity", "POST", V2, v2_raw(b'"parameters": {"alpha": Infinity}'), 422, "invalid_parameter"),
    ("v2 alpha a string", "POST", V2, v2(parameters={"alpha": "0.1"}), 422, "invalid_parameter"),
    ("v2 alpha 0", "POST", V2, v2(parameters={"alpha": 0}), 422, "invalid_alpha"),
    ("v2 unknown score", "POST", V2, v2(parameters={"score": "nope"}), 422, "unknown_score"),
    ("v2 score a list", "POST", V2, v2(parameters={"score": []}), 422, "invalid_parameter"),
    ("v2 binary_data_output a list", "POST", V2, v2(parameters={"binary_data_output": []}), 422, "invalid_parameter"),
    ("v2 parameters a list", "POST", V2, v2(parameters=[1]), 400, "bad_parameters"),
    ("v2 id NaN", "POST", V2, v2_raw(b'"id": NaN'), 400, "bad_id"),
    ("v2 id a list", "POST", V2, v2(id=[1]), 400, "bad_id"),
    ("v2 no inputs", "POST", V2, as_json({"id": "x"}), 400, "bad_inputs"),
    ("v2 two inputs", "POST", V2, v2(inputs=[v2_tensor(), v2_tensor()]), 400, "bad_inputs"),
    ("v2 input not an object", "POST", V2, v2(inputs=[5]), 400, "bad_inputs"),
    ("v2 datatype []", "POST", V2, v2(inputs=[v2_tensor(datatype=[])]), 400, "bad_datatype"),
    ("v2 datatype unknown", "POST", V2, v2(inputs=[v2_tensor(datatype="COMPLEX")]), 400, "bad_datatype"),
    ("v2 shape [false]", "POST", V2, v2(inputs=[v2_tensor(shape=[False])]), 400, "bad_shape"),
    ("v2 shape negative", "POST", V2, v2(inputs=[v2_tensor(shape=[-1, 28, 28])]), 400, "bad_shape"),
    ("v2 shape of 10**30", "POST", V2, v2(inputs=[v2_tensor(shape=[10**30])]), 400, "bad_shape"),
    ("v2 shape not a list", "POST", V2, v2(inputs=[v2_tensor(shape="1,28,28")]), 400, "bad_shape"),
    ("v2 shape and data disagree", "POST", V2, v2(inputs=[v2_tensor(shape=[2, 28, 28])]), 400, "bad_data"),
    ("v2 data strings", "POST", V2, v2(inputs=[v2_tensor(data=["a"] * 784)]), 400, "bad_data"),
    ("v2 data of 400-digit ints", "POST", V2, v2(inputs=[v2_tensor(data=[10**400] * 784)]), 400, "bad_data"),
    ("v2 data missing", "POST", V2, v2(inputs=[v2_tensor(data=None)]), 400, "no_data"),
    ("v2 data past 255", "POST", V2, v2(inputs=[v2_tensor(datatype="INT32", data=[300] * 784)]), 422, "out_of_range"),
    (
        "v2 data NaN",
        "POST",
        V2,
        raw_json(json.dumps({"inputs": [v2_tensor(datatype="FP32", data=[float("nan")] * 784)]}).encode()),
        422,
        "non_finite",
    ),
    ("v2 wrong image size", "POST", V2, v2(inputs=[v2_tensor(shape=[1, 4, 196])]), 422, "wrong_size"),
    ("v2 tensor parameters a list", "POST", V2, v2(inputs=[v2_tensor(parameters=[1])]), 400, "bad_parameters"),
    (
        "v2 binary_data_size past the data",
        "POST",
        V2,
        v2(inputs=[v2_tensor(data=None, parameters={"binary_data_size": 10})]),
        400,
        "bad_binary_size",
    ),
    (
        "v2 BYTES not base64",
        "POST",
        V2,
        v2(inputs=[{"name": "i", "datatype": "BYTES", "shape": [1], "data": ["$"]}]),
        400,
        "bad_base64",
    ),
    (
        "v2 BYTES count and shape disagree",
        "POST",
        V2,
        v2(inputs=[{"name": "i", "datatype": "BYTES", "shape": [2], "data": [base64.b64encode(GOOD_PNG).decode()]}]),
        400,
        "bad_shape",
    ),
    (
        "v2 BYTES of a truncated PNG",
        "POST",
        V2,
        v2(
            inputs=[
                {"name": "i", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(GOOD_PNG[:50]).decode()]}
            ]
        ),
        400,
        "truncated_image",
    ),
    ("v2 outputs not a list", "POST", V2, v2(outputs={"name": "bpd"}), 400, "bad_outputs"),
    ("v2 unknown output", "POST", V2, v2(outputs=[{"name": "nope"}]), 400, "unknown_output"),
    ("v2 output name a list", "POST", V2, v2(outputs=[{"name": []}]), 400, "unknown_output"),
    (
        "v2 output parameters a list",
        "POST",
        V2,
        v2(outputs=[{"name": "bpd", "parameters": [1]}]),
        400,
        "bad_parameters",
    ),
    (
        "v2 header length not a number",
        "POST",
        V2,
        typed(b"{}", "application/json", inference_header_content_length="x"),
        400,
        "bad_header_length",
    ),
    (
        "v2 header length past the body",
        "POST",
        V2,
        typed(b"{}", "application/json", inference_header_content_length=HUGE),
        400,
        "bad_header_length",
    ),
    (
        "v2 brotli body",
        "POST",
        V2,
        typed(b"{}", "application/json", content_encoding="br"),
        415,
        "unsupported_encoding",
    ),
    (
        "v2 gzip garbage",
        "POST",
        V2,
        typed(b"\x1f\x8bnot gzip", "application/json", content_encoding="gzip"),
        400,
        "bad_encoding",
    ),
    (
        "v2 gzip bomb",
        "POST",
        V2,
        typed(gzip.compress(b" " * (4 * MAX_BYTES)), "application/json", content_encoding="gzip"),
        413,
        "body_too_large",
    ),
    ("v2 unknown model", "POST", "/v2/models/nope/infer", v2(), 404, "unknown_model"),
    ("v2 unknown version", "POST", "/v2/models/tiny/versions/9/infer", v2(), 404, "unknown_model"),
    ("v2 metadata of an unknown model", "GET", "/v2/models/nope", {}, 404, "unknown_model"),
    # --- the sidecar (block) ---
    ("sidecar JSON nested 1e6 deep", "POST", "/predict", raw_json(DEEP), 400, "bad_json"),
    (
        "sidecar JSON with a repeated key",
        "POST",
        "/predict",
        raw_json(b'{"image": "a", "image": "b"}'),
        400,
        "duplicate_key",
    ),
    ("sidecar bad base64 at the image path", "POST", "/predict", as_json({"image": "$$$"}), 400, "bad_base64"),
    ("sidecar truncated PNG", "POST", "/predict", typed(GOOD_PNG[:60], "image/png"), 400, "truncated_image"),
    (
        "sidecar multipart cut short",
        "POST",
        "/predict",
        multipart(b'--b0\r\nContent-Disposition: form-data; name="f"; filename="a"\r\n\r\n' + GOOD_PNG),
        400,
        "bad_multipart",
    ),
    ("sidecar no image", "POST", "/predict", typed(b"just words", "text/plain"), 422, "no_image"),
    (
        "sidecar unknown encoding",
        "POST",
        "/predict",
        typed(GOOD_PNG, "image/png", content_encoding="br"),
        415,
        "unsupported_encoding",
    ),
    (
        "sidecar body past the limit",
        "POST",
        "/predict",
        typed(b"\x00" * (MAX_BYTES + 1), "text/plain"),
        413,
        "body_too_large",
    ),
    ("sidecar path outside the proxied set", "GET", "/elsewhere", {}, 404, "not_proxied"),
]

RAW_CASES = [  # sent byte for byte: clients would normalise these paths
    ("dot segments", b"GET /predict/../admin HTTP/1.1", 400, "bad_path"),
    ("dot segments to /etc/passwd", b"GET /predict/../../etc/passwd HTTP/1.1", 400, "bad_path"),
    ("encoded separator", b"GET /predict%2F..%2Fadmin HTTP/1.1", 400, "bad_path"),
    ("encoded NUL", b"GET /predict/%00 HTTP/1.1", 400, "bad_path"),
]


def check_error(status: int, body: bytes, path: str, expected_status: int, code: str) -> None:
    assert status == expected_status, body[:300]
    document = json.loads(body)
    error = document["error"]
    if path.startswith("/v2"):
        assert error.startswith(f"[{code}] "), error  # the protocol's {"error": "<message>"}
    else:
        assert error["code"] == code, error
        assert error["message"]
    assert not any(word.encode() in body for word in EXCEPTION_WORDS), body[:300]


@pytest.mark.parametrize("name, method, path, kwargs, status, code", CASES, ids=[c[0] for c in CASES])
def test_every_bad_input_gets_its_4xx_json_error(server, name, method, path, kwargs, status, code):
    response = httpx.request(method, f"{server.url}{path}", timeout=60, **kwargs)
    assert response.headers["content-type"].startswith("application/json")
    check_error(response.status_code, response.content, path, status, code)


@pytest.mark.parametrize("name, request_line, status, code", RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_paths_clients_would_normalise(server, name, request_line, status, code):
    got, body = raw_http(server.port, request_line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
    check_error(got, body, "/predict", status, code)


def test_the_server_still_answers_after_the_corpus(server):
    response = httpx.post(f"{server.url}/score", timeout=60, **files(GOOD_PNG))
    assert response.status_code == 200
    assert len(response.json()["results"]) == 1


def test_an_unexpected_exception_is_a_generic_500_logged_in_full(tiny_models_root):
    app = create_app(settings(tiny_models_root))
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append
    logger = logging.getLogger("service.api.errors")

    def broken():
        raise RuntimeError("secret internals at /srv/x")

    logger.addHandler(handler)
    try:
        with LiveServer(app) as live:
            app.state.dataplane.repository.all = broken  # after start-up, which lists the models too
            rest = httpx.get(f"{live.url}/models", timeout=30)
    finally:
        logger.removeHandler(handler)
    assert rest.status_code == 500
    assert rest.json()["error"]["code"] == "internal_error"
    assert b"secret" not in rest.content and b"RuntimeError" not in rest.content
    logged = [r for r in records if r.exc_info and "secret internals" in str(r.exc_info[1])]
    assert logged, "the exception must be in the server's log"
