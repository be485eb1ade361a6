"""``POST /score`` and ``GET /models`` against a real server: values, body types, bad input, metrics."""

from __future__ import annotations

import base64
import io
import subprocess
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from service.artifact import bits_per_dim
from service.complexity import complexity_bits
from tests.conftest import require_tool

from .serving import LiveServer, create_app, npy, png, random_images, reference_stats, settings, smooth_images

pytestmark = pytest.mark.slow

LIMITS = {"max_images_per_request": 8, "max_request_bytes": 64 * 1024, "max_image_pixels": 100 * 100}


@pytest.fixture(scope="module")
def server(tiny_models_root):
    app = create_app(settings(tiny_models_root, max_batch_size=4, **LIMITS))
    with LiveServer(app) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def multipart(images: list[bytes]) -> list:
    return [("files", (f"{i}.png", blob, "image/png")) for i, blob in enumerate(images)]


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body["error"]) == {"code", "message", "index"}
    return body["error"]


def test_multipart_values_match_the_graph_in_order(client, tiny_models_root):
    images = random_images(7, seed=3)  # 7 images, batches of 4: split and reassembled
    response = client.post("/score", files=multipart([png(x) for x in images]), params={"levels": "true"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"], body["alpha"], body["score"]) == ("tiny", "1", 0.05, "complexity")
    expected = reference_stats(tiny_models_root, images)
    bits = complexity_bits(images)
    assert len(body["results"]) == 7
    for i, result in enumerate(body["results"]):
        for name in ("log_pz", "log_det", "log_px", "bpd"):
            assert result[name] == pytest.approx(float(expected[name][i]), rel=1e-5, abs=1e-4)
        assert result["log_px"] == pytest.approx(result["log_pz"] + result["log_det"], rel=1e-5)
        assert result["bpd"] == pytest.approx(bits_per_dim(result["log_px"], 28 * 28), rel=1e-5)
        assert len(result["log_pz_levels"]) == 2 and len(result["log_det_levels"]) == 2
        assert sum(result["log_pz_levels"]) == pytest.approx(result["log_pz"], rel=1e-4)
        assert sum(result["log_det_levels"]) == pytest.approx(result["log_det"], rel=1e-4)
        # uncalibrated bundle: raw scores, never a made-up flag
        assert set(result["scores"]) == {"bpd", "complexity"}
        assert result["scores"]["complexity"] == pytest.approx(result["bpd"] - bits[i] / 784, rel=1e-5)
        assert result["score"] == "complexity" and result["p_value"] is None and result["ood"] is None


def test_the_three_body_types_agree(client):
    images = random_images(3, seed=4)
    by_multipart = client.post("/score", files=multipart([png(x) for x in images])).json()["results"]
    by_json = client.post("/score", json={"images": [{"b64": base64.b64encode(png(x)).decode()} for x in images]})
    by_npy = client.post("/score", content=npy(images[:, 0]), headers={"content-type": "application/x-npy"})
    by_npy_hwc = client.post(
        "/score", content=npy(images.transpose(0, 2, 3, 1)), headers={"content-type": "application/x-npy"}
    )
    by_raw = client.post("/score", content=png(images[0]), headers={"content-type": "image/png"})
    for response in (by_json, by_npy, by_npy_hwc, by_raw):
        assert response.status_code == 200, response.text
        for a, b in zip(response.json()["results"], by_multipart, strict=False):
            assert a["bpd"] == pytest.approx(b["bpd"], rel=1e-6)
    assert "log_pz_levels" not in by_multipart[0]  # only with levels=true


def test_models_lists_the_bundle(client):
    body = client.get("/models").json()
    assert body["default"] == "tiny"
    (model,) = body["models"]
    assert model["name"] == "tiny" and model["version"] == "1"
    assert model["input"]["shape"] == [1, 28, 28] and model["input"]["color_mode"] == "L"
    assert (model["backend"], model["device"], model["ready"]) == ("onnx", "cpu", True)
    assert model["calibration"]["calibrated"] is False


def truncated_png() -> bytes:
    blob = png(random_images(1, seed=5)[0])
    return blob[: len(blob) // 2]


def bomb_png() -> bytes:
    """A few hundred bytes declaring 4000x4000 pixels: must be refused from its header."""
    buffer = io.BytesIO()
    Image.new("1", (4000, 4000)).save(buffer, format="PNG")
    return buffer.getvalue()


def rgb_png() -> bytes:
    return png(np.zeros((3, 28, 28), dtype=np.uint8))


GOOD = png(np.full((1, 28, 28), 7, dtype=np.uint8))

MULTIPART_CASES = {
    "not an image": ([GOOD, b"this is not an image"], 400, "not_an_image", 1),
    "truncated": ([GOOD, GOOD, truncated_png()], 400, "truncated_image", 2),
    "decompression bomb": ([bomb_png()], 413, "decompression_bomb", 0),
    "wrong size": ([GOOD, png(np.zeros((1, 32, 32), dtype=np.uint8))], 422, "wrong_size", 1),
    "wrong channels": ([rgb_png()], 422, "wrong_channels", 0),
    "empty part": ([GOOD, b""], 400, "empty_image", 1),
    "too many images": ([GOOD] * 9, 413, "too_many_images", None),
    "unsupported image format": ([b"%PDF-1.4 not an image either"], 400, "not_an_image", 0),
}


@pytest.mark.parametrize("case", list(MULTIPART_CASES))
def test_bad_images_get_json_errors_naming_the_image(client, case):
    blobs, status, code, index = MULTIPART_CASES[case]
    response = client.post("/score", files=multipart(blobs))
    assert response.status_code == status, response.text
    error = error_of(response)
    assert error["code"] == code and error["index"] == index
    assert error["message"]


def test_tiff_and_webp_decode_but_ico_is_unsupported(client):
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(buffer, format="ICO")
    response = client.post("/score", files=multipart([buffer.getvalue()]))
    assert response.status_code == 415 and error_of(response)["code"] == "unsupported_image_format"


def npy_post(client, array, **params):
    return client.post("/score", content=npy(array), headers={"content-type": "application/x-npy"}, params=params)


def test_bad_bodies_and_parameters(client):
    cases = []
    cases.append((client.post("/score", content=b"", headers={"content-type": "image/png"}), 400, "empty_body"))
    cases.append(
        (
            client.post("/score", content=b"x" * (64 * 1024 + 1), headers={"content-type": "image/png"}),
            413,
            "body_too_large",
        )
    )
    cases.append(
        (client.post("/score", content=b"hello", headers={"content-type": "text/plain"}), 415, "unsupported_media_type")
    )
    cases.append(
        (client.post("/score", content=b"{not json", headers={"content-type": "application/json"}), 400, "bad_json")
    )
    cases.append((client.post("/score", json={"images": [{"b64": "!!!"}]}), 400, "bad_base64"))
    cases.append((client.post("/score", json={"pictures": []}), 400, "no_images"))
    cases.append(
        (
            client.post("/score", content=b"\x93NUMPY garbage", headers={"content-type": "application/x-npy"}),
            400,
            "bad_npy",
        )
    )
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cases.append(
        (
            client.post("/score", content=pickled.getvalue(), headers={"content-type": "application/x-npy"}),
            400,
            "bad_npy",
        )
    )  # never unpickled
    cases.append((client.post("/score", files=multipart([GOOD]), params={"model": "nope"}), 404, "unknown_model"))
    cases.append((client.post("/score", files=multipart([GOOD]), params={"alpha": "1.5"}), 422, "invalid_alpha"))
    cases.append((client.post("/score", files=multipart([GOOD]), params={"alpha": "abc"}), 422, "invalid_parameter"))
    cases.append((client.post("/score", files=multipart([GOOD]), params={"score": "dose"}), 422, "unknown_score"))
    cases.append((client.post("/score", files=multipart([GOOD]), params={"levels": "maybe"}), 422, "invalid_parameter"))
    cases.append((client.post("/score", files=multipart([GOOD]), params={"timeout_ms": "0"}), 422, "invalid_parameter"))
    cases.append((client.post("/score", files=multipart([GOOD]), params={"timeout_ms": "x"}), 422, "invalid_parameter"))
    cases.append((client.post("/score", files={"other": ("a.png", GOOD, "image/png")}), 400, "no_images"))
    for response, status, code in cases:
        assert response.status_code == status, (code, response.text)
        assert error_of(response)["code"] == code


def test_bad_tensors_name_the_image(client):
    images = random_images(4, seed=6)[:, 0].astype(np.float32)
    nan = images.copy()
    nan[2, 3, 3] = np.nan
    high = images.astype(np.int32)
    high[1, 0, 0] = 256
    negative = images.copy()
    negative[3, 0, 0] = -1
    fractional = images.copy()
    fractional[0, 5, 5] = 0.5
    for array, code, index in (
        (nan, "non_finite", 2),
        (high, "out_of_range", 1),
        (negative, "out_of_range", 3),
        (fractional, "not_integer", 0),
        (np.zeros((2, 32, 32), np.uint8), "wrong_size", 0),
        (np.zeros((2, 28, 28, 3), np.uint8), "wrong_channels", 0),
        (np.zeros((28, 28), np.uint8), "wrong_shape", None),
    ):
        response = npy_post(client, array)
        assert response.status_code == 422, response.text
        assert (error_of(response)["code"], error_of(response)["index"]) == (code, index)
    assert npy_post(client, np.zeros((0, 28, 28), np.uint8)).status_code == 400
    assert npy_post(client, np.zeros((9, 28, 28), np.uint8)).status_code == 413
    # whole-number floats in range are fine
    ok = npy_post(client, images)
    assert ok.status_code == 200


def test_the_server_survives_bad_input_and_counts_it(client, server):
    for case in MULTIPART_CASES.values():
        client.post("/score", files=multipart(case[0]))
    assert client.get("/v2/health/live").status_code == 200
    assert client.post("/score", files=multipart([GOOD])).status_code == 200
    text = client.get("/metrics").text
    assert 'oodgate_rejections_total{model="tiny",reason="bad_request",version="1"}' in text


def metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_and_pass_promtool(client):
    before = client.get("/metrics").text
    images = smooth_images(5, seed=8)
    assert client.post("/score", files=multipart([png(x) for x in images])).status_code == 200
    assert client.post("/score", files=multipart([GOOD]), params={"model": "nope"}).status_code == 404
    after = client.get("/metrics").text
    assert (
        metric(after, "oodgate_images_total", model="tiny") - metric(before, "oodgate_images_total", model="tiny") == 5
    )
    assert (
        metric(after, "oodgate_requests_total", endpoint="/score", code="200")
        - metric(before, "oodgate_requests_total", endpoint="/score", code="200")
        == 1
    )
    assert metric(after, "oodgate_rejections_total", reason="unknown_model") >= 1
    assert metric(after, "oodgate_batch_size_sum") - metric(before, "oodgate_batch_size_sum") == 5
    assert metric(after, "oodgate_model_info", model="tiny", backend="onnx", device="cpu") == 1
    assert metric(after, "oodgate_model_ready", model="tiny") == 1
    assert metric(after, "oodgate_queue_images", model="tiny") == 0
    assert metric(after, "oodgate_inflight_requests") == 0
    for name in (
        "oodgate_request_duration_seconds_bucket",
        "oodgate_queue_wait_seconds_bucket",
        "oodgate_inference_duration_seconds_bucket",
    ):
        assert name in after
    promtool = require_tool("promtool", "prometheus")
    checked = subprocess.run([promtool, "check", "metrics"], input=after.encode(), capture_output=True)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


def test_v2_gzip_body_is_inflated_under_the_limit(client):
    """Compressed bodies (a client option of tritonclient) are bounded after inflating too."""
    bomb = zlib.compress(b"{" + b" " * (200 * 1024) + b"}")
    response = client.post("/v2/models/tiny/infer", content=bomb, headers={"content-encoding": "deflate"})
    assert response.status_code == 413


@pytest.fixture(scope="module")
def resizing_client(tiny_models_root):
    app = create_app(settings(tiny_models_root, resize=True))
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        yield c


def test_resize_setting_converts_and_resizes(resizing_client, tiny_models_root):
    rgb_big = np.zeros((3, 56, 56), dtype=np.uint8)
    rgb_big[:, :28] = 200
    response = resizing_client.post("/score", files=multipart([png(rgb_big)]))
    assert response.status_code == 200, response.text
    expected = np.asarray(
        Image.fromarray(rgb_big.transpose(1, 2, 0)).convert("L").resize((28, 28), Image.Resampling.BILINEAR)
    )
    reference = reference_stats(tiny_models_root, expected[None, None])
    assert response.json()["results"][0]["bpd"] == pytest.approx(float(reference["bpd"][0]), rel=1e-5)


def test_openapi_documents_the_score_query(client):
    """The query is parsed by hand (cheaper per request), but the schema still lists every parameter."""
    operation = client.get("/openapi.json").json()["paths"]["/score"]["post"]
    names = {p["name"]: p["schema"]["type"] for p in operation["parameters"] if p["in"] == "query"}
    assert names == {
        "model": "string",
        "version": "string",
        "alpha": "number",
        "score": "string",
        "levels": "boolean",
        "timeout_ms": "number",
        "fdr": "number",
        "conditional": "boolean",
        "delta": "number",
    }


def test_a_wrong_method_is_a_json_405_that_says_which_are_allowed(client):
    response = client.get("/score")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert error_of(response)["code"] == "method_not_allowed"
