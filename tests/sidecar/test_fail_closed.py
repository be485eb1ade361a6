"""The sidecar's block mode fails closed: each way round the gate that issue 14 found, closed.

The real demo classifier sits behind the gate on loopback and records every request
that reaches it. An image the model flags, sent in every disguise a classifier would
still read (a multipart part typed text/plain, a raw body typed text/plain, untyped or
form-urlencoded, base64 in a form value or at another JSON key), must be found, scored
and blocked; a request with no image must be refused (unless its path is explicitly
allowed); paths with dot segments or encoded separators must be refused before any
rule matches them, sent as raw bytes because HTTP clients normalise paths themselves.
"""

from __future__ import annotations

import base64
import gzip
import io
from urllib.parse import quote_from_bytes

import httpx
import numpy as np
import pytest
from PIL import Image

from service.app import create_app
from tests.service.serving import settings
from tests.sidecar.servers import LiveServer, images, raw_http


@pytest.fixture(scope="module")
def gate(classifier, gate_models_root):
    overrides = {"sidecar_paths": "/predict*,/health", "sidecar_passthrough_paths": "/health"}
    app = create_app(settings(gate_models_root, upstream=classifier.url, sidecar_policy="block", **overrides))
    server = LiveServer(app).start()
    yield server
    server.stop()


def noise_png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(28, 28), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def verdict(gate, png: bytes) -> bool:
    response = httpx.post(f"{gate.url}/score", files={"files": ("x.png", png, "image/png")}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["results"][0]["ood"]


@pytest.fixture(scope="module")
def flagged(gate) -> bytes:
    """An image the gate's model flags: an MNIST digit with the real model, else noise."""
    candidates = [png for _, png in images("mnist_")] + [noise_png(seed) for seed in range(5)]
    return next(png for png in candidates if verdict(gate, png))


@pytest.fixture(scope="module")
def passing(gate) -> bytes:
    candidates = [png for _, png in images("fashion_")]
    found = [png for png in candidates if not verdict(gate, png)]
    if not found:
        pytest.skip("the stand-in model flags every committed item")
    return found[0]


def multipart_field(png: bytes) -> dict:
    """A form field with neither filename nor type, its value the PNG's raw bytes."""
    body = b'--b0\r\nContent-Disposition: form-data; name="file"\r\n\r\n' + png + b"\r\n--b0--\r\n"
    return {"content": body, "headers": {"content-type": "multipart/form-data; boundary=b0"}}


DISGUISES = {
    "part typed text/plain": lambda png: {"files": {"file": ("x.png", png, "text/plain")}},
    "part untyped without filename": multipart_field,
    "raw body text/plain": lambda png: {"content": png, "headers": {"content-type": "text/plain"}},
    "raw body without type": lambda png: {"content": png},
    "raw body form-urlencoded": lambda png: {
        "content": png,
        "headers": {"content-type": "application/x-www-form-urlencoded"},
    },
    "base64 form value": lambda png: {
        "content": b"note=hi&img=" + quote_from_bytes(base64.b64encode(png)).encode(),
        "headers": {"content-type": "application/x-www-form-urlencoded"},
    },
    "base64 at another JSON key": lambda png: {"json": {"payload": {"pic": base64.b64encode(png).decode()}}},
    "base64 text/plain body": lambda png: {
        "content": base64.encodebytes(png),
        "headers": {"content-type": "text/plain"},
    },
    "data URL in the query": lambda png: {
        "params": {"img": "data:image/png;base64," + base64.b64encode(png).decode()},
        "content": b"{}",
        "headers": {"content-type": "application/json"},
    },
    "gzip-encoded raw body": lambda png: {
        "content": gzip.compress(png),
        "headers": {"content-type": "text/plain", "content-encoding": "gzip"},
    },
}


@pytest.mark.parametrize("disguise", list(DISGUISES))
def test_a_disguised_flagged_image_is_found_and_blocked(gate, classifier, flagged, disguise):
    before = len(classifier.recording.paths)
    response = httpx.post(f"{gate.url}/predict", timeout=60, **DISGUISES[disguise](flagged))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "out_of_distribution"
    assert response.json()["results"][0]["ood"] is True
    assert len(classifier.recording.paths) == before, "a flagged image reached the classifier"


@pytest.mark.parametrize("disguise", ["part typed text/plain", "raw body text/plain", "raw body without type"])
def test_a_disguised_passing_image_is_scored_and_forwarded(gate, classifier, passing, disguise):
    response = httpx.post(f"{gate.url}/predict", timeout=60, **DISGUISES[disguise](passing))
    assert response.status_code == 200, response.text
    assert "label" in response.json()
    assert classifier.recording.paths[-1] == "/predict"


@pytest.mark.parametrize(
    "request_kwargs",
    [{}, {"content": b"hello, no image here", "headers": {"content-type": "text/plain"}}, {"json": {"image2": 1}}],
    ids=["empty", "text", "json"],
)
def test_a_request_without_images_is_refused(gate, classifier, request_kwargs):
    before = len(classifier.recording.paths)
    response = httpx.post(f"{gate.url}/predict", timeout=60, **request_kwargs)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "no_image"
    assert len(classifier.recording.paths) == before


def test_passthrough_paths_forward_image_less_requests_but_still_score_images(gate, classifier, flagged):
    response = httpx.get(f"{gate.url}/health", timeout=60)
    assert response.status_code == 200 and response.json()["status"] == "ok"
    assert classifier.recording.paths[-1] == "/health"
    before = len(classifier.recording.paths)
    refused = httpx.post(f"{gate.url}/health", content=flagged, headers={"content-type": "text/plain"}, timeout=60)
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "out_of_distribution"
    assert len(classifier.recording.paths) == before


def test_an_unreadable_content_encoding_is_refused(gate, classifier, flagged):
    before = len(classifier.recording.paths)
    headers = {"content-type": "image/png", "content-encoding": "br"}
    response = httpx.post(f"{gate.url}/predict", content=flagged, headers=headers, timeout=60)
    assert response.status_code == 415
    assert len(classifier.recording.paths) == before


@pytest.mark.parametrize(
    "path",
    [
        "/predict/../admin",
        "/predict/../../etc/passwd",
        "/predict/%2e%2e/admin",
        "/predict/.%2E/admin",
        "/predict/..;/admin",
        "/predict/./x",
        "/predict%2F..%2Fadmin",
        "/predict/a%5C..%5Cadmin",
        "/predict/a%00b",
    ],
)
def test_paths_that_resolve_elsewhere_are_refused_before_matching(gate, classifier, path):
    before = len(classifier.recording.paths)
    request = f"GET {path} HTTP/1.1\r\nHost: gate\r\nConnection: close\r\n\r\n".encode()
    status, body = raw_http(gate.port, request)
    assert status == 400, body
    assert b'"bad_path"' in body
    assert len(classifier.recording.paths) == before


def test_doubled_slashes_collapse_and_the_upstream_gets_the_matched_path(gate, classifier, passing, flagged):
    before = len(classifier.recording.paths)
    headers = "Host: gate\r\nContent-Type: image/png\r\nConnection: close\r\n"
    blocked = f"POST //predict HTTP/1.1\r\n{headers}Content-Length: {len(flagged)}\r\n\r\n".encode() + flagged
    status, body = raw_http(gate.port, blocked)
    assert status == 422 and b"out_of_distribution" in body
    assert len(classifier.recording.paths) == before
    passed = f"POST //predict HTTP/1.1\r\n{headers}Content-Length: {len(passing)}\r\n\r\n".encode() + passing
    status, body = raw_http(gate.port, passed)
    assert status == 200, body
    assert classifier.recording.paths[-1] == "/predict"


def test_block_without_calibration_refuses_instead_of_forwarding(classifier, tiny_models_root):
    before = len(classifier.recording.paths)
    app = create_app(settings(tiny_models_root, upstream=classifier.url, sidecar_policy="block"))
    with LiveServer(app) as server:
        png = images("fashion_")[0][1]
        response = httpx.post(f"{server.url}/predict", content=png, headers={"content-type": "image/png"}, timeout=60)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "not_calibrated"
    assert len(classifier.recording.paths) == before
