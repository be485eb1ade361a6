"""The data plane through real servers: decision rules (service/guarantees.py: fdr, conditional, /models), and
where a tensor is checked."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from service.guarantees import benjamini_hochberg, conditional_rank

from .serving import LiveServer, create_app, multipart_files, random_images, settings, smooth_images

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models_root(calibrated_models_root):
    return calibrated_models_root


@pytest.fixture(scope="module")
def client(models_root):
    with LiveServer(create_app(settings(models_root))) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def mixed() -> list:
    """Eight smooth blobs (like the calibration set) and four noise images (far from it)."""
    return multipart_files(np.concatenate([smooth_images(8, seed=20), random_images(4, seed=21)]))


def n_calibration(client, score: str) -> int:
    return client.get("/models").json()["models"][0]["calibration"]["n_calibration"][score]


def test_plain_requests_are_unchanged(client, mixed):
    body = client.post("/score", files=mixed).json()
    assert "decision" not in body and body["alpha"] == 0.05
    assert [r["ood"] for r in body["results"]] == [r["p_value"] <= 0.05 for r in body["results"]]


@pytest.mark.parametrize("q", [0.05, 0.2])
def test_fdr_flags_are_the_bh_discoveries_of_the_request(client, mixed, q):
    response = client.post("/score", files=mixed, params={"fdr": q})
    assert response.status_code == 200, response.text
    body = response.json()
    p = np.array([r["p_value"] for r in body["results"]])
    expected = benjamini_hochberg(p, q)
    assert [r["ood"] for r in body["results"]] == expected.tolist()
    assert expected[8:].all()  # the noise images are discoveries: the test is not vacuous
    assert body["decision"] == {"rule": "bh", "level": q, "p_value_threshold": p[expected].max()}
    assert body["alpha"] is None


def test_conditional_flags_use_the_binomial_cutoff(client, mixed):
    score = client.post("/score", files=mixed).json()["score"]
    n = n_calibration(client, score)
    cases = (({"conditional": "true"}, 0.1), ({"delta": 0.3}, 0.3), ({"conditional": "1", "delta": 0.05}, 0.05))
    for params, delta in cases:
        body = client.post("/score", files=mixed, params={**params, "alpha": 0.2}).json()
        cutoff = conditional_rank(n, 0.2, delta) / (n + 1)
        assert body["decision"] == {"rule": "conditional", "level": 0.2, "delta": delta, "p_value_threshold": cutoff}
        assert cutoff < 0.2
        assert [r["ood"] for r in body["results"]] == [r["p_value"] <= cutoff for r in body["results"]]


@pytest.mark.parametrize(
    "params, code",
    [
        ({"fdr": 0.1, "alpha": 0.05}, "conflicting_parameters"),
        ({"fdr": 0.1, "conditional": "true"}, "conflicting_parameters"),
        ({"fdr": 0.1, "delta": 0.1}, "conflicting_parameters"),
        ({"conditional": "false", "delta": 0.1}, "conflicting_parameters"),
        ({"fdr": 0}, "invalid_fdr"),
        ({"fdr": 1.5}, "invalid_fdr"),
        ({"fdr": "nan"}, "invalid_fdr"),
        ({"fdr": "lots"}, "invalid_parameter"),
        ({"delta": 1}, "invalid_delta"),
        ({"conditional": "maybe"}, "invalid_parameter"),
    ],
)
def test_bad_rule_parameters_are_422(client, mixed, params, code):
    response = client.post("/score", files=mixed[:1], params=params)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code


def test_v2_takes_the_same_rules(client, mixed):
    images = np.concatenate([smooth_images(8, seed=20), random_images(4, seed=21)])[:, 0]
    tensor = {"name": "images", "datatype": "UINT8", "shape": list(images.shape), "data": images.ravel().tolist()}
    rest = client.post("/score", files=mixed, params={"fdr": 0.1}).json()
    response = client.post("/v2/models/tiny/infer", json={"inputs": [tensor], "parameters": {"fdr": 0.1}})
    assert response.status_code == 200, response.text
    body = response.json()
    outputs = {o["name"]: o["data"] for o in body["outputs"]}
    assert outputs["ood"] == [r["ood"] for r in rest["results"]]
    assert body["parameters"]["decision"] == rest["decision"]
    for parameters in ({"fdr": 0.1, "alpha": 0.05}, {"conditional": "yes"}, {"fdr": 2}):
        response = client.post("/v2/models/tiny/infer", json={"inputs": [tensor], "parameters": parameters})
        assert response.status_code == 422, (parameters, response.text)


def test_models_shows_where_each_flag_starts(client):
    model = client.get("/models").json()["models"][0]
    decision = model["decision"]
    assert decision["default_rule"] == "alpha" and decision["conditional_delta"] == 0.1
    assert set(decision["thresholds"]) == set(model["scores"])
    for score, rows in decision["thresholds"].items():
        n = model["calibration"]["n_calibration"][score]
        assert [row["alpha"] for row in rows] == [0.01, 0.05, 0.1]
        for row in rows:
            assert row["p_value"] == pytest.approx(np.floor(row["alpha"] * (n + 1)) / (n + 1))
            assert row["conditional_p_value"] == pytest.approx(conditional_rank(n, row["alpha"], 0.1) / (n + 1))
            assert row["conditional_p_value"] <= row["p_value"]
            if row["score"] is not None and row["conditional_score"] is not None:
                assert row["conditional_score"] >= row["score"]


def test_conditional_can_be_a_models_default(models_root, mixed):
    app = create_app(settings(models_root, conditional_models=["tiny/1"], conditional_delta=0.2))
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        body = c.post("/score", files=mixed).json()
        assert body["decision"]["rule"] == "conditional" and body["decision"]["delta"] == 0.2
        assert "decision" not in c.post("/score", files=mixed, params={"conditional": "false"}).json()
        assert c.post("/score", files=mixed, params={"fdr": 0.1}).json()["decision"]["rule"] == "bh"
        assert c.get("/models").json()["models"][0]["decision"]["default_rule"] == "conditional"


def test_a_tensor_is_checked_on_the_loop_only_below_the_pixel_budget(tiny_models_root):
    """settings.inline_prepare_pixels decides where a tensor is checked; the answer is the same either way."""
    from .serving import npy

    images = random_images(2, seed=30)[:, 0]  # 2 x 28 x 28 = 1,568 values
    app = create_app(settings(tiny_models_root))
    plane = app.state.dataplane
    calls = []
    blocking = plane.blocking

    async def counted(fn, *args, **kwargs):
        calls.append(fn.__name__)
        return await blocking(fn, *args, **kwargs)

    plane.blocking = counted
    answers = []
    with LiveServer(app) as live:
        for budget, trips in ((images.size, 0), (images.size - 1, 1)):
            plane.settings.inline_prepare_pixels = budget
            calls.clear()
            response = httpx.post(
                f"{live.url}/score", content=npy(images), headers={"content-type": "application/x-npy"}, timeout=60
            )
            assert response.status_code == 200, response.text
            assert calls.count("tensor_to_images") == trips
            answers.append(response.json()["results"])
    assert answers[0] == answers[1]
