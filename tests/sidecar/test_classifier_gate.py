"""oodgate as the sidecar of the real demo classifier (examples/classifier), both on loopback.

With the committed, calibrated default model the gate must do its job: MNIST digits
are blocked (422, never reaching the classifier) and FashionMNIST items come back with
the classifier's own answer. Before that model exists, a tiny calibrated flow stands in
and every test still checks the plumbing: the gate's decision for each image is exactly
what ``POST /score`` says about it, and what passes is byte-for-byte the classifier's.
"""

from __future__ import annotations

import base64

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.settings import Settings
from tests.sidecar.servers import (
    LiveServer,
    default_model_calibrated,
    default_models_root,
    images,
)

REAL = default_model_calibrated()
needs_real_model = pytest.mark.skipif(not REAL, reason="models/fashion-glow/1 is not committed and calibrated yet")


@pytest.fixture(scope="module")
def gate(classifier, gate_models_root):
    settings = Settings(
        models_root=gate_models_root,
        runtime="onnx",
        log_level="warning",
        decode_threads=1,
        max_batch_size=8,
        upstream=classifier.url,
        sidecar_policy="block",
        sidecar_paths="/predict,/nope",
        sidecar_passthrough_paths="/nope",
    )
    server = LiveServer(create_app(settings)).start()
    yield server
    server.stop()


@pytest.fixture()
def policy(gate):
    """Switch the running gate's policy for one test, then back to block."""
    proxy = gate.app.state.sidecar

    def set_policy(name: str) -> None:
        proxy.policy = name

    yield set_policy
    proxy.policy = "block"


def verdict(gate, png: bytes) -> dict:
    """What POST /score says about one image (the reference the sidecar must agree with)."""
    response = httpx.post(f"{gate.url}/score", files={"files": ("x.png", png, "image/png")}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


def via_gate(gate, png: bytes, path: str = "/predict") -> httpx.Response:
    return httpx.post(f"{gate.url}{path}", files={"file": ("x.png", png, "image/png")}, timeout=60)


def direct(classifier, png: bytes, path: str = "/predict") -> httpx.Response:
    return httpx.post(f"{classifier.url}{path}", files={"file": ("x.png", png, "image/png")}, timeout=60)


def sidecar_counts(gate) -> dict[tuple[str, str], float]:
    text = httpx.get(f"{gate.url}/metrics").text
    counts = {}
    for family in text_string_to_metric_families(text):
        if family.name == "oodgate_sidecar_requests":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[(sample.labels["policy"], sample.labels["outcome"])] = sample.value
    return counts


def test_fashion_items_get_the_classifiers_answer(gate, classifier):
    passed = 0
    for name, png in images("fashion_"):
        expected = verdict(gate, png)
        response = via_gate(gate, png)
        if expected["ood"]:
            assert response.status_code == 422, name
            continue
        passed += 1
        reference = direct(classifier, png)
        assert response.status_code == 200, (name, response.text)
        assert response.content == reference.content  # the classifier's body, byte for byte
        assert response.json()["label"].lower().replace("/", "-").replace(" ", "-") in name
    if REAL:
        assert passed == len(images("fashion_")), "an in-distribution test item was blocked"


def test_mnist_digits_are_blocked_before_the_classifier(gate, classifier):
    blocked = 0
    for name, png in images("mnist_"):
        expected = verdict(gate, png)
        before = classifier.recording.count
        response = via_gate(gate, png)
        if not expected["ood"]:
            assert response.status_code == 200, name
            continue
        blocked += 1
        assert response.status_code == 422, (name, response.text)
        assert classifier.recording.count == before, "a blocked request reached the classifier"
        body = response.json()
        assert body["error"]["code"] == "out_of_distribution"
        assert body["error"]["index"] == 0
        result = body["results"][0]
        assert result["p_value"] == pytest.approx(expected["p_value"])
        assert result["p_value"] <= body["alpha"]
        assert result["ood"] is True and result["score"] == body["score"]
        assert body["model"] in ("fashion-glow", "tiny")
    if REAL:
        assert blocked == len(images("mnist_")), "an MNIST digit reached the classifier"


@needs_real_model
def test_raw_and_base64_bodies_are_gated_too(gate):
    (_, digit), (_, item) = images("mnist_")[0], images("fashion_")[0]
    raw = httpx.post(f"{gate.url}/predict", content=digit, headers={"content-type": "image/png"}, timeout=60)
    assert raw.status_code == 422
    as_json = httpx.post(f"{gate.url}/predict", json={"image": base64.b64encode(digit).decode()}, timeout=60)
    assert as_json.status_code == 422
    ok = httpx.post(f"{gate.url}/predict", json={"image": base64.b64encode(item).decode()}, timeout=60)
    assert ok.status_code == 200 and ok.json()["label"] == "Ankle boot"


def passing_image(gate, policy) -> bytes:
    """An image the gate forwards: an unflagged FashionMNIST item, else (stand-in model) shadow mode."""
    for _, png in images("fashion_"):
        if not verdict(gate, png)["ood"]:
            return png
    assert not REAL, "the default model flags every FashionMNIST sample"
    policy("shadow")
    return images("fashion_")[0][1]


def test_classifier_errors_pass_through_untouched(gate, classifier, policy):
    png = passing_image(gate, policy)
    response = httpx.post(f"{gate.url}/predict?top_k=abc", files={"file": ("x.png", png, "image/png")}, timeout=60)
    reference = httpx.post(f"{classifier.url}/predict?top_k=abc", files={"file": ("x.png", png, "image/png")})
    assert response.status_code == reference.status_code == 422
    assert response.content == reference.content
    assert response.json()["error"]["code"] == "bad_top_k"
    missing = httpx.get(f"{gate.url}/nope")  # no image on a pass-through path: forwarded unscored, 404 comes back
    assert missing.status_code == 404
    assert missing.content == httpx.get(f"{classifier.url}/nope").content


def test_annotate_forwards_with_the_verdict(gate, policy):
    policy("annotate")
    for _, png in images("mnist_")[:2] + images("fashion_")[:2]:
        expected = verdict(gate, png)
        response = via_gate(gate, png)
        assert response.status_code == 200
        assert "label" in response.json()
        assert response.headers["x-ood"] == str(expected["ood"]).lower()
        assert float(response.headers["x-ood-p-value"]) == pytest.approx(expected["p_value"], rel=1e-5)


def test_shadow_forwards_everything_and_only_counts(gate, policy):
    policy("shadow")
    before = sidecar_counts(gate).get(("shadow", "forwarded"), 0)
    for _, png in images("mnist_")[:3]:
        response = via_gate(gate, png)
        assert response.status_code == 200
        assert "label" in response.json()
        assert not any(key.startswith("x-ood") for key in response.headers)
    assert sidecar_counts(gate)[("shadow", "forwarded")] == before + 3


def test_metrics_count_what_the_gate_did(gate):
    counts = sidecar_counts(gate)
    blocked = counts.get(("block", "blocked"), 0)
    mnist_flagged = sum(1 for _, png in images("mnist_") if verdict(gate, png)["ood"])
    fashion_flagged = sum(1 for _, png in images("fashion_") if verdict(gate, png)["ood"])
    # blocked by the two block-mode tests above, plus the two raw/base64 digits with the real model
    assert blocked == mnist_flagged + fashion_flagged + (2 if REAL else 0)


def request_counts(gate) -> dict[tuple[str, str], float]:
    """The sidecar's oodgate_requests_total by (model, code); its in-flight gauge under ("", "")."""
    counts = {}
    for family in text_string_to_metric_families(httpx.get(f"{gate.url}/metrics").text):
        for sample in family.samples:
            if sample.labels.get("endpoint") != "sidecar":
                continue
            if sample.name == "oodgate_requests_total":
                counts[(sample.labels["model"], sample.labels["code"])] = sample.value
            elif sample.name == "oodgate_inflight_requests":
                counts[("", "")] = sample.value
    return counts


def test_the_sidecars_requests_are_counted_like_the_apis(gate):
    """One recorder for every scoring request: the sidecar's carry its endpoint, model and status."""
    model = gate.app.state.sidecar.model.split("/")[0]
    before = request_counts(gate)
    _, png = images("fashion_")[0]
    status = via_gate(gate, png).status_code
    refused = httpx.post(f"{gate.url}/predict", content=b"just words", headers={"content-type": "text/plain"})
    after = request_counts(gate)
    assert after[(model, str(status))] == before.get((model, str(status)), 0) + 1
    assert refused.status_code == 422  # no image: refused before any model was asked
    assert after[("", "422")] == before.get(("", "422"), 0) + 1
    assert after[("", "")] == 0  # nothing left in flight


def test_fdr_policy_blocks_when_any_image_is_a_bh_discovery(gate, classifier):
    """OODGATE_SIDECAR_FDR: the request's flags are its BH discoveries, exactly as POST /score?fdr= decides them."""
    proxy = gate.app.state.sidecar
    proxy.settings.sidecar_fdr = 0.1
    try:
        for chosen in (images("fashion_"), images("fashion_")[:3] + images("mnist_")[:1]):
            files = [("files", (name, png, "image/png")) for name, png in chosen]
            reference = httpx.post(f"{gate.url}/score", params={"fdr": 0.1}, files=files, timeout=60).json()
            discoveries = [r["ood"] for r in reference["results"]]
            before = classifier.recording.count
            response = httpx.post(f"{gate.url}/predict", files=files, timeout=60)
            if not any(discoveries):
                assert response.status_code == 200 and classifier.recording.count == before + 1
                continue
            assert response.status_code == 422 and classifier.recording.count == before
            body = response.json()
            assert [r["ood"] for r in body["results"]] == discoveries
            assert body["decision"] == reference["decision"]
            assert "Benjamini-Hochberg" in body["error"]["message"]
            if REAL:
                assert discoveries == [False, False, False, True]
        if REAL:
            assert any(discoveries), "the mixed request was not blocked"
    finally:
        proxy.settings.sidecar_fdr = None


def test_stopped_classifier_gives_502(gate, classifier, policy):
    """Last in the module: it stops the classifier for good."""
    png = passing_image(gate, policy)
    classifier.stop()
    response = via_gate(gate, png)
    assert response.status_code == 502
    body = response.json()
    assert body["error"]["code"] == "upstream_unreachable"
    assert classifier.url in body["error"]["message"]
    assert sidecar_counts(gate)[(gate.app.state.sidecar.policy, "upstream_unreachable")] == 1


@needs_real_model
def test_digit_traffic_moves_the_drift_gauges(tmp_path):
    """A fresh gate, a window of MNIST digits only: OOD rate 1 and the typicality test rejects."""
    settings = Settings(
        models_root=default_models_root(tmp_path),
        runtime="onnx",
        log_level="warning",
        decode_threads=1,
        max_batch_size=8,
    )
    server = LiveServer(create_app(settings)).start()
    try:
        digits = [png for _, png in images("mnist_")] * 4  # 24 images: past the 20-image minimum
        files = [("files", (f"{i}.png", png, "image/png")) for i, png in enumerate(digits)]
        results = httpx.post(f"{server.url}/score", files=files, timeout=120).json()["results"]
        text = httpx.get(f"{server.url}/metrics").text
    finally:
        server.stop()
    gauges = {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("oodgate_drift_")
    }
    assert gauges["oodgate_drift_window_images"] == len(digits)
    assert gauges["oodgate_drift_ood_rate"] == pytest.approx(sum(r["ood"] for r in results) / len(digits))
    assert gauges["oodgate_drift_ood_rate"] == 1.0
    assert gauges["oodgate_drift_mean_bpd"] == pytest.approx(sum(r["bpd"] for r in results) / len(digits))
    assert gauges["oodgate_drift_typicality_p_value"] < 0.01
    assert gauges["oodgate_drift_alarm"] == 1.0  # the anytime-valid test (service/guarantees.py) too
