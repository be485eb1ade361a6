"""The drift alarm on a real server: its metrics, the latch, the token-guarded reset, promtool on the exposition."""

from __future__ import annotations

import subprocess

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import require_tool

from .serving import LiveServer, create_app, multipart_files, random_images, settings, smooth_images

pytestmark = pytest.mark.slow

TOKEN = "drift-admin-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def models_root(calibrated_models_root):
    return calibrated_models_root


@pytest.fixture(scope="module")
def client(models_root):
    app = create_app(settings(models_root, admin_token=TOKEN, drift_delta=0.01))
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        yield c


def drift_metrics(client) -> dict[str, float]:
    values = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name.startswith(("oodgate_drift_martingale", "oodgate_drift_alarm")):
                assert sample.labels["model"] == "tiny" and sample.labels["version"] == "1"
                values[sample.name] = sample.value
    return values


def test_alarm_rises_on_drift_latches_and_resets(client):
    assert drift_metrics(client) == {
        "oodgate_drift_martingale": 0.0,
        "oodgate_drift_alarm": 0.0,
        "oodgate_drift_alarm_resets_total": 0.0,
    }
    for seed in range(3):  # traffic like the calibration set: no alarm
        assert client.post("/score", files=multipart_files(smooth_images(40, seed=100 + seed))).status_code == 200
    quiet = drift_metrics(client)
    assert quiet["oodgate_drift_alarm"] == 0.0 and quiet["oodgate_drift_martingale"] < 2.0
    for seed in range(3):  # then noise
        assert client.post("/score", files=multipart_files(random_images(20, seed=200 + seed))).status_code == 200
    drifted = drift_metrics(client)
    assert drifted["oodgate_drift_alarm"] == 1.0 and drifted["oodgate_drift_martingale"] >= 2.0
    for seed in range(3):  # the alarm stays up however the traffic calms down
        assert client.post("/score", files=multipart_files(smooth_images(40, seed=300 + seed))).status_code == 200
    assert drift_metrics(client)["oodgate_drift_alarm"] == 1.0

    response = client.post("/admin/drift/reset", params={"model": "tiny"}, headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"], body["reset"]) == ("tiny", "1", True)
    assert body["before"]["alarm"] is True and body["before"]["images"] == 300
    assert drift_metrics(client) == {
        "oodgate_drift_martingale": 0.0,
        "oodgate_drift_alarm": 0.0,
        "oodgate_drift_alarm_resets_total": 1.0,
    }


def test_exposition_passes_promtool(client):
    client.post("/score", files=multipart_files(smooth_images(5, seed=1)))
    promtool = require_tool("promtool", "prometheus")
    text = client.get("/metrics").text
    assert "oodgate_drift_martingale{" in text and "oodgate_drift_alarm{" in text
    checked = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


@pytest.mark.parametrize(
    "headers", [{}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}, {"authorization": "Basic " + TOKEN}]
)
def test_reset_without_the_token_is_401_and_changes_nothing(client, headers):
    before = drift_metrics(client)["oodgate_drift_alarm_resets_total"]
    response = client.post("/admin/drift/reset", headers=headers)
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"
    assert drift_metrics(client)["oodgate_drift_alarm_resets_total"] == before


def test_reset_of_an_unknown_model_is_404(client):
    response = client.post("/admin/drift/reset", params={"model": "nope"}, headers=AUTH)
    assert response.status_code == 404


def test_admin_is_off_without_a_token(models_root, tiny_models_root):
    with LiveServer(create_app(settings(models_root))) as live:
        response = httpx.post(f"{live.url}/admin/drift/reset", headers=AUTH)
        assert response.status_code == 403 and response.json()["error"]["code"] == "admin_disabled"
    with LiveServer(create_app(settings(tiny_models_root, admin_token=TOKEN))) as live:  # uncalibrated: no test
        response = httpx.post(f"{live.url}/admin/drift/reset", headers=AUTH)
        assert response.status_code == 409 and response.json()["error"]["code"] == "no_drift_test"
        assert "oodgate_drift_alarm{" not in httpx.get(f"{live.url}/metrics").text
