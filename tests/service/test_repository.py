"""Several models at once: every bundle served, each with its own input shape, and the default-model rule."""

from __future__ import annotations

import io
import json
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image

from service.errors import ServiceError
from service.metrics import Metrics
from service.repository import ModelRepository
from service.settings import BUNDLED_DEFAULT_MODEL
from tests.conftest import GRAY8, RGB8
from tests.sidecar.servers import DATA, DEFAULT_BUNDLE

from .serving import LiveServer, create_app, npy, png, random_images, reference_stats, settings


def renamed_copy(source, root, name: str) -> None:
    """A copy of a bundle under another name (the manifest is not among the hashed files)."""
    target = root / name / "1"
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["name"] = name
    (target / "manifest.json").write_text(json.dumps(manifest))


def repository(root, **overrides) -> ModelRepository:
    repo = ModelRepository(settings(root, **overrides), Metrics(process=False))
    repo.load()
    return repo


def test_default_model_rule(tmp_path, tiny_models_root):
    bundle = tiny_models_root / "tiny" / "1"
    for name in ("a", "b", BUNDLED_DEFAULT_MODEL):
        renamed_copy(bundle, tmp_path, name)
    # the bundled default answers requests that name no model, however many others are served
    assert repository(tmp_path).get(None).name == BUNDLED_DEFAULT_MODEL
    # an explicit OODGATE_DEFAULT_MODEL wins over it; naming one that is not loaded is reported
    assert repository(tmp_path, default_model="b").get(None).name == "b"
    assert "not loaded" in repository(tmp_path, default_model="zzz").errors["zzz"]
    # without the bundled default: the only model, else 400 model_required naming every model
    assert repository(tmp_path, models=["a"]).get(None).name == "a"
    with pytest.raises(ServiceError) as required:
        repository(tmp_path, models=["a", "b"]).get(None)
    assert required.value.status == 400 and required.value.code == "model_required"
    assert "['a', 'b']" in required.value.message and "OODGATE_DEFAULT_MODEL" in required.value.message


@pytest.fixture(scope="module")
def client(mixed_models_root):
    with LiveServer(create_app(settings(mixed_models_root))) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        yield c


def test_every_bundle_is_served_with_its_own_input(client):
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert set(models) == {"gray8", "rgb8"} and all(m["ready"] for m in models.values())
    assert models["gray8"]["input"]["shape"] == list(GRAY8) and models["gray8"]["input"]["color_mode"] == "L"
    assert models["rgb8"]["input"]["shape"] == list(RGB8) and models["rgb8"]["input"]["color_mode"] == "RGB"
    rgb = client.get("/v2/models/rgb8").json()
    assert rgb["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 8, 8, 3]}]
    assert client.get("/v2/models/gray8").json()["inputs"][0]["shape"] == [-1, 8, 8]
    assert client.get("/v2/models/rgb8/config").json()["input"][0]["dims"] == [8, 8, 3]


def test_each_model_scores_its_own_images(client, mixed_models_root):
    rgb, gray = random_images(3, seed=5, shape=RGB8), random_images(2, seed=6, shape=GRAY8)
    response = client.post(
        "/score?model=rgb8", files=[("files", (f"{i}.png", png(x), "image/png")) for i, x in enumerate(rgb)]
    )
    assert response.status_code == 200, response.text
    expected = reference_stats(mixed_models_root, rgb, name="rgb8")["bpd"]
    np.testing.assert_allclose([r["bpd"] for r in response.json()["results"]], expected, rtol=1e-5)

    tensor = np.ascontiguousarray(rgb.transpose(0, 2, 3, 1))  # [N, H, W, C], as clients send
    body = {
        "inputs": [
            {"name": "images", "datatype": "UINT8", "shape": list(tensor.shape), "data": tensor.ravel().tolist()}
        ]
    }
    v2 = client.post("/v2/models/rgb8/infer", json=body)
    assert v2.status_code == 200, v2.text
    bpd = next(o for o in v2.json()["outputs"] if o["name"] == "bpd")
    np.testing.assert_allclose(bpd["data"], expected, rtol=1e-5)

    response = client.post("/score?model=gray8", content=npy(gray[:, 0]), headers={"content-type": "application/x-npy"})
    assert response.status_code == 200, response.text
    expected = reference_stats(mixed_models_root, gray, name="gray8")["bpd"]
    np.testing.assert_allclose([r["bpd"] for r in response.json()["results"]], expected, rtol=1e-5)


def test_a_request_naming_no_model_gets_400_without_a_default(client):
    response = client.post("/score", files=[("files", ("0.png", png(random_images(1, shape=GRAY8)[0]), "image/png"))])
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "model_required" and "gray8" in error["message"] and "rgb8" in error["message"]
    assert client.get("/models").json()["default"] is None


@pytest.mark.slow
def test_fashion_glow_clients_naming_no_model_work_beside_another_model(tmp_path, mixed_models_root):
    """The bundled default keeps answering requests that name no model when a colour model is served too."""
    root = tmp_path / "models"
    (root / BUNDLED_DEFAULT_MODEL).mkdir(parents=True)
    (root / BUNDLED_DEFAULT_MODEL / "1").symlink_to(DEFAULT_BUNDLE)
    (root / "rgb8").symlink_to(mixed_models_root / "rgb8")
    boot = (DATA / "fashion_00_ankle-boot.png").read_bytes()
    with LiveServer(create_app(settings(root))) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        assert client.get("/models").json()["default"] == BUNDLED_DEFAULT_MODEL
        response = client.post("/score", files=[("files", ("boot.png", boot, "image/png"))])
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["model"], body["version"]) == (BUNDLED_DEFAULT_MODEL, "1")
        pixels = np.asarray(Image.open(io.BytesIO(boot)))[None, None]
        expected = reference_stats(root, pixels, name=BUNDLED_DEFAULT_MODEL)["bpd"]
        np.testing.assert_allclose(body["results"][0]["bpd"], expected, rtol=1e-5)
        assert body["results"][0]["ood"] is False  # the committed bundle is calibrated: a real flag
        rgb = client.post(
            "/score?model=rgb8", files=[("files", ("x.png", png(random_images(1, shape=RGB8)[0]), "image/png"))]
        )
        assert rgb.status_code == 200 and rgb.json()["model"] == "rgb8"
