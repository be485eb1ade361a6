"""The Open Inference Protocol v2, driven by the real ``tritonclient.http`` client (binary data included)."""

from __future__ import annotations

import numpy as np
import pytest

from service.calibration_file import load_detector
from service.complexity import complexity_bits

from .serving import LiveServer, calibrated_root, create_app, png, random_images, reference_stats, settings

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_models_root):
    return calibrated_root(tmp_path_factory.mktemp("calibrated"), tiny_models_root)


@pytest.fixture(scope="module")
def server(root):
    with LiveServer(create_app(settings(root, max_batch_size=4))) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    c = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=30)
    yield c
    c.close()


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny") and client.is_model_ready("tiny", "1")
    server = client.get_server_metadata()
    assert server["name"] == "oodgate" and "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata("tiny")
    assert meta["name"] == "tiny" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 28, 28]}]
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert set(outputs) == {
        "log_pz",
        "log_det",
        "log_px",
        "bpd",
        "log_pz_levels",
        "log_det_levels",
        "score",
        "p_value",
        "ood",
    }
    assert outputs["log_pz_levels"]["shape"] == [-1, 2] and outputs["ood"]["datatype"] == "BOOL"
    config = client.get_model_config("tiny")
    assert config["dynamic_batching"]["preferred_batch_size"] == [4]
    with pytest.raises(InferenceServerException):
        client.get_model_metadata("nope")
    assert not client.is_model_ready("nope")


def expected_decisions(root, images, alpha=0.05):
    from service.artifact import load_manifest

    bundle = root / "tiny" / "1"
    detector = load_detector(load_manifest(bundle), bundle)
    stats = reference_stats(root, images)
    return stats, detector.decide(stats, complexity_bits(images), None, alpha)


@pytest.mark.parametrize("binary", [True, False])
def test_uint8_infer_matches_the_graph_and_the_detector(client, root, binary):
    images = random_images(6, seed=21)
    images[:3] = np.repeat(np.repeat(random_images(3, seed=2)[:, :, ::4, ::4], 4, axis=2), 4, axis=3)[:, :, :28, :28]
    tensor = httpclient.InferInput("images", [6, 28, 28], "UINT8")
    tensor.set_data_from_numpy(images[:, 0], binary_data=binary)
    outputs = [
        httpclient.InferRequestedOutput(n, binary_data=binary)
        for n in ("bpd", "log_det_levels", "p_value", "ood", "score")
    ]
    result = client.infer("tiny", [tensor], outputs=outputs, request_id="req-1")
    stats, decisions = expected_decisions(root, images)
    np.testing.assert_allclose(result.as_numpy("bpd"), stats["bpd"], rtol=1e-5)
    np.testing.assert_allclose(result.as_numpy("log_det_levels"), stats["log_det_levels"], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(result.as_numpy("p_value"), [d.p_value for d in decisions], rtol=1e-12)
    assert result.as_numpy("ood").tolist() == [d.ood for d in decisions]
    np.testing.assert_allclose(result.as_numpy("score"), [d.scores[d.score] for d in decisions], rtol=1e-6)
    assert all((p <= 0.05) == o for p, o in zip(result.as_numpy("p_value"), result.as_numpy("ood"), strict=True))
    response = result.get_response()
    assert response["id"] == "req-1" and response["model_name"] == "tiny" and response["model_version"] == "1"


def test_bytes_input_of_encoded_images(client, root):
    images = random_images(3, seed=22)
    tensor = httpclient.InferInput("images", [3], "BYTES")
    tensor.set_data_from_numpy(np.array([png(x) for x in images], dtype=np.object_), binary_data=True)
    result = client.infer("tiny", [tensor], model_version="1")
    np.testing.assert_allclose(result.as_numpy("log_px"), reference_stats(root, images)["log_px"], rtol=1e-5)
    assert result.as_numpy("log_pz_levels").shape == (3, 2)


def test_alpha_and_score_parameters(client, root):
    images = random_images(4, seed=23)
    tensor = httpclient.InferInput("images", [4, 28, 28], "UINT8")
    tensor.set_data_from_numpy(images[:, 0])
    result = client.infer("tiny", [tensor], parameters={"alpha": 0.5, "score": "bpd"})
    assert result.get_response()["parameters"] == {"alpha": 0.5, "score": "bpd"}
    p = result.as_numpy("p_value")
    assert ((p <= 0.5) == result.as_numpy("ood")).all()
    np.testing.assert_allclose(result.as_numpy("score"), result.as_numpy("bpd"), rtol=1e-6)


def test_v2_errors(client):
    good = httpclient.InferInput("images", [1, 28, 28], "UINT8")
    good.set_data_from_numpy(random_images(1)[:, 0])
    with pytest.raises(InferenceServerException, match="unknown_model"):
        client.infer("nope", [good])
    wrong = httpclient.InferInput("images", [1, 32, 32], "UINT8")
    wrong.set_data_from_numpy(np.zeros((1, 32, 32), np.uint8))
    with pytest.raises(InferenceServerException, match="wrong_size"):
        client.infer("tiny", [wrong])
    nan = httpclient.InferInput("images", [2, 28, 28], "FP32")
    data = np.zeros((2, 28, 28), np.float32)
    data[1, 0, 0] = np.nan
    nan.set_data_from_numpy(data)
    with pytest.raises(InferenceServerException, match=r"non_finite.*image 1"):
        client.infer("tiny", [nan])
    junk = httpclient.InferInput("images", [1], "BYTES")
    junk.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="not_an_image"):
        client.infer("tiny", [junk])
    with pytest.raises(InferenceServerException, match="unknown_output"):
        client.infer("tiny", [good], outputs=[httpclient.InferRequestedOutput("logits")])
    with pytest.raises(InferenceServerException, match="unknown_score"):
        client.infer("tiny", [good], parameters={"score": "likelihood_ratio"})
    assert client.is_server_live()


def test_json_out_of_range_values(server):
    import httpx

    body = {"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8", "data": [300] * 784}]}
    response = httpx.post(f"{server.url}/v2/models/tiny/infer", json=body)
    assert response.status_code == 422 and "out_of_range" in response.json()["error"]
    body["inputs"][0]["data"] = [0] * 784
    response = httpx.post(f"{server.url}/v2/models/tiny/infer", json=body)
    assert response.status_code == 200
    names = [o["name"] for o in response.json()["outputs"]]
    assert names == ["log_pz", "log_det", "log_px", "bpd", "log_pz_levels", "log_det_levels", "score", "p_value", "ood"]


def test_rest_gives_the_same_flags(server, root):
    import httpx

    images = random_images(3, seed=24)
    files = [("files", (f"{i}.png", png(x), "image/png")) for i, x in enumerate(images)]
    body = httpx.post(f"{server.url}/score", files=files, params={"alpha": 0.2}).json()
    _, decisions = expected_decisions(root, images, alpha=0.2)
    assert body["alpha"] == 0.2 and body["score"] == decisions[0].score
    for result, decision in zip(body["results"], decisions, strict=True):
        assert result["p_value"] == pytest.approx(decision.p_value) and result["ood"] == decision.ood
        assert set(result["scores"]) == {"bpd", "typicality", "complexity", "dose"}
